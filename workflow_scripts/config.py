"""Check the configuration and turn it into a plan: what to build for each model.

The JSON Schema (config/schema/config.schema.yaml) checks shapes and fills defaults; this module
adds what a schema cannot say (files exist and their headers are sound, texts are long enough,
names that become paths cannot collide (names.py), tensor type patterns and Hub references are
sound, quant types that need an importance matrix get one) and words every error for the
user: file, field, what was expected. It runs once when the workflow is parsed, so a bad config fails
before any job starts; it reads each file once and only headers, so a large sweep still plans fast
(texts, which are checked whole, are read a block at a time once after each change: TextFacts). The
config itself is walked within a budget first, so any file is checked in bounded time and memory.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from workflow_scripts.calibration import TextFacts, check_scan
from workflow_scripts.errors import UserError
from workflow_scripts.names import Claims, check_build_name, check_flat_names, check_model_name, check_package_tags
from workflow_scripts.paths import DIRECTORY, FILE, path_kind, path_problem
from workflow_scripts.quant_types import (
    IMATRIX_REQUIRED_QUANTS, IMATRIX_REQUIRED_TENSOR_TYPES, bits_per_weight, remedy_floor, supported_quant_types,
    unsupported_reason,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PROJECT_DIR / "config" / "schema" / "config.schema.yaml"

CALIBRATION_KEYS = ("text", "chunks", "ctx")
OPTION_KEYS = ("tensor_types", "output_tensor_type", "token_embedding_type", "extra_args")
MAX_CONFIG_SIZE = 1_000_000  # values plus characters of strings, every YAML alias written out
MAX_CONFIG_DEPTH = 16  # levels of nesting (the schema's deepest setting is a handful down)
TEXT_FACTS = Path(".snakemake", "gguf-forge", "texts.json")  # under the working directory


@dataclass(frozen=True)
class Build:
    """One llama-quantize output: its file type, settings, and whether it uses the imatrix."""

    type: str
    imatrix: bool
    options: dict[str, Any]
    # an auto build or a measured remedy: {"objective": {key: value}, "menu": [...], "source_types": [...],
    # "setting": where the config asks for it; a measured remedy's objective is {"raise_from": build}, beside "allowance_pct"}
    auto: dict[str, Any] | None = None

    @property
    def args(self) -> tuple[str, ...]:
        return quantize_args(self.options)

    @property
    def recipe(self) -> tuple[str, ...]:
        return quantize_args(self.options, include_extra=False)

    def quantize_argv(self, reference: str, imatrix: str, tensor_type_file: str | None = None) -> list[str]:
        """llama-quantize's arguments (``{out}`` stands for the output): the overrides (an auto
        build's: its tensor type file), the imatrix by its stable relative path when the build uses
        it, the reference, the type. The quantize job runs them and the package records them."""
        chosen = ["--tensor-type-file", tensor_type_file] if self.auto else []
        return [*self.args, *chosen, *(["--imatrix", imatrix] if self.imatrix else []), reference, "{out}", self.type]


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

    @property
    def auto_menu(self) -> tuple[str, ...]:
        """Every tensor type some auto build of the model may choose: one sensitivity job each."""
        return tuple(sorted({t for build in self.builds.values() if build.auto for t in build.auto["menu"]}))


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
    disk: dict[str, Any] = field(default_factory=dict)  # model → disk_plan.ModelNeed (predicted files)
    publish: dict[str, dict[str, Any]] = field(default_factory=dict)  # model → publish settings; empty unless enabled


@functools.cache
def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The schema, read once per process (half the time of a plan was parsing it): callers only read it."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def field_path(parts) -> str:
    """``['models', 0, 'source', 'type']`` → ``models[0].source.type``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def check_config_size(config: Any, source_name: str) -> None:
    """Refuse a config too large or too deeply nested to check in bounded time and memory, before
    anything else walks it.

    Snakemake's YAML loader keeps an alias as a reference to the anchored value, so a 1 KB file of
    lists of aliases of lists describes a billion strings ("billion laughs"); every later walk
    (schema validation, a message quoting the value) writes them all out. Here a value costs one,
    a string or a container its length more, each time it is reached, and the walk stops as soon
    as MAX_CONFIG_SIZE is spent.
    """
    spent = 0
    stack = [((), config)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_CONFIG_DEPTH:
            raise UserError(f"{source_name}: {field_path(path)}: nested more than {MAX_CONFIG_DEPTH} levels deep; "
                            f"expected at most {MAX_CONFIG_DEPTH} levels")
        spent += 1 + (len(value) if isinstance(value, (str, bytes, dict, list, tuple, set, frozenset)) else 0)
        if spent > MAX_CONFIG_SIZE:
            raise UserError(f"{source_name}: {field_path(path)}: too large to check: the config reaches more than "
                            f"{MAX_CONFIG_SIZE:,} values and characters here, every YAML alias written out; expected "
                            "a smaller config (no huge strings; no aliases of lists of aliases, which multiply)")
        if isinstance(value, dict):
            stack += [(path + (key,), item) for key, item in value.items()] + [(path, key) for key in value]
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack += [(path + (index,), item) for index, item in enumerate(value)]


def _whole_text_pattern(validator, pattern: str, instance, schema: dict):
    """JSON Schema's ``pattern``, matched against the whole text. Every pattern of the schema is
    anchored (^...$), but Python's '$' also matches before a final newline, so ``re.search`` let a
    model named "m\\n" through (and the newline split the command it reached); ECMA-262's '$',
    which JSON Schema means, does not."""
    if validator.is_type(instance, "string") and not re.fullmatch(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# The schema's validator, with patterns matched against the whole text and NaN (YAML's .nan, which
# passes every minimum and maximum) not counted as a number.
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER
ConfigValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, validators={"pattern": _whole_text_pattern},
    type_checker=_TYPES.redefine("number", lambda _, value: _TYPES.is_type(value, "number") and not math.isnan(value)))


def schema_error_message(config: dict, schema: dict, source_name: str) -> str | None:
    """The most relevant schema violation, worded as 'file: field: problem', or None."""
    validator = ConfigValidator(schema)
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


def _check_file(path_text: str, where: str, source_name: str, base: Path, kind: str = FILE) -> str:
    """The path to use for a configured file (or directory): relative to the working directory, or
    else to the project directory (so shipped files such as config/data/calibration.txt work from
    anywhere). The first thing found is what the user meant: refused, saying what it is, when it is
    not a readable ``kind``."""
    path = Path(path_text)
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [base / path, PROJECT_DIR / path]
    for candidate in candidates:
        if path_kind(candidate) is not None:
            found = path_text if candidate == base / path else str(candidate)
            if problem := path_problem(candidate, kind):
                raise UserError(f"{source_name}: {where}: {found!r} {problem}")
            return found
    raise UserError(f"{source_name}: {where}: {kind} {path_text!r} does not exist "
                    f"(looked in {' and '.join(map(str, candidates))})")


def gate_for(quant: str, gates: dict, schema: dict) -> dict[str, float]:
    """Thresholds for one quant type: gates.default, then the built-in table, then the user's entry."""
    builtin = schema["properties"]["gates"]["properties"]["per_quant"]["default"]
    return {**gates["default"], **builtin.get(quant, {}), **gates.get("per_quant", {}).get(quant, {})}


def _check_text(path: str, field: str, what: str, settings: dict, section: str, source_name: str, base: Path,
                cache: dict) -> None:
    """A configured text must be UTF-8 and hold at least MIN_CHARS characters (read once, a block at
    a time, then known from cache["texts"] until the file changes) and enough bytes for the tokens
    asked of it (its size)."""
    try:
        check_scan(base / path, what, cache["texts"].scan(base / path))
    except UserError as err:
        raise UserError(f"{source_name}: {field}: {err}") from None
    check_text_length((base / path).stat().st_size, settings, section, source_name)


def check_text_length(size: int, settings: dict, section: str, source_name: str) -> None:
    """Refuse a text of ``size`` bytes too short for the ``chunks`` × ``ctx`` tokens asked of it
    (llama-imatrix and llama-perplexity also need at least two contexts). Tokens are not counted
    here (that needs the model's tokenizer): every token stands for at least one byte, so a text
    with fewer UTF-8 bytes than the tokens needed is short whatever the tokenizer; a longer one may
    still fall short."""
    chunks, ctx = settings["chunks"], settings["ctx"]
    needed = max(chunks, 2) * ctx
    if size < needed:
        raise UserError(f"{source_name}: {section}: the text {settings['text']!r} has {size} bytes, so at most {size} "
                        f"tokens, but chunks × ctx = {chunks} × {ctx} needs {needed} (and at least 2 × ctx); expected "
                        f"a text of at least {needed} bytes, or fewer chunks or a smaller ctx")


def check_overlap(calibration: str, evaluation: str, limit: float, where: str, source_name: str, base: Path,
                  cache: dict) -> None:
    """Refuse an evaluation text that repeats the calibration text (it would flatter every quant);
    measured once per pair of files, then known from cache["texts"] until either changes."""
    share = cache["texts"].overlap(base / calibration, base / evaluation)
    if share > limit:
        raise UserError(f"{source_name}: {where}: {share:.1%} of the evaluation text {evaluation!r} also occurs in "
                        f"the calibration text {calibration!r}; expected at most {limit:.1%} "
                        "(evaluation.max_overlap): use held-out text")


def _check_source(model_source: dict, field: str, source_name: str, base: Path, cache: dict) -> dict:
    """The source with its path resolved, after a header-only check of its files (once per path):
    a damaged or cut-short download is refused before any job starts."""
    from workflow_scripts.gguf_header import resolve_gguf_path
    from workflow_scripts.gguf_split import source_parts
    from workflow_scripts.hf_dir import check_hf_source

    source = dict(model_source)
    if source["type"] == "hf":
        from workflow_scripts.hub import check_repo_id, check_revision

        check_repo_id(source["repo_id"], f"{source_name}: {field}.repo_id")
        check_revision(source["revision"], f"{source_name}: {field}.revision")
        return source
    if "path" in source:
        kind = DIRECTORY if source["type"] == "local" else FILE
        source["path"] = _check_file(source["path"], f"{field}.path", source_name, base, kind)
        field += ".path"
    try:
        path = base / resolve_gguf_path(source) if source["type"] == "gguf" else base / source["path"]
        if ("source", path) not in cache:
            if source["type"] == "gguf":
                source_parts(path)  # every part of a split GGUF: present, complete, of this split
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
    if "base_model" in model:
        from workflow_scripts.hub import check_repo_id

        check_repo_id(model["base_model"], f"{source_name}: {where}.base_model")
    source = _check_source(model["source"], f"{where}.source", source_name, base, cache)
    calibration = _calibration(config["calibration"], model.get("calibration"))
    section = f"{where}.calibration" if model.get("calibration") else "calibration"
    cal_field = f"{where}.calibration.text" if "text" in model.get("calibration", {}) else "calibration.text"
    calibration["text"] = _check_file(calibration["text"], cal_field, source_name, base)
    _check_text(calibration["text"], cal_field, "calibration text", calibration, section, source_name, base, cache)
    check_overlap(calibration["text"], config["evaluation"]["text"], config["evaluation"]["max_overlap"], cal_field,
                  source_name, base, cache)
    imatrix = model.get("imatrix", config["imatrix"])
    quants = tuple(model.get("quants", config["quants"]))
    quants_field = f"{where}.quants" if "quants" in model else "quants"
    builds, remedies = {}, {}
    names = Claims(source_name, "build names unique per model (quant types, variants, fallback tries {quant}-{remedy})")

    def add(name: str, build: Build, field: str) -> None:
        names.claim(name, field)
        check_build_name(name, field, source_name)
        builds[name] = build

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
        add(quant, build, f"{quants_field}[{position}]")
        # an auto build's types are the search's answer for its budget: a fixed remedy over them is none
        remedies[quant] = () if build.auto else _remedy_builds(quant, build, config["fallback"]["remedies"], add)
    _check_auto_builds(builds, quants, source, base, where, quants_field, source_name)
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
    file_type = quant if variant is None else variant["type"]
    if reason := unsupported_reason(file_type):
        field = where if variant is None else f"variants.{quant}.type"
        raise UserError(f"{source_name}: {field}: {file_type!r} cannot be made by this workflow ({reason}); "
                        f"expected one of {', '.join(supported_quant_types())}")
    if variant is None:
        return Build(quant, imatrix, _merge_options({}, config["quant_options"].get(quant, {})))
    if quant in types:
        raise UserError(f"{source_name}: variants.{quant}: a variant may not be named like the quant type {quant}; "
                        f"expected another name (e.g. {quant}_static)")
    if "auto" in variant:
        return _auto_build(quant, variant, imatrix, source_name)
    options = _merge_options(config["quant_options"].get(variant["type"], {}), variant)
    return Build(variant["type"], variant.get("imatrix", imatrix), options)


AUTO_OBJECTIVES = ("bytes_of", "target_bpw", "max_mean_kld")


def _auto_build(name: str, variant: dict, imatrix: bool, source_name: str) -> Build:
    """An auto variant as a Build: its file type, no options of its own (the chosen tensor types
    come as a file at run time), the objective and the menu. Settings that would compete with the
    chosen types are refused, and so is a build without the imatrix (the search weighs errors by it)."""
    where = f"{source_name}: variants.{name}"
    auto = variant["auto"]
    objectives = [key for key in AUTO_OBJECTIVES if key in auto]
    if len(objectives) != 1:
        raise UserError(f"{where}.auto: {'sets ' + ' and '.join(objectives) if objectives else 'sets no objective'}; "
                        f"expected exactly one of {', '.join(AUTO_OBJECTIVES)}")
    clashing = [key for key in OPTION_KEYS if variant.get(key)]
    if clashing:
        raise UserError(f"{where}: {', '.join(clashing)} cannot be combined with auto (the search chooses every "
                        "tensor's type); expected them left out")
    if not variant.get("imatrix", imatrix):
        raise UserError(f"{where}.imatrix: an auto build weighs each tensor's error by the importance matrix; "
                        "expected true (and the model's imatrix on)")
    return Build(variant["type"], True, {"tensor_types": {}},
                 auto={"objective": {objectives[0]: auto[objectives[0]]}, "menu": list(auto["menu"]), "source_types": [],
                       "setting": f"variants.{name}.auto"})


def source_stored_types(source: dict, base: Path) -> set[str]:
    """The quantized tensor types a GGUF source stores its weights in (an F16/BF16/F32 source, or an
    HF source: none). Requantizing a tensor to the type it came from reproduces the source exactly,
    so such a type looks free to a search measured against the dequantized reference."""
    if source["type"] != "gguf":
        return set()
    from workflow_scripts.gguf_header import read_gguf_header, resolve_gguf_path

    header = read_gguf_header(base / resolve_gguf_path(source))  # a split source's first part holds the same types
    return {t.type.name for t in header.tensors.values()} - {"F32", "F16", "BF16"}


def _check_auto_builds(builds: dict[str, Build], quants: tuple[str, ...], source: dict, base: Path, where: str,
                       quants_field: str, source_name: str) -> None:
    """Each auto build's budget names a stock build of the model; the types the source was stored in
    are recorded (a tensor may not get back the type the source stored it in)."""
    autos = {name: build for name, build in builds.items() if build.auto}
    if not autos:
        return
    menus = {tuple(sorted(build.auto["menu"])): build.auto["setting"] for build in autos.values()}
    if len(menus) > 1:
        first, second = list(menus.values())[:2]
        raise UserError(f"{source_name}: {second}.menu: differs from {first}.menu, and both are builds of {where}; "
                        "expected one menu per model (its sensitivity is measured once)")
    stored = source_stored_types(source, base)
    for name, build in autos.items():
        bytes_of = build.auto["objective"].get("bytes_of")
        if bytes_of is not None and bytes_of not in quants:
            raise UserError(f"{source_name}: variants.{name}.auto.bytes_of: {bytes_of} is not among {where}'s quants "
                            f"({quants_field}: {', '.join(quants)}); expected a quant type the model also builds, "
                            "whose size is the budget and the comparison")
        # per tensor at run time (the auto recipe reads the source's types): Q8_0 stays on the menu
        # of a Q4_1 source's Q4_1 tensors, and only its Q8_0 token embedding loses it
        build.auto["source_types"] = sorted(stored)


def _merge_options(base: dict, over: dict) -> dict:
    """llama-quantize settings ``over`` laid over ``base`` (tensor type patterns merged)."""
    merged = {key: value for key, value in base.items() if key in OPTION_KEYS}
    merged.update({key: value for key, value in over.items() if key in OPTION_KEYS})
    merged["tensor_types"] = {**base.get("tensor_types", {}), **over.get("tensor_types", {})}
    return merged


def _raises_only(remedy: dict, base_type: str) -> dict:
    """The remedy's type settings that raise a tensor above the file type's own type (a remedy
    never lowers one: ffn_down=Q6_K means nothing for a Q8_0)."""
    floor = bits_per_weight(remedy_floor(base_type))
    kept = {key: value for key, value in remedy.items()
            if key in ("output_tensor_type", "token_embedding_type") and bits_per_weight(value) > floor}
    kept["tensor_types"] = {p: t for p, t in remedy.get("tensor_types", {}).items() if bits_per_weight(t) > floor}
    if remedy.get("extra_args"):
        kept["extra_args"] = list(remedy["extra_args"])
    return kept


def _remedy_builds(quant: str, build: Build, remedies: list[dict], add) -> tuple[str, ...]:
    """Names of the fallback builds for ``quant``, in order, each given to ``add(name, build, field)``;
    each adds its remedy to the one before. A remedy that changes nothing for this type (it would
    only lower types) is skipped, and so is a measured remedy for a build made without the imatrix
    (its measurements are of imatrix quantization) or whose type no menu type is above (Q8_0)."""
    names, current = [], build
    floor = bits_per_weight(remedy_floor(build.type))
    for index, remedy in enumerate(remedies):
        if "measured" in remedy:
            measured = _measured_build(build.type, names[-1] if names else quant, remedy["measured"],
                                       f"fallback.remedies[{index}].measured")
            if build.imatrix and max(map(bits_per_weight, measured.auto["menu"])) > floor:
                current = measured
                names.append(f"{quant}-{remedy['name']}")
                add(names[-1], current, f"fallback.remedies[{index}].name")
            continue
        options = _merge_options(current.options, _raises_only(remedy, build.type))
        if options == current.options:
            continue
        current = Build(build.type, build.imatrix, options)
        names.append(f"{quant}-{remedy['name']}")
        add(names[-1], current, f"fallback.remedies[{index}].name")
    return tuple(names)


def _measured_build(file_type: str, previous: str, measured: dict, setting: str) -> Build:
    """A measured remedy as a Build: the file type, no options of its own (the raised tensor types
    come as a file at run time, naming every tensor), raising from ``previous``'s actual types."""
    return Build(file_type, True, {"tensor_types": {}},
                 auto={"objective": {"raise_from": previous}, "allowance_pct": measured["allowance_pct"],
                       "menu": list(measured.get("menu", auto_menu_default())), "source_types": [], "setting": setting})


def auto_menu_default() -> list[str]:
    """The schema's default menu (a measured remedy's menu refers to the auto builds' setting, and
    the schema's defaults are not filled through a reference)."""
    return load_schema()["$defs"]["auto"]["properties"]["menu"]["default"]


def check_remedies(remedies: list[dict], source_name: str) -> None:
    """A measured remedy sets nothing else, and no fixed remedy follows one: a fixed remedy adds its
    types to the settings of the one before, and a measured remedy's types are no settings."""
    measured = None
    for index, remedy in enumerate(remedies):
        where = f"{source_name}: fallback.remedies[{index}]"
        if "measured" in remedy:
            clashing = [key for key in OPTION_KEYS if key in remedy]
            if clashing:
                raise UserError(f"{where}: {', '.join(clashing)} cannot be combined with measured (the measurements "
                                "choose which tensors to raise); expected them in a remedy of their own before it")
            measured = index
        elif measured is not None:
            raise UserError(f"{where}: a fixed remedy after the measured fallback.remedies[{measured}]; expected fixed "
                            "remedies first (each adds its types to the one before; a measured one raises from the "
                            "actual types of the build before it)")


def build_plan(config: dict, source_name: str = "config", base: Path | str = ".",
               free_bytes: int | None = None, main_process: bool = True) -> Plan:
    """Validate ``config`` (in place: defaults are filled) and return the Plan, or raise UserError.

    With ``disk_check`` on, the disk still needed under results/ must fit the free space of its file
    system (``free_bytes`` stands in for the measured figure in tests). Not in a job's own parse of
    the workflow (``main_process`` false: a cluster job), where others' partial files share the disk."""
    check_config_size(config, source_name)
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
    # Files already checked: each once, however many models name it; texts across runs too (TextFacts).
    cache: dict = {"texts": TextFacts(base / TEXT_FACTS)}
    _check_text(evaluation["text"], "evaluation.text", "evaluation text", evaluation, "evaluation", source_name, base,
                cache)
    _check_tensor_patterns(config, source_name)
    check_remedies(config["fallback"]["remedies"], source_name)
    names = Claims(source_name, "unique model names")
    models = {}
    for index, model in enumerate(config["models"]):
        names.claim(model["name"], f"models[{index}].name")
        check_model_name(model["name"], f"models[{index}].name", source_name)
        models[model["name"]] = _check_model(index, model, config, source_name, base, schema, cache)
    tiers = _check_tiers(config["tiers"], source_name)
    check_flat_names({name: plan.builds for name, plan in models.items()}, list(tiers), config["reference_type"],
                     source_name)
    for index, model in enumerate(config["models"]):
        check_package_tags(model["name"], models[model["name"]].quants, set(schema["$defs"]["quant_type"]["enum"]),
                           f"models[{index}].quants" if "quants" in model else "quants", source_name)
    toolchain = config["toolchain"]
    if toolchain.get("build_dir"):
        _check_build_dir(toolchain, source_name, base)
    from workflow_scripts.disk_plan import check_disk, predict

    disk = {name: predict(plan, config["reference_type"], evaluation, config["package"], base)
            for name, plan in models.items()}
    if config["disk_check"] and main_process:
        check_disk(list(disk.values()), base, source_name, free_bytes)
    return Plan(toolchain=toolchain, evaluation=evaluation, reference_type=config["reference_type"],
                verify_inputs=config["verify_inputs"], models=models, tiers=tiers, benchmark=config["benchmark"],
                package=config["package"], disk=disk, publish=_check_publish(config, source_name))


def _check_publish(config: dict, source_name: str) -> dict[str, dict[str, Any]]:
    """Each published model's settings (the model's publish keys over the top-level ones), or none
    unless publish.enabled. Repository ids are checked as the Hub checks them even when publishing
    is off, and one repository takes one model: two packages would each replace the other's files."""
    from workflow_scripts.hub import check_repo_id

    defaults = {k: v for k, v in config["publish"].items() if k != "enabled"}
    repos = Claims(source_name, "one model per Hub repository (two packages would replace each other's files)")
    plans = {}
    for index, model in enumerate(config["models"]):
        if "publish" in model:
            where = f"models[{index}].publish.repo_id"
            check_repo_id(model["publish"]["repo_id"], f"{source_name}: {where}")
            repos.claim(model["publish"]["repo_id"], where)
            plans[model["name"]] = {**defaults, **model["publish"]}
    if not config["publish"]["enabled"]:
        return {}
    if not plans:
        raise UserError(f"{source_name}: publish.enabled is true but no model sets publish.repo_id; expected "
                        "models[].publish.repo_id (owner/name) on each model to publish")
    return plans


def _check_tensor_patterns(config: dict, source_name: str) -> None:
    """Every tensor_types key is a regular expression that llama-quantize and the census read alike."""
    from workflow_scripts.gguf_census import tensor_pattern_problem

    places = [(f"quant_options.{quant}", options) for quant, options in config["quant_options"].items()]
    places += [(f"variants.{name}", variant) for name, variant in config["variants"].items()]
    places += [(f"fallback.remedies[{i}]", remedy) for i, remedy in enumerate(config["fallback"]["remedies"])]
    for where, options in places:
        for pattern in options.get("tensor_types", {}):
            if problem := tensor_pattern_problem(pattern):
                raise UserError(f"{source_name}: {where}.tensor_types: pattern {pattern!r}: {problem}; expected a "
                                "regular expression on tensor names that llama.cpp and Python read alike, "
                                "e.g. 'blk\\.[0-3]\\.ffn_down'")


def _check_build_dir(toolchain: dict, source_name: str, base: Path) -> None:
    """An existing llama.cpp build must hold the tools (a few stats, so it fails before any job)."""
    from workflow_scripts.toolchain import build_bin_dir, missing_tools_message

    toolchain["build_dir"] = _check_file(toolchain["build_dir"], "toolchain.build_dir", source_name, base, DIRECTORY)
    missing = missing_tools_message(build_bin_dir(base / toolchain["build_dir"]))
    if missing:
        raise UserError(f"{source_name}: toolchain.build_dir: {missing}")


def _check_tiers(tiers: list[dict], source_name: str) -> dict[str, dict]:
    """Tiers by name: names unique, a GPU tier has both GPU memory and offloaded layers."""
    checked: dict[str, dict] = {}
    names = Claims(source_name, "unique tier names")
    for index, tier in enumerate(tiers):
        where = f"{source_name}: tiers[{index}]"
        names.claim(tier["name"], f"tiers[{index}].name")
        if (tier["vram_gb"] > 0) != (tier["gpu_layers"] > 0):
            raise UserError(f"{where}: vram_gb is {tier['vram_gb']} but gpu_layers is {tier['gpu_layers']}; expected both "
                            "set for a GPU tier (e.g. vram_gb: 24, gpu_layers: 999) or both 0 for a CPU tier")
        checked[tier["name"]] = tier
    return checked
