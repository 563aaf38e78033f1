# Config access, wildcard constraints and input functions shared by every stage.
import functools
import inspect
import json
import os
import re
import shlex
import sys
import types

from snakemake.common import overwrite_function_params
from snakemake.exceptions import IncompleteCheckpointException, WorkflowError

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


def per_job(func):
    """Mark an input, params or resources function: its parameters are recorded once, where
    Snakemake would otherwise inspect its signature again for every job it plans."""
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


MODELS = PLAN.models
MODEL_CONFIG = {model["name"]: model for model in config["models"]}
REFERENCE = PLAN.reference_type


def _alternatives(names):
    """A regex matching exactly these names (never matches anything when empty)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def _models_with_source(*types):
    return _alternatives(n for n, m in MODELS.items() if m.source["type"] in types)


wildcard_constraints:
    model=_alternatives(MODELS),
    quant=_alternatives({q for m in MODELS.values() for q in m.builds}),
    reftype="F16|BF16",
    tier=_alternatives(PLAN.tiers),
    bench=_alternatives({q for m in MODELS.values() for q in m.builds} | {REFERENCE}),


# The reference every quant is made from, as a pattern (plain strings keep planning cheap).
REFERENCE_GGUF = f"results/{{model}}/reference/{{model}}-{REFERENCE}.gguf"


def reference_gguf(wildcards):
    return REFERENCE_GGUF.format(model=wildcards.model)


def reference_inputs(wildcards):
    gguf = reference_gguf(wildcards)
    return {"gguf": gguf, "sha": f"{gguf}.sha256"}


@per_job
def source_inputs(wildcards):
    """Files whose change must re-run the source step: the GGUF, or the local directory's files."""
    from workflow_scripts.sources import resolve_gguf_path, check_hf_dir

    source = MODELS[wildcards.model].source
    if source["type"] == "gguf":
        return [str(resolve_gguf_path(source))]
    return [str(p) for p in check_hf_dir(source["path"], source.get("allow_pickle", False))]


@per_job
def source_json(wildcards):
    return json.dumps(MODELS[wildcards.model].source, sort_keys=True)


@per_job
def parity_reference(wildcards):
    """What the converted tokenizer is compared with: the source GGUF's, or the HF tokenizer."""
    from workflow_scripts.sources import resolve_gguf_path

    source = MODELS[wildcards.model].source
    if source["type"] == "gguf":
        return shlex.join(["--reference-gguf", str(resolve_gguf_path(source))])
    hf_dir = source["path"] if source["type"] == "local" else f"results/{wildcards.model}/source/hf"
    return shlex.join(["--hf-dir", hf_dir])


@per_job
def calibration_source(wildcards):
    return MODELS[wildcards.model].calibration["text"]


@per_job
def imatrix_params(wildcards):
    cal = MODELS[wildcards.model].calibration
    return f"--chunks {cal['chunks']} -c {cal['ctx']}"


def imatrix_path(model):
    return f"results/{model}/imatrix/{model}.imatrix.gguf"


@per_job
def build_imatrix(wildcards):
    """The model's imatrix for a build made with it, else nothing."""
    return [imatrix_path(wildcards.model)] if MODELS[wildcards.model].builds[wildcards.quant].imatrix else []


def quantize_argv(model, build_name):
    """llama-quantize's arguments for a build (``{out}`` stands for the output): the build's
    overrides, the imatrix by its stable relative path, the reference, the type. The quantize job
    runs them and the package records them."""
    build = MODELS[model].builds[build_name]
    args = list(build.args)
    if build.imatrix:
        args += ["--imatrix", imatrix_path(model)]
    return args + [f"results/{model}/reference/{model}-{REFERENCE}.gguf", "{out}", build.type]


@per_job
def quantize_params(wildcards, input):
    """Everything a quantize job's command needs, from one call (planning costs per call): the
    type, llama-quantize's arguments, the recipe the census checks, the --verify options."""
    build = MODELS[wildcards.model].builds[wildcards.quant]
    return types.SimpleNamespace(
        type=build.type,
        args=shlex.join(quantize_argv(wildcards.model, wildcards.quant)),
        recipe=shlex.join(build.recipe),
        verify=" ".join(f"--verify {path}" for path in [input.gguf, *input.imatrix]) if PLAN.verify_inputs else "",
    )


def verify_options(*keys):
    """``--verify`` options for the named inputs, written into a rule's shell command at parse
    time (no per-job function: planning a large sweep pays per call), or nothing when
    verify_inputs is switched off."""
    return " ".join(f"--verify {{input.{key}}}" for key in keys) if PLAN.verify_inputs else ""


@per_job
def model_imatrix(wildcards):
    return [imatrix_path(wildcards.model)] if MODELS[wildcards.model].imatrix else []


def attempts(model):
    """Builds tried for each requested quant of ``model``, in order: the quant, then its remedies
    while the build before failed; and the verdicts still to be made before more is known.

    Verdicts are a checkpoint: Snakemake re-evaluates the callers once they exist. Every chain is
    followed as far as it is known, so the verdicts of all quants are requested at once.
    """
    tried, pending = {}, []
    for quant in MODELS[model].quants:
        tried[quant] = [quant]
        for remedy in MODELS[model].remedies[quant]:
            try:
                path = checkpoints.verdict.get(model=model, quant=tried[quant][-1]).output[0]
            except IncompleteCheckpointException as missing:
                pending.append(missing)
                break
            with open(path) as handle:
                if json.load(handle)["verdict"] == "passed":
                    break
            tried[quant].append(remedy)
    return tried, pending


def _with_pending(paths, pending):
    """Input files plus the checkpoint targets not made yet (so the job is re-evaluated after them)."""
    return [missing.targetfile for missing in pending] + paths


@per_job
def model_quants(wildcards):
    """Every GGUF built for the model, fallback builds included."""
    m = wildcards.model
    tried, pending = attempts(m)
    return _with_pending([f"results/{m}/quant/{m}-{b}.gguf" for builds in tried.values() for b in builds], pending)


@per_job
def model_verdicts(wildcards):
    m = wildcards.model
    tried, pending = attempts(m)
    waiting = {str(missing.targetfile) for missing in pending}
    paths = [f"results/{m}/validate/{b}.verdict.json" for builds in tried.values() for b in builds]
    return _with_pending([p for p in paths if p not in waiting], pending)


def quality_ships(model):
    """Per requested quant, the build that passed its quality gate (or None), and the verdicts
    still to be made."""
    tried, pending = attempts(model)
    ships = {}
    for quant, builds in tried.items():
        try:
            path = checkpoints.verdict.get(model=model, quant=builds[-1]).output[0]
        except IncompleteCheckpointException as missing:
            pending.append(missing)
            continue
        with open(path) as handle:
            ships[quant] = builds[-1] if json.load(handle)["verdict"] == "passed" else None
    return ships, pending


@per_job
def model_benchmarks(wildcards):
    """Every tier's figures for each build that passed its quality gate, and for the reference."""
    m = wildcards.model
    ships, pending = quality_ships(m)
    names = [REFERENCE] + [b for b in ships.values() if b]
    return _with_pending([f"results/{m}/benchmark/{t}/{b}.json" for t in PLAN.tiers for b in names], pending)


@per_job
def bench_gguf(wildcards):
    m, name = wildcards.model, wildcards.bench
    if name == REFERENCE:
        return reference_inputs(wildcards)
    gguf = f"results/{m}/quant/{m}-{name}.gguf"
    return {"gguf": gguf, "sha": f"{gguf}.sha256"}


@per_job
def bench_tier(wildcards):
    """What of a tier changes a measurement (memory size, budget and priority are judged later)."""
    tier = PLAN.tiers[wildcards.tier]
    return json.dumps({k: tier[k] for k in ("name", "threads", "gpu_layers", "ctx")}, sort_keys=True)


@per_job
def attempts_json(wildcards):
    tried, pending = attempts(wildcards.model)
    if pending:
        raise pending[0]
    return json.dumps(tried)


@per_job
def build_json(wildcards):
    """What the verdict records of a build: type, imatrix, recipe, the quant it stands for, its gate."""
    plan = MODELS[wildcards.model]
    build = plan.builds[wildcards.quant]
    requested = next(q for q in plan.quants if wildcards.quant == q or wildcards.quant in plan.remedies[q])
    return json.dumps({"type": build.type, "imatrix": build.imatrix, "recipe": list(build.recipe),
                       "requested_as": requested, "remedy": wildcards.quant != requested,
                       "gate": plan.gates[wildcards.quant]}, sort_keys=True)


def logits_output(path):
    """The reference logits are large: temporary when evaluation.keep_reference_logits is false."""
    return path if PLAN.evaluation["keep_reference_logits"] else temp(path)


def evaluation_params():
    ev = PLAN.evaluation
    return f"-c {ev['ctx']} --chunks {ev['chunks']}"


def sanity_settings():
    return json.dumps(config["sanity"], sort_keys=True)


@per_job
def package_settings(wildcards):
    """What the package records of a model's plan: commands per build, inputs, card fields."""
    m = wildcards.model
    plan, model = MODELS[m], MODEL_CONFIG[m]
    return json.dumps({
        "model": m, "base_model": model.get("base_model"), "license": model.get("license"), "note": model.get("note"),
        "reference_type": REFERENCE, "reference_path": reference_gguf(wildcards),
        "imatrix_path": imatrix_path(m) if plan.imatrix else None,
        "calibration": {k: plan.calibration[k] for k in ("chunks", "ctx")} if plan.imatrix else None,
        "evaluation": {k: PLAN.evaluation[k] for k in ("chunks", "ctx")},
        "commands": {b: ["llama-quantize", *quantize_argv(m, b)] for b in plan.builds},
        "toolchain": {k: PLAN.toolchain[k] for k in ("llama_cpp_python_version", "backend", "cmake_args")},
        "split_max_mb": PLAN.package["split_max_mb"],
    }, sort_keys=True)


@per_job
def package_texts(wildcards):
    texts = {"evaluation": PLAN.evaluation["text"]}
    if MODELS[wildcards.model].imatrix:
        texts["calibration"] = f"results/{wildcards.model}/imatrix/calibration.txt"
    return texts


def get_final_output():
    outputs = ["results/quality.csv", "results/summary/summary.csv"]
    for name, plan in MODELS.items():
        outputs.append(f"results/package/{name}/SHA256SUMS")
        outputs.append(f"results/{name}/SHA256SUMS")
        outputs.append(f"results/{name}/validation_report.json")
        outputs += [f"results/{name}/quant/{name}-{q}.census.json" for q in plan.quants]
    return outputs


@functools.cache
def reference_mb(model):
    """Size of the model's reference in MB, estimated from its source before anything is made
    (one stat per model): a quantized GGUF source grows about 4x when dequantized to F16, an
    HF checkpoint keeps its size; a Hub source is not known before it is fetched (0)."""
    from workflow_scripts.sources import resolve_gguf_path, check_hf_dir

    source = MODELS[model].source
    if source["type"] == "gguf":
        return 4 * os.path.getsize(resolve_gguf_path(source)) / 1e6
    if source["type"] == "local":
        return sum(os.path.getsize(p) for p in check_hf_dir(source["path"], source.get("allow_pickle", False))) / 1e6
    return 0


def mem_mb(factor, floor=1000):
    """A resources function: memory for a job as a multiple of the model's reference size
    (what SLURM jobs are sized from), at least ``floor`` MB."""

    @per_job
    def from_model(wildcards):
        return max(floor, int(factor * reference_mb(wildcards.model)))

    return from_model


def tier_resource(key, default=""):
    """A resources function: a benchmark job asks the cluster for its tier's hardware."""

    @per_job
    def resource(wildcards):
        tier = PLAN.tiers[wildcards.tier]
        if key == "mem_mb":
            return int(tier["ram_gb"] * 1000)
        if key == "gpu":  # the SLURM plugin's own GPU request (--gpus); 0 asks for none
            return tier["resources"].get("gpus", 1 if tier["gpu_layers"] else 0)
        return tier["resources"].get(key, default)

    return resource


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
