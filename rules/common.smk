# The checked plan, wildcard constraints, and the small getters the rules read it through.
import functools
import inspect
import json
import os
import re
import shlex
import sys

from snakemake.common import overwrite_function_params
from snakemake.exceptions import IncompleteCheckpointException, WorkflowError

from workflow_scripts import calibration, fallback
from workflow_scripts.config import build_plan
from workflow_scripts.disk_plan import prediction_json
from workflow_scripts.errors import UserError
from workflow_scripts.gguf_header import resolve_gguf_path
from workflow_scripts.gguf_split import source_parts
from workflow_scripts.gpu import gpu_layers_option, offload_option
from workflow_scripts.hf_dir import check_hf_dir


# Jobs run `python -m workflow_scripts...` with the interpreter that runs Snakemake (the project's
# environment), even when it was started as .venv/bin/snakemake without activating it.
envvars:
    "PATH",


os.environ["PATH"] = os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
)
STAMP = "results/toolchain/llama.cpp.json"

try:
    PLAN = build_plan(
        config,
        source_name=" + ".join(map(str, workflow.configfiles)) or "config",
        main_process=workflow.is_main_process,
    )
except UserError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None
if workflow.is_main_process:
    for _need in PLAN.disk.values():
        if _need.unknown:
            print(
                f"gguf-forge: disk of {_need.model} not predicted: {_need.unknown[0]}",
                file=sys.stderr,
            )


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


# {build} is one llama-quantize output of a model: a quant type, a variant or a fallback try; the
# speed rule also measures the reference under its type's name (its own constraint).
BUILDS = {b for m in MODELS.values() for b in m.builds}


wildcard_constraints:
    model=_alternatives(MODELS),
    build=_alternatives(BUILDS),
    reftype="F16|BF16",
    menu_type="[A-Z0-9_]+",
    tier=_alternatives(PLAN.tiers),


# The reference every quant is made from, as a pattern (plain strings keep planning cheap).
REFERENCE_GGUF = f"results/{{model}}/reference/{{model}}-{REFERENCE}.gguf"


def source_files(model):
    """The files a local or GGUF source consists of (a Hub source's are not known before it is
    fetched): their change re-runs the source step, their size sizes the jobs."""
    source = MODELS[model].source
    if source["type"] == "gguf":
        return [str(p) for p in source_parts(resolve_gguf_path(source))]
    if source["type"] == "local":
        return [
            str(p)
            for p in check_hf_dir(source["path"], source.get("allow_pickle", False))
        ]
    return []


@per_job
def source_inputs(wildcards):
    return source_files(wildcards.model)


@per_job
def source_json(wildcards):
    return json.dumps(MODELS[wildcards.model].source, sort_keys=True)


@per_job
def parity_reference(wildcards):
    """What the converted tokenizer is compared with: the source GGUF's, or the HF tokenizer."""
    source = MODELS[wildcards.model].source
    if source["type"] == "gguf":
        return shlex.join(["--reference-gguf", str(resolve_gguf_path(source))])
    hf_dir = (
        source["path"]
        if source["type"] == "local"
        else f"results/{wildcards.model}/source/hf"
    )
    return shlex.join(["--hf-dir", hf_dir])


@per_job
def calibration_source(wildcards):
    return MODELS[wildcards.model].calibration["text"]


@per_job
def imatrix_params(wildcards):
    """llama-imatrix's calibration options. Its intermediate saves (every --output-frequency
    chunks) are of no use here (the file is kept only once the tool succeeds) and would each log
    their own partial-data warnings: set above the chunk count, only the final save happens.
    """
    cal = MODELS[wildcards.model].calibration
    return f"--chunks {cal['chunks']} -c {cal['ctx']} --output-frequency {cal['chunks'] + 1}"


def imatrix_path(model):
    return f"results/{model}/imatrix/{model}.imatrix.gguf"


def coverage_path(model):
    """The imatrix's expert coverage record (written by the imatrix rule beside it)."""
    return f"results/{model}/imatrix/{model}.imatrix.coverage.json"


def quant_path(model, build):
    return f"results/{model}/quant/{model}-{build}.gguf"


@per_job
def build_imatrix(wildcards):
    """The model's imatrix for a build made with it, else nothing."""
    return (
        [imatrix_path(wildcards.model)]
        if MODELS[wildcards.model].builds[wildcards.build].imatrix
        else []
    )


def tensor_types_path(model, build):
    """An auto build's chosen tensor types (llama-quantize's --tensor-type-file)."""
    return f"results/{model}/auto/{build}.tensor-types.txt"


def quantize_argv(model, build):
    """llama-quantize's arguments for one build of a model (``{out}`` stands for the output)."""
    return (
        MODELS[model]
        .builds[build]
        .quantize_argv(
            REFERENCE_GGUF.format(model=model),
            imatrix_path(model),
            tensor_types_path(model, build),
        )
    )


@per_job
def build_tensor_types(wildcards):
    """An auto build's tensor type file, else nothing."""
    auto = MODELS[wildcards.model].builds[wildcards.build].auto
    return [tensor_types_path(wildcards.model, wildcards.build)] if auto else []


@per_job
def quantize_build(wildcards):
    """What the quantize job makes: the type, the recipe the census checks (an auto build's is in
    its tensor type file), llama-quantize's arguments."""
    build = MODELS[wildcards.model].builds[wildcards.build]
    return json.dumps(
        {
            "type": build.type,
            "recipe": list(build.recipe),
            **(
                {"tensor_type_file": build_tensor_types(wildcards)[0]}
                if build.auto
                else {}
            ),
            "argv": quantize_argv(wildcards.model, wildcards.build),
        }
    )


def probe_window(model):
    """Context and chunks of the probes on the calibration text (workflow_scripts.calibration)."""
    return calibration.probe_window(MODELS[model].calibration, PLAN.evaluation)


@per_job
def sensitivity_records(wildcards):
    """One sensitivity record per tensor type on the menus of the model's auto builds."""
    m = wildcards.model
    return [f"results/{m}/auto/sensitivity/{t}.json" for t in MODELS[m].auto_menu]


def previous_types_path(model, build):
    """Where the tensor types of the build a remedy follows are: the requested quant's census, or the
    plan of the remedy before it (the same types whether that remedy was built or skipped).
    """
    before = fallback.previous(MODELS[model].remedies, build)
    if before in MODELS[model].quants:
        return f"results/{model}/quant/{model}-{before}.census.json"
    return remedy_plan_path(model, before)


def remedy_plan_path(model, build):
    return f"results/{model}/quant/{model}-{build}.plan.json"


@per_job
def remedy_plan_inputs(wildcards):
    return {"previous": previous_types_path(wildcards.model, wildcards.build)}


@per_job
def auto_recipe_inputs(wildcards):
    """The sensitivity records (the probes were planned from them all), and the census of the stock
    build whose size is the budget, or the types of the build a measured remedy raises from.
    """
    m, auto = wildcards.model, MODELS[wildcards.model].builds[wildcards.build].auto
    inputs = {"records": sensitivity_records(wildcards)}
    if "bytes_of" in auto["objective"]:
        inputs["census"] = (
            f"results/{m}/quant/{m}-{auto['objective']['bytes_of']}.census.json"
        )
    if "raise_from" in auto["objective"]:
        inputs["census"] = previous_types_path(m, wildcards.build)
    return inputs


@per_job
def auto_objective(wildcards, input):
    """auto_recipe's objective option: the stock build's census, a bits-per-weight budget, a KLD
    target, or the types a measured remedy raises from (auto_recipe_inputs' census) with its
    allowance."""
    auto = MODELS[wildcards.model].builds[wildcards.build].auto
    ((key, value),) = auto["objective"].items()
    if key == "bytes_of":
        return f"--bytes-of-census {input.census}"
    if key == "raise_from":
        return f"--raise-from {input.census} --build-before {value} --allowance-pct {auto['allowance_pct']}"
    return f"--{key.replace('_', '-')} {value}"


def verify_options(*keys):
    """A params function: ``--verify`` options for the named inputs (their .sha256 sidecars are
    checked before a job reads them), or nothing when verify_inputs is switched off."""

    @per_job
    def options(wildcards, input):
        if not PLAN.verify_inputs:
            return ""
        paths = [
            path
            for key in keys
            for path in ([input[key]] if isinstance(input[key], str) else input[key])
        ]
        return shlex.join(arg for path in paths for arg in ("--verify", path))

    return options


# With a CUDA toolchain the stages that can run on the GPU get -ngl (tools run by the rule) or
# --gpu-layers (tools run by a script); a CPU toolchain's command lines stay as they are.
OFFLOAD = offload_option(PLAN.toolchain)
GPU_LAYERS = gpu_layers_option(PLAN.toolchain)


@per_job
def model_imatrix(wildcards):
    return [imatrix_path(wildcards.model)] if MODELS[wildcards.model].imatrix else []


@per_job
def build_coverage(wildcards):
    """The imatrix's expert coverage for a build made with it (its gate may judge it), else nothing."""
    return (
        {"coverage": coverage_path(wildcards.model)}
        if MODELS[wildcards.model].builds[wildcards.build].imatrix
        else {}
    )


@per_job
def model_coverage(wildcards):
    """The model's imatrix expert coverage, for its validation report, if it has an imatrix."""
    return (
        {"coverage": coverage_path(wildcards.model)}
        if MODELS[wildcards.model].imatrix
        else {}
    )


def fallback_chain(model):
    """The fallback chain of a model's quants as far as the verdicts made so far tell (see
    workflow_scripts/fallback.py): the builds tried per quant, what ships, and the verdicts still
    to be made. Verdicts and remedy plans are checkpoints: Snakemake re-evaluates the callers once
    they exist, and every chain is followed as far as it is known, so the verdicts of all quants are
    asked at once.
    """
    plan, pending, known, changed = MODELS[model], [], {}, {}

    def verdict_of(build):
        """Each build's verdict looked up once: the chain and what ships ask for the same ones."""
        if build not in known:
            try:
                path = checkpoints.verdict.get(model=model, build=build).output[0]
            except IncompleteCheckpointException as missing:
                pending.append(missing)
                known[build] = None
                return None
            with open(path) as handle:
                known[build] = json.load(handle)["verdict"]
        return known[build]

    def changed_of(build):
        """Whether a remedy changes a tensor's type (its plan), looked up once."""
        if build not in changed:
            try:
                path = checkpoints.remedy_plan.get(model=model, build=build).output[0]
            except IncompleteCheckpointException as missing:
                pending.append(missing)
                changed[build] = None
                return None
            with open(path) as handle:
                changed[build] = not json.load(handle)["unchanged"]
        return changed[build]

    chains = fallback.tries(plan.remedies, verdict_of, changed_of)
    ships = fallback.ships(chains.tried, verdict_of, chains.waiting)
    return chains, ships, pending


def _with_pending(paths, pending):
    """Input files plus the checkpoint targets not made yet (so the job is re-evaluated after them)."""
    return [missing.targetfile for missing in pending] + paths


@per_job
def model_quants(wildcards):
    """Every GGUF built for the model, fallback builds included."""
    m = wildcards.model
    chains, _, pending = fallback_chain(m)
    return _with_pending(
        [quant_path(m, b) for builds in chains.tried.values() for b in builds], pending
    )


@per_job
def model_verdicts(wildcards):
    m = wildcards.model
    chains, _, pending = fallback_chain(m)
    waiting = {str(missing.targetfile) for missing in pending}
    paths = [
        f"results/{m}/validate/{b}.verdict.json"
        for builds in chains.tried.values()
        for b in builds
    ]
    return _with_pending([p for p in paths if p not in waiting], pending)


@per_job
def model_speeds(wildcards):
    """Every tier's figures for each build that passed its quality gate, and for the reference."""
    m = wildcards.model
    _, ships, pending = fallback_chain(m)
    names = [REFERENCE] + [b for b in ships.values() if b]
    return _with_pending(
        [f"results/{m}/speed/{t}/{b}.json" for t in PLAN.tiers for b in names], pending
    )


@per_job
def speed_gguf(wildcards):
    m, name = wildcards.model, wildcards.build
    reference = REFERENCE_GGUF.format(model=m)
    gguf = reference if name == REFERENCE else quant_path(m, name)
    # A quant's speed-up is measured against the reference benchmarked in the same run.
    paired = [] if name == REFERENCE else [reference]
    return {
        "gguf": gguf,
        "sha": f"{gguf}.sha256",
        "paired": paired,
        "paired_sha": [f"{p}.sha256" for p in paired],
    }


@per_job
def speed_tier(wildcards):
    """What of a tier changes a measurement (memory size, budget and priority are judged later)."""
    tier = PLAN.tiers[wildcards.tier]
    return json.dumps(
        {k: tier[k] for k in ("name", "threads", "gpu_layers", "ctx")}, sort_keys=True
    )


@per_job
def attempts_json(wildcards):
    """The builds tried per requested quant, and the remedies skipped as changing nothing."""
    chains, _, pending = fallback_chain(wildcards.model)
    if pending:
        raise pending[0]
    return json.dumps({"tried": chains.tried, "skipped": chains.skipped})


@per_job
def build_json(wildcards):
    """What the verdict records of a build: type, imatrix, recipe, the quant it stands for, its gate."""
    plan = MODELS[wildcards.model]
    build = plan.builds[wildcards.build]
    requested = fallback.requested_as(plan.remedies, wildcards.build)
    return json.dumps(
        {
            "type": build.type,
            "imatrix": build.imatrix,
            "recipe": list(build.recipe),
            "requested_as": requested,
            "remedy": wildcards.build != requested,
            "gate": plan.gates[wildcards.build],
            **({"auto": build.auto} if build.auto else {}),
        },
        sort_keys=True,
    )


def logits_output(path):
    """The reference logits are large: temporary when evaluation.keep_reference_logits is false."""
    return path if PLAN.evaluation["keep_reference_logits"] else temp(path)


SANITY = json.dumps(config["sanity"], sort_keys=True)
# The chat-template check's sanity turn: its token budget, or none (chat_template.sanity_turn: false).
CHAT_SANITY = (
    f"--sanity-max-tokens {config['chat_template']['max_tokens']}"
    if config["chat_template"]["sanity_turn"]
    else ""
)
# What a speed job measures with; how speeds are judged (tie_floor_pct) is the speed report's, so
# changing it re-judges without measuring again.
SPEED_SETTINGS = json.dumps(
    {k: v for k, v in PLAN.benchmark.items() if k != "tie_floor_pct"}, sort_keys=True
)


@per_job
def package_settings(wildcards):
    """What the package records of a model's plan: commands per build, inputs, card fields."""
    m = wildcards.model
    plan, model = MODELS[m], MODEL_CONFIG[m]
    return json.dumps(
        {
            "model": m,
            "base_model": model.get("base_model"),
            "license": model.get("license"),
            "note": model.get("note"),
            "reference_type": REFERENCE,
            "reference_path": REFERENCE_GGUF.format(model=m),
            "imatrix_path": imatrix_path(m) if plan.imatrix else None,
            "calibration": (
                {k: plan.calibration[k] for k in ("chunks", "ctx")}
                if plan.imatrix
                else None
            ),
            "evaluation": {k: PLAN.evaluation[k] for k in ("chunks", "ctx")},
            "commands": {
                b: ["llama-quantize", *quantize_argv(m, b)] for b in plan.builds
            },
            "toolchain": {
                k: PLAN.toolchain[k]
                for k in ("llama_cpp_python_version", "backend", "cmake_args")
            },
            "auto": {
                b: {
                    "recipe": f"results/{m}/auto/{b}.recipe.json",
                    "tensor_types": tensor_types_path(m, b),
                }
                for b, build in plan.builds.items()
                if build.auto
            },
            "split_max_mb": PLAN.package["split_max_mb"],
            "quantized_by": PLAN.package["quantized_by"],
            "repo_id": model.get("publish", {}).get("repo_id"),
        },
        sort_keys=True,
    )


@per_job
def model_auto_recipes(wildcards):
    """The search records and chosen types of the model's auto builds (requested quants, always
    made; the package reads those that ship)."""
    m = wildcards.model
    return [
        path
        for b in MODELS[m].quants
        if MODELS[m].builds[b].auto
        for path in (f"results/{m}/auto/{b}.recipe.json", tensor_types_path(m, b))
    ]


@per_job
def package_texts(wildcards):
    texts = {"evaluation": PLAN.evaluation["text"]}
    if MODELS[wildcards.model].imatrix:
        texts["calibration"] = f"results/{wildcards.model}/imatrix/calibration.txt"
    return texts


def input_option(key):
    """A params function: ``--<key> <path>`` when the job has the named input ``key`` (an input
    given only to some jobs, through unpack()), else nothing."""

    @per_job
    def option(wildcards, input):
        return f"--{key} {shlex.quote(input[key])}" if key in input.keys() else ""

    return option


def disk_prediction(wildcards):
    """The model's disk prediction made at plan time (workflow_scripts.disk_plan), as JSON text."""
    return prediction_json(PLAN.disk[wildcards.model])


def published_records(wildcards=None):
    """Each published model's record (publish.enabled; none when off, so nothing asks for an upload)."""
    return [f"results/package/{m}/published.json" for m in sorted(PLAN.publish)]


def publish_target(wildcards):
    """What `snakemake publish` makes; refused when publishing is off."""
    if not PLAN.publish:
        raise WorkflowError(
            "publish: publish.enabled is false in the config; set it to true (and publish.repo_id on "
            "each model to publish) to upload packages to the Hugging Face Hub"
        )
    return published_records()


@per_job
def publish_options(wildcards):
    """publish's settings for one model as workflow_scripts.publish options (a params re-run trigger)."""
    settings = PLAN.publish[wildcards.model]
    options = [
        "--repo-id",
        settings["repo_id"],
        "--message",
        settings["commit_message"],
    ]
    options.append("--private" if settings["private"] else "--no-private")
    if settings["replace_foreign"]:
        options.append("--replace-foreign")
    return shlex.join(options)


def get_final_output():
    outputs = [
        "results/quality.csv",
        "results/summary/summary.csv",
        *published_records(),
    ]
    for name, plan in MODELS.items():
        outputs.append(f"results/package/{name}/SHA256SUMS")
        outputs.append(f"results/{name}/SHA256SUMS")
        outputs.append(f"results/{name}/validation_report.json")
        outputs.append(f"results/{name}/disk.json")
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
