# Config access, wildcard constraints and input functions shared by every stage.
import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

from workflow_scripts.config import build_plan
from workflow_scripts.errors import UserError

# Jobs run `python -m workflow_scripts...` with the interpreter that runs Snakemake (the project's
# environment), even when it was started as .venv/bin/snakemake without activating it.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
STAMP = "results/toolchain/llama.cpp.json"

try:
    PLAN = build_plan(config, source_name=" + ".join(map(str, workflow.configfiles)) or "config")
except UserError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None

MODELS = PLAN.models
REFERENCE = PLAN.reference_type


def _alternatives(names):
    """A regex matching exactly these names (never matches anything when empty)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def _models_with_source(*types):
    return _alternatives(n for n, m in MODELS.items() if m.source["type"] in types)


wildcard_constraints:
    model=_alternatives(MODELS),
    quant=_alternatives({q for m in MODELS.values() for q in m.quants}),
    reftype="F16|BF16",


def reference_gguf(wildcards):
    return f"results/{wildcards.model}/reference/{wildcards.model}-{REFERENCE}.gguf"


def reference_inputs(wildcards):
    gguf = reference_gguf(wildcards)
    return {"gguf": gguf, "sha": f"{gguf}.sha256"}


def source_inputs(wildcards):
    """Files whose change must re-run the source step: the GGUF, or the local directory's files."""
    from workflow_scripts.sources import resolve_gguf_path, check_hf_dir

    source = MODELS[wildcards.model].source
    if source["type"] == "gguf":
        return [str(resolve_gguf_path(source))]
    return [str(p) for p in check_hf_dir(source["path"], source.get("allow_pickle", False))]


def source_json(wildcards):
    return json.dumps(MODELS[wildcards.model].source, sort_keys=True)


def parity_reference(wildcards):
    """What the converted tokenizer is compared with: the source GGUF's, or the HF tokenizer."""
    from workflow_scripts.sources import resolve_gguf_path

    source = MODELS[wildcards.model].source
    if source["type"] == "gguf":
        return shlex.join(["--reference-gguf", str(resolve_gguf_path(source))])
    hf_dir = source["path"] if source["type"] == "local" else f"results/{wildcards.model}/source/hf"
    return shlex.join(["--hf-dir", hf_dir])


def calibration_source(wildcards):
    return MODELS[wildcards.model].calibration["text"]


def imatrix_params(wildcards):
    cal = MODELS[wildcards.model].calibration
    return f"--chunks {cal['chunks']} -c {cal['ctx']}"


def imatrix_path(model):
    return f"results/{model}/imatrix/{model}.imatrix.gguf"


def quantize_inputs(wildcards):
    inputs = {**reference_inputs(wildcards), "stamp": STAMP,
              "parity": f"results/{wildcards.model}/checks/tokenizer_parity.json"}
    if MODELS[wildcards.model].imatrix:
        inputs["imatrix"] = imatrix_path(wildcards.model)
    return inputs


def quantize_args(wildcards):
    """llama-quantize options: the quant's overrides, and the imatrix by its stable relative path."""
    plan = MODELS[wildcards.model]
    args = list(plan.quantize_args[wildcards.quant])
    if plan.imatrix:
        args += ["--imatrix", imatrix_path(wildcards.model)]
    return shlex.join(args)


def census_args(wildcards):
    """The recipe the census compares the output with (same overrides as the quantize call)."""
    return shlex.join(MODELS[wildcards.model].recipe_args[wildcards.quant])


def verify_flags(wildcards, input):
    """``--verify`` options for the GGUFs a step reads (reference, imatrix) unless switched off."""
    if not PLAN.verify_inputs:
        return ""
    paths = [input.gguf] + ([input.imatrix] if "imatrix" in input.keys() else [])
    return " ".join(f"--verify {p}" for p in paths)


def model_imatrix(wildcards):
    return [imatrix_path(wildcards.model)] if MODELS[wildcards.model].imatrix else []


def model_quants(wildcards):
    m = wildcards.model
    return [f"results/{m}/quant/{m}-{q}.gguf" for q in MODELS[m].quants]


def logits_output(path):
    """The reference logits are large: temporary when evaluation.keep_reference_logits is false."""
    return path if PLAN.evaluation["keep_reference_logits"] else temp(path)


def evaluation_params():
    ev = PLAN.evaluation
    return f"-c {ev['ctx']} --chunks {ev['chunks']}"


def model_metrics(wildcards):
    return [f"results/{wildcards.model}/validate/{q}.json" for q in MODELS[wildcards.model].quants]


def model_sanity(wildcards):
    return [f"results/{wildcards.model}/validate/{q}.sanity.json" for q in MODELS[wildcards.model].quants]


def sanity_settings():
    return json.dumps(config["sanity"], sort_keys=True)


def model_gates(wildcards):
    return json.dumps(MODELS[wildcards.model].gates, sort_keys=True)


def get_final_output():
    outputs = ["results/quality.csv"]
    for name, plan in MODELS.items():
        outputs.append(f"results/{name}/SHA256SUMS")
        outputs.append(f"results/{name}/validation_report.json")
        outputs += [f"results/{name}/quant/{name}-{q}.census.json" for q in plan.quants]
    return outputs


def toolchain_args():
    """Command-line of workflow_scripts.toolchain for the configured build (a params re-run trigger)."""
    tc = PLAN.toolchain
    if tc.get("build_dir"):
        return shlex.join(["--build-dir", tc["build_dir"], "--backend", tc["backend"]])
    args = ["--version", tc["llama_cpp_python_version"], "--backend", tc["backend"]]
    args += [f"--cmake-arg={a}" for a in tc["cmake_args"]]
    if tc["cuda_architectures"]:
        args += ["--cuda-architectures", tc["cuda_architectures"]]
    return shlex.join(args)
