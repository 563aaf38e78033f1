"""Check the configuration and turn it into a plan: what to build for each model.

The JSON Schema (config/schema/config.schema.yaml) checks shapes and fills defaults; this module
adds what a schema cannot say (files exist and their headers are sound, texts are long enough,
names are unique, quant types that need an importance matrix get one) and words every error for the
user: file, field, what was expected. It runs once when the workflow is parsed, so a bad config fails
before any job starts; it reads each file once and only headers, so a large sweep still plans fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from workflow_scripts.errors import UserError
from workflow_scripts.quant_types import (
    IMATRIX_REQUIRED_QUANTS, IMATRIX_REQUIRED_TENSOR_TYPES, bits_per_weight, expected_base_type,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PROJECT_DIR / "config" / "schema" / "config.schema.yaml"

CALIBRATION_KEYS = ("text", "chunks", "ctx")
OPTION_KEYS = ("tensor_types", "output_tensor_type", "token_embedding_type", "extra_args")


@dataclass(frozen=True)
class Build:
    """One llama-quantize output: its file type, settings, and whether it uses the imatrix."""

    type: str
    imatrix: bool
    options: dict[str, Any]

    @property
    def args(self) -> tuple[str, ...]:
        return quantize_args(self.options)

    @property
    def recipe(self) -> tuple[str, ...]:
        return quantize_args(self.options, include_extra=False)

    def quantize_argv(self, reference: str, imatrix: str) -> list[str]:
        """llama-quantize's arguments (``{out}`` stands for the output): the overrides, the imatrix
        by its stable relative path when the build uses it, the reference, the type. The quantize
        job runs them and the package records them."""
        return [*self.args, *(["--imatrix", imatrix] if self.imatrix else []), reference, "{out}", self.type]


@dataclass(frozen=True)
class ModelPlan:
    """Everything the rules need to know about one model, computed once.

    ``builds`` holds every build that may be made: the requested ``quants`` and, for each, the
    fallback builds in ``remedies`` (made only when the one before failed its gates).
    """

    name: str
    source: dict[str, Any]
    quants: tuple[str, ...]
    calibration: dict[str, Any]
    imatrix: bool
    builds: dict[str, Build] = field(default_factory=dict)
    remedies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gates: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The checked configuration: global settings plus one ModelPlan per model name."""

    toolchain: dict[str, Any]
    evaluation: dict[str, Any]
    reference_type: str
    verify_inputs: bool
    models: dict[str, ModelPlan]
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)
    package: dict[str, Any] = field(default_factory=dict)


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def field_path(parts) -> str:
    """``['models', 0, 'source', 'type']`` → ``models[0].source.type``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def schema_error_message(config: dict, schema: dict, source_name: str) -> str | None:
    """The most relevant schema violation, worded as 'file: field: problem', or None."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    # Descend into the most specific sub-error of if/then, oneOf, allOf combinators.
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    where = field_path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return f"{source_name}: {where}: unknown key(s) {', '.join(map(repr, extra))}; expected one of {', '.join(known)}"
    if error.validator == "uniqueItems":
        return f"{source_name}: {where}: {error.instance!r} lists an entry more than once; expected each entry once"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{source_name}: {where}: {error.instance!r} is not allowed; expected one of {allowed}"
    described = error.schema.get("description")
    if error.validator == "required":  # describe the missing key, not the mapping that lacks it
        missing = next(key for key in error.validator_value if key not in error.instance)
        described = error.schema.get("properties", {}).get(missing, {}).get("description")
    if error.validator == "not":
        return f"{source_name}: {where}: {described or 'these keys cannot be combined'} (got keys {', '.join(sorted(error.instance))})"
    hint = f" ({described})" if described and error.validator in ("pattern", "type", "required") else ""
    return f"{source_name}: {where}: {error.message}{hint}"


def fill_defaults(config: dict, schema_path: Path = SCHEMA_PATH) -> None:
    """Fill schema defaults in place (Snakemake's own validate with set_default=True)."""
    from snakemake.utils import validate

    validate(config, str(schema_path), set_default=True)


def _check_file(path_text: str, where: str, source_name: str, base: Path, kind: str = "file") -> str:
    """The path to use for a configured file: relative to the working directory, or else to the
    project directory (so shipped files such as config/data/calibration.txt work from anywhere)."""
    path = Path(path_text)
    exists = Path.is_dir if kind == "directory" else Path.is_file
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [base / path, PROJECT_DIR / path]
    for candidate in candidates:
        if exists(candidate):
            return path_text if candidate == base / path else str(candidate)
    raise UserError(f"{source_name}: {where}: {kind} {path_text!r} does not exist "
                    f"(looked in {' and '.join(map(str, candidates))})")


def gate_for(quant: str, gates: dict, schema: dict) -> dict[str, float]:
    """Thresholds for one quant type: gates.default, then the built-in table, then the user's entry."""
    builtin = schema["properties"]["gates"]["properties"]["per_quant"]["default"]
    return {**gates["default"], **builtin.get(quant, {}), **gates.get("per_quant", {}).get(quant, {})}


def _read_text(path: str, field: str, what: str, source_name: str, base: Path, cache: dict) -> str:
    """A configured text file's contents, read once per path however many models name it."""
    from workflow_scripts.calibration import read_text

    if ("text", path) not in cache:
        try:
            cache["text", path] = read_text(base / path, what)
        except UserError as err:
            raise UserError(f"{source_name}: {field}: {err}") from None
    return cache["text", path]


def check_text_length(text: str, settings: dict, section: str, source_name: str) -> None:
    """Refuse a text too short for the ``chunks`` × ``ctx`` tokens asked of it (llama-imatrix and
    llama-perplexity also need at least two contexts). Tokens are not counted here (that needs the
    model's tokenizer): every token stands for at least one byte, so a text with fewer UTF-8 bytes
    than the tokens needed is short whatever the tokenizer; a longer one may still fall short."""
    chunks, ctx = settings["chunks"], settings["ctx"]
    needed = max(chunks, 2) * ctx
    size = len(text.encode("utf-8"))
    if size < needed:
        raise UserError(f"{source_name}: {section}: the text {settings['text']!r} has {size} bytes, so at most {size} "
                        f"tokens, but chunks × ctx = {chunks} × {ctx} needs {needed} (and at least 2 × ctx); expected "
                        f"a text of at least {needed} bytes, or fewer chunks or a smaller ctx")


def check_overlap(calibration: str, evaluation: str, limit: float, where: str, source_name: str, cache: dict) -> None:
    """Refuse an evaluation text that repeats the calibration text (it would flatter every quant);
    once per pair of files."""
    from workflow_scripts.calibration import overlap_fraction

    if ("overlap", calibration, evaluation) in cache:
        return
    share = overlap_fraction(cache["text", calibration], cache["text", evaluation])
    if share > limit:
        raise UserError(f"{source_name}: {where}: {share:.1%} of the evaluation text {evaluation!r} also occurs in "
                        f"the calibration text {calibration!r}; expected at most {limit:.1%} "
                        "(evaluation.max_overlap): use held-out text")
    cache["overlap", calibration, evaluation] = True


def _check_source(model_source: dict, field: str, source_name: str, base: Path, cache: dict) -> dict:
    """The source with its path resolved, after a header-only check of its files (once per path):
    a damaged or cut-short download is refused before any job starts."""
    from workflow_scripts.gguf_header import read_gguf_header, resolve_gguf_path
    from workflow_scripts.hf_dir import check_hf_source

    source = dict(model_source)
    if source["type"] == "hf":
        return source
    if "path" in source:
        kind = "directory" if source["type"] == "local" else "file"
        source["path"] = _check_file(source["path"], f"{field}.path", source_name, base, kind)
        field += ".path"
    try:
        path = base / resolve_gguf_path(source) if source["type"] == "gguf" else base / source["path"]
        if ("source", path) not in cache:
            if source["type"] == "gguf":
                read_gguf_header(path)
            else:
                check_hf_source(path, source.get("allow_pickle", False))
            cache["source", path] = True
    except UserError as err:
        raise UserError(f"{source_name}: {field}: {err}") from None
    return source


def _calibration(global_cal: dict, model_cal: dict | None) -> dict:
    return {key: (model_cal or {}).get(key, global_cal[key]) for key in CALIBRATION_KEYS}


def quantize_args(options: dict[str, Any], include_extra: bool = True) -> tuple[str, ...]:
    """llama-quantize options for one quant type's settings, in a stable order.

    Without ``include_extra`` only the recipe (type overrides) is returned: what the census checks.
    """
    args: list[str] = []
    for pattern, ttype in sorted(options.get("tensor_types", {}).items()):
        args += ["--tensor-type", f"{pattern}={ttype}"]
    if options.get("output_tensor_type"):
        args += ["--output-tensor-type", options["output_tensor_type"]]
    if options.get("token_embedding_type"):
        args += ["--token-embedding-type", options["token_embedding_type"]]
    return tuple(args + (list(options.get("extra_args", [])) if include_extra else []))


def _check_model(index: int, model: dict, config: dict, source_name: str, base: Path, schema: dict,
                 cache: dict) -> ModelPlan:
    where = f"models[{index}]"
    name = model["name"]
    if ".." in name:
        raise UserError(f"{source_name}: {where}.name: {name!r} may not contain '..'; expected a plain name")
    source = _check_source(model["source"], f"{where}.source", source_name, base, cache)
    calibration = _calibration(config["calibration"], model.get("calibration"))
    section = f"{where}.calibration" if model.get("calibration") else "calibration"
    cal_field = f"{where}.calibration.text" if "text" in model.get("calibration", {}) else "calibration.text"
    calibration["text"] = _check_file(calibration["text"], cal_field, source_name, base)
    text = _read_text(calibration["text"], cal_field, "calibration text", source_name, base, cache)
    check_text_length(text, calibration, section, source_name)
    check_overlap(calibration["text"], config["evaluation"]["text"], config["evaluation"]["max_overlap"], cal_field,
                  source_name, cache)
    imatrix = model.get("imatrix", config["imatrix"])
    quants = tuple(model.get("quants", config["quants"]))
    quants_field = f"{where}.quants" if "quants" in model else "quants"
    builds, remedies = {}, {}
    for position, quant in enumerate(quants):
        build = _build(quant, f"{quants_field}[{position}]", config, imatrix, schema, source_name)
        wanted = {build.type} | set(build.options.get("tensor_types", {}).values())
        needs = sorted((wanted & IMATRIX_REQUIRED_QUANTS) | (wanted & IMATRIX_REQUIRED_TENSOR_TYPES))
        if needs and not build.imatrix:
            switch = f"{where}.imatrix" if "imatrix" in model else "imatrix"
            if quant in config["variants"]:
                switch = f"variants.{quant}.imatrix"
            raise UserError(
                f"{source_name}: {where}: quant {quant} needs an importance matrix ({', '.join(needs)} "
                f"cannot be made without one) but {switch} is false; set it to true or drop {quant}"
            )
        builds[quant] = build
        remedies[quant] = _remedy_builds(quant, build, config["fallback"]["remedies"], builds)
    gates = {name: gate_for(build.type, config["gates"], schema) for name, build in builds.items()}
    return ModelPlan(name=name, source=source, quants=quants, calibration=calibration,
                     imatrix=any(b.imatrix for b in builds.values()), builds=builds, remedies=remedies, gates=gates)


def _build(quant: str, where: str, config: dict, imatrix: bool, schema: dict, source_name: str) -> Build:
    """A quants entry as a Build: a quant type with its quant_options, or a named variant."""
    types = schema["$defs"]["quant_type"]["enum"]
    variant = config["variants"].get(quant)
    if variant is None and quant not in types:
        variants = f"; or one of the names under variants: {', '.join(config['variants'])}" if config["variants"] else ""
        raise UserError(f"{source_name}: {where}: {quant!r} is not allowed; expected one of {', '.join(types)}{variants}")
    if variant is None:
        return Build(quant, imatrix, _merge_options({}, config["quant_options"].get(quant, {})))
    if quant in types:
        raise UserError(f"{source_name}: variants.{quant}: a variant may not be named like the quant type {quant}; "
                        "expected another name (e.g. {quant}-static)")
    options = _merge_options(config["quant_options"].get(variant["type"], {}), variant)
    return Build(variant["type"], variant.get("imatrix", imatrix), options)


def _merge_options(base: dict, over: dict) -> dict:
    """llama-quantize settings ``over`` laid over ``base`` (tensor type patterns merged)."""
    merged = {key: value for key, value in base.items() if key in OPTION_KEYS}
    merged.update({key: value for key, value in over.items() if key in OPTION_KEYS})
    merged["tensor_types"] = {**base.get("tensor_types", {}), **over.get("tensor_types", {})}
    return merged


def _raises_only(remedy: dict, base_type: str) -> dict:
    """The remedy's type settings that raise a tensor above the file type's own type (a remedy
    never lowers one: ffn_down=Q6_K means nothing for a Q8_0)."""
    floor = bits_per_weight(expected_base_type(base_type))
    kept = {key: value for key, value in remedy.items()
            if key in ("output_tensor_type", "token_embedding_type") and bits_per_weight(value) > floor}
    kept["tensor_types"] = {p: t for p, t in remedy.get("tensor_types", {}).items() if bits_per_weight(t) > floor}
    if remedy.get("extra_args"):
        kept["extra_args"] = list(remedy["extra_args"])
    return kept


def _remedy_builds(quant: str, build: Build, remedies: list[dict], builds: dict[str, Build]) -> tuple[str, ...]:
    """Names of the fallback builds for ``quant``, in order; each adds its remedy to the one before.
    A remedy that changes nothing for this type (it would only lower types) is skipped."""
    names, current = [], build
    for remedy in remedies:
        options = _merge_options(current.options, _raises_only(remedy, build.type))
        if options == current.options:
            continue
        current = Build(build.type, build.imatrix, options)
        names.append(f"{quant}-{remedy['name']}")
        builds[names[-1]] = current
    return tuple(names)


def build_plan(config: dict, source_name: str = "config", base: Path | str = ".") -> Plan:
    """Validate ``config`` (in place: defaults are filled) and return the Plan, or raise UserError."""
    schema = load_schema()
    if not isinstance(config, dict):
        raise UserError(f"{source_name}: expected a mapping of settings at the top level, got {type(config).__name__}")
    message = schema_error_message(config, schema, source_name)
    if message:
        raise UserError(message)
    fill_defaults(config)
    base = Path(base)
    evaluation = config["evaluation"]
    evaluation["text"] = _check_file(evaluation["text"], "evaluation.text", source_name, base)
    cache: dict = {}  # files already read and checked: each once, however many models name it
    text = _read_text(evaluation["text"], "evaluation.text", "evaluation text", source_name, base, cache)
    check_text_length(text, evaluation, "evaluation", source_name)
    seen: dict[str, int] = {}
    models = {}
    for index, model in enumerate(config["models"]):
        if model["name"] in seen:
            raise UserError(
                f"{source_name}: models[{index}].name: {model['name']!r} is already used by "
                f"models[{seen[model['name']]}]; expected unique model names"
            )
        seen[model["name"]] = index
        models[model["name"]] = _check_model(index, model, config, source_name, base, schema, cache)
    tiers = _check_tiers(config["tiers"], source_name)
    toolchain = config["toolchain"]
    if toolchain.get("build_dir"):
        _check_build_dir(toolchain, source_name, base)
    return Plan(toolchain=toolchain, evaluation=evaluation, reference_type=config["reference_type"],
                verify_inputs=config["verify_inputs"], models=models, tiers=tiers, benchmark=config["benchmark"],
                package=config["package"])


def _check_build_dir(toolchain: dict, source_name: str, base: Path) -> None:
    """An existing llama.cpp build must hold the tools (a few stats, so it fails before any job)."""
    from workflow_scripts.toolchain import build_bin_dir, missing_tools_message

    toolchain["build_dir"] = _check_file(toolchain["build_dir"], "toolchain.build_dir", source_name, base, "directory")
    missing = missing_tools_message(build_bin_dir(base / toolchain["build_dir"]))
    if missing:
        raise UserError(f"{source_name}: toolchain.build_dir: {missing}")


def _check_tiers(tiers: list[dict], source_name: str) -> dict[str, dict]:
    """Tiers by name: names unique, a GPU tier has both GPU memory and offloaded layers."""
    checked: dict[str, dict] = {}
    for index, tier in enumerate(tiers):
        where = f"{source_name}: tiers[{index}]"
        if tier["name"] in checked:
            raise UserError(f"{where}.name: {tier['name']!r} is already used; expected unique tier names")
        if (tier["vram_gb"] > 0) != (tier["gpu_layers"] > 0):
            raise UserError(f"{where}: vram_gb is {tier['vram_gb']} but gpu_layers is {tier['gpu_layers']}; expected both "
                            "set for a GPU tier (e.g. vram_gb: 24, gpu_layers: 999) or both 0 for a CPU tier")
        checked[tier["name"]] = tier
    return checked
