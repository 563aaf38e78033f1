"""Names, patterns, Hub references and numbers checked at plan time (workflow_scripts/names.py and
config.py): each refusal names its field, and every plan that is accepted gives each output its
own path under results/ (a property test against the output patterns of the rules themselves)."""

import math
import re
import time
from collections import Counter, defaultdict
from itertools import product
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dag import rule_outputs
from tests.stub_sources import EMPTY_GGUF
from workflow_scripts.config import build_plan, load_schema
from workflow_scripts.errors import UserError
from workflow_scripts.names import RESERVED_MODEL_NAMES

TEXT = " ".join(f"w{i}" for i in range(400))  # 1889 bytes; eval.txt is the same with v for w
SMALL_TEXTS = {"calibration": {"text": "cal.txt", "chunks": 2, "ctx": 32},
               "evaluation": {"text": "eval.txt", "chunks": 2, "ctx": 32}}


def model(name="m", **fields):
    return {"name": name, "source": {"type": "gguf", "path": "m.gguf"}, **fields}


def tier(name="t", **fields):
    return {"name": name, "threads": 4, "ram_gb": 8, "latency_budget_s": 5, **fields}


def hf(repo_id="o/m", revision="main"):
    return {"models": [{"name": "m", "source": {"type": "hf", "repo_id": repo_id, "revision": revision}}]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The files every config here names (passed to build_plan as its base directory)."""
    path = tmp_path_factory.mktemp("names")
    (path / "m.gguf").write_bytes(EMPTY_GGUF)
    (path / "cal.txt").write_text(TEXT)
    (path / "eval.txt").write_text(TEXT.replace("w", "v"))
    return path


def plan(workdir, **config):
    return build_plan({**SMALL_TEXTS, "models": [model()], "quants": ["Q8_0"], **config}, "c.yaml", base=workdir)


REFUSED = [
    # control characters, newlines and other characters are refused in every name, wherever they are
    ({"models": [model("m\n")]}, "models[0].name: 'm\\n' does not match '^[A-Za-z0-9][A-Za-z0-9._-]*$'"),
    ({"models": [model("m\x07")]}, "models[0].name: 'm\\x07' does not match"),
    ({"models": [model("mé")]}, "models[0].name: 'mé' does not match"),
    ({"models": [model("m\n\n")]}, "models[0].name: 'm\\n\\n' does not match"),
    ({"tiers": [tier("t\n")]}, "tiers[0].name: 't\\n' does not match"),
    ({"variants": {"v\n": {"type": "Q8_0"}}}, "variants: 'v\\n' does not match"),
    ({"fallback": {"remedies": [{"name": "s\n"}]}}, "fallback.remedies[0].name: 's\\n' does not match"),
    ({"fallback": {"remedies": [{"name": "s-t"}]}}, "fallback.remedies[0].name: 's-t' does not match"),
    ({"quants": ["Q8_0\n"]}, "quants[0]: 'Q8_0\\n' is not allowed"),
    ({"tiers": [tier("a..b")]}, "tiers[0].name: 'a..b' may not contain '..'; expected a plain name"),
    # the same name twice, also in another case (one file on macOS)
    ({"models": [model("m"), model("M")]}, "models[1].name: 'M' is already used by models[0].name as 'm' (names "
     "that differ only in case are one file on macOS); expected unique model names"),
    ({"tiers": [tier("t"), tier("T")]}, "tiers[1].name: 'T' is already used by tiers[0].name as 't'"),
    ({"quants": ["Q8_0", "q8_0"], "variants": {"q8_0": {"type": "Q8_0"}}},
     "quants[1]: 'q8_0' is already used by quants[0] as 'Q8_0' (names that differ only in case"),
    # a variant named like a fallback try, before or after the quant it is the try of
    ({"quants": ["Q4_K_M", "Q4_K_M-measured"], "variants": {"Q4_K_M-measured": {"type": "Q4_K_M"}}},
     "quants[1]: 'Q4_K_M-measured' is already used by fallback.remedies[0].name; expected build names unique per "
     "model (quant types, variants, fallback tries {quant}-{remedy})"),
    ({"models": [model(quants=["Q4_K_M-measured", "Q4_K_M"])], "variants": {"Q4_K_M-measured": {"type": "Q6_K"}}},
     "fallback.remedies[0].name: 'Q4_K_M-measured' is already used by models[0].quants[0]"),
    ({"quants": ["Q4_K_M"], "fallback": {"remedies": [{"name": "a", "tensor_types": {"attn_v": "Q8_0"}},
                                                      {"name": "a", "output_tensor_type": "Q8_0"}]}},
     "fallback.remedies[1].name: 'Q4_K_M-a' is already used by fallback.remedies[0].name"),
    # builds named like the reference's files or like another build's
    ({"quants": ["reference"], "variants": {"reference": {"type": "Q8_0"}}},
     "quants[0]: 'reference' names the reference's own files (validate/reference.json, reference.sanity.json)"),
    ({"quants": ["Q8_0", "Q8_0.verdict"], "variants": {"Q8_0.verdict": {"type": "Q8_0"}}},
     "quants[1]: 'Q8_0.verdict' makes validate/Q8_0.verdict.json, a file of build 'Q8_0'; expected a build name not "
     "ending in .sanity, .tensors, .verdict"),
    ({"quants": ["Q4_K_M"], "fallback": {"remedies": [{"name": "x.Sanity", "tensor_types": {"attn_v": "Q8_0"}}]}},
     "fallback.remedies[0].name: 'Q4_K_M-x.Sanity' makes validate/Q4_K_M-x.Sanity.json"),
    ({"quants": ["Q8_0-00001-of-00002"], "variants": {"Q8_0-00001-of-00002": {"type": "Q8_0"}}},
     "quants[0]: 'Q8_0-00001-of-00002' is how llama-gguf-split names the part of a larger build in the package"),
    # a label whose `-hf REPO:TAG` tag would also pick another label's package file (llama.cpp: the tag followed
    # by '-' or '.' anywhere in the name, ignoring case)
    ({"quants": ["Q4_K_M", "Q4_K_M-static"], "variants": {"Q4_K_M-static": {"type": "Q4_K_M", "imatrix": False}}},
     "quants: 'Q4_K_M' and 'Q4_K_M-static': `-hf REPO:Q4_K_M` would also select m-Q4_K_M-static.gguf (llama.cpp "
     "picks the first file whose name contains the tag followed by '-' or '.'); expected model, quant and variant "
     "names that stay apart that way (a variant Q4_K_M-static beside Q4_K_M can be named Q4_K_M_static)"),
    ({"models": [model(quants=["q1_0", "TQ1_0"])], "variants": {"q1_0": {"type": "Q8_0"}}},
     "models[0].quants: 'q1_0' and 'TQ1_0': `-hf REPO:q1_0` would also select m-TQ1_0.gguf"),
    ({"models": [model("x-Q8_0", quants=["Q8_0", "Q6_K"])]},
     "models[0].quants: 'Q8_0' and 'Q6_K': `-hf REPO:Q8_0` would also select x-Q8_0-Q6_K.gguf"),
    # models named like a fixed entry of results/
    *[({"models": [model(name)]}, f"models[0].name: {name!r} is the name of results/{name.lower()}; expected a model "
       "name other than benchmarks, logs, package, quality.csv, summary, toolchain")
      for name in (*RESERVED_MODEL_NAMES, "Package")],
    # names that run together in the flat folders of logs, benchmarks and plots
    ({"models": [model("a"), model("a-b")], "quants": ["Q8_0", "b-Q8_0"], "variants": {"b-Q8_0": {"type": "Q8_0"}}},
     "models[1].name: 'a-b' + 'Q8_0' and 'a' + 'b-Q8_0' both make results/logs/sanity/a-b-Q8_0.log; expected model, "
     "tier and build names that stay apart when joined with '-'"),
    ({"models": [model("a"), model("A-b")], "quants": ["Q8_0", "b-reference"],
      "variants": {"b-reference": {"type": "Q8_0"}}}, "'A-b' + 'reference' and 'a' + 'b-reference' both make "
     "results/logs/sanity/A-b-reference.log"),
    ({"tiers": [tier("x"), tier("x-y")], "quants": ["Q8_0", "y-Q8_0"], "variants": {"y-Q8_0": {"type": "Q8_0"}}},
     "models[0].name: 'm' + 'x-y' + 'Q8_0' and 'm' + 'x' + 'y-Q8_0' both make results/logs/speed/m-x-y-Q8_0.log"),
    ({"models": [model("tokens-per-s-x")], "tiers": [tier("x-size-vs-kld")]},
     "tiers[0].name: 'tokens-per-s' + 'x-size-vs-kld' and 'tokens-per-s-x' + 'size-vs-kld' both make "
     "results/summary/plots/tokens-per-s-x-size-vs-kld.svg"),
    # tensor type patterns: what llama-quantize (std::regex, lower-cased) or the census (Python) refuses
    # or reads otherwise
    ({"quant_options": {"Q8_0": {"tensor_types": {"attn_(v": "Q8_0"}}}},
     "quant_options.Q8_0.tensor_types: pattern 'attn_(v': not a regular expression (missing ), unterminated "
     "subpattern at position 5); expected a regular expression on tensor names that llama.cpp and Python read alike"),
    ({"variants": {"v": {"type": "Q8_0", "tensor_types": {"(?<!x)attn": "Q8_0"}}}},
     "variants.v.tensor_types: pattern '(?<!x)attn': '(?<': llama.cpp's std::regex (ECMAScript) knows only the "
     "groups (...), (?:...) and (?!...)"),
    ({"variants": {"v": {"type": "Q8_0", "tensor_types": {"(?i)attn": "Q8_0"}}}}, "variants.v.tensor_types: pattern"),
    ({"fallback": {"remedies": [{"name": "r", "tensor_types": {"blk\\.\\D": "Q8_0"}}]}},
     "fallback.remedies[0].tensor_types: pattern 'blk\\\\.\\\\D': '\\\\D': llama-quantize lower-cases the pattern"),
    ({"quant_options": {"Q8_0": {"tensor_types": {"(?=attn)v": "Q8_0"}}}},
     "pattern '(?=attn)v': llama-quantize takes what follows the first '=' as the type"),
    ({"quant_options": {"Q8_0": {"tensor_types": {"attn{": "Q8_0"}}}}, "pattern 'attn{': '{': llama.cpp's std::regex "
     "refuses a '{' that is no {n}, {n,} or {n,m} repeat"),
    ({"quant_options": {"Q8_0": {"tensor_types": {"[]a]": "Q8_0"}}}}, "is an empty class to llama.cpp's std::regex"),
    ({"quant_options": {"Q8_0": {"tensor_types": {"a++": "Q8_0"}}}}, "'++': a possessive repeat to Python"),
    ({"quant_options": {"Q8_0": {"tensor_types": {"[[:digit:]]": "Q8_0"}}}}, "is a POSIX class to llama.cpp's"),
    ({"quant_options": {"Q8_0": {"tensor_types": {"attn\n": "Q8_0"}}}}, "pattern 'attn\\n': expected printable ASCII"),
    ({"quant_options": {"Q8_0": {"tensor_types": {"": "Q8_0"}}}}, "pattern '': an empty pattern is no tensor name"),
    # Hub references: repository ids by the Hub's rules, revisions a commit or a git ref name
    (hf("a--b/c"), "models[0].source.repo_id: Cannot have -- or .. in repo_id: 'a--b/c'; expected a Hub repository "
     "id owner/name"),
    (hf("a/b..c"), "models[0].source.repo_id: Cannot have -- or .. in repo_id"),
    (hf("a/" + "b" * 97), "models[0].source.repo_id: Repo id must use alphanumeric chars"),
    (hf("o/m\n"), "models[0].source.repo_id: 'o/m\\n' does not match"),
    (hf(revision="../../../x"), "models[0].source.revision: '../../../x' is not a git branch or tag name ('..' at "
     "position 0); expected a 40-hex commit sha (recommended) or a branch or tag name"),
    (hf(revision="/etc/x"), "models[0].source.revision: '/etc/x' is not a git branch or tag name"),
    (hf(revision="main\n"), "models[0].source.revision: 'main\\n' is not a git branch or tag name ('\\n' at "
     "position 4)"),
    (hf(revision="a\\b"), "models[0].source.revision: 'a\\\\b' is not a git branch or tag name"),
    (hf(revision="x/.hidden"), "('/.' at position 1)"),
    (hf(revision="-x"), "('-' at position 0)"),
    (hf(revision="v" * 256), "models[0].source.revision: '" + "v" * 256 + "' is too long"),
    ({"models": [model(base_model="o/m.git")]}, "models[0].base_model: Repo_id cannot end by '.git'"),
    # numbers out of bounds, and NaN
    ({"calibration": {"text": "cal.txt", "ctx": 10**12}}, "calibration.ctx: 1000000000000 is greater than the maximum"),
    ({"evaluation": {"text": "eval.txt", "chunks": 10**12}}, "evaluation.chunks: 1000000000000 is greater than"),
    ({"models": [model(calibration={"chunks": 10**9})]}, "models[0].calibration.chunks: 1000000000 is greater than"),
    ({"tiers": [tier(threads=10**12)]}, "tiers[0].threads: 1000000000000 is greater than the maximum of 1024"),
    ({"tiers": [tier(ctx=2**21)]}, "tiers[0].ctx: 2097152 is greater than the maximum of 1048576"),
    ({"tiers": [tier(ram_gb=1e12)]}, "tiers[0].ram_gb: 1000000000000.0 is greater than the maximum of 65536"),
    ({"tiers": [tier(vram_gb=1e9, gpu_layers=999)]}, "tiers[0].vram_gb: 1000000000.0 is greater than the maximum"),
    ({"tiers": [tier(gpu_layers=10**6)]}, "tiers[0].gpu_layers: 1000000 is greater than the maximum of 9999"),
    ({"tiers": [tier(latency_budget_s=math.inf)]}, "tiers[0].latency_budget_s: inf is greater than the maximum"),
    ({"tiers": [tier(max_kld=math.nan)]}, "tiers[0].max_kld: nan is not of type 'number'"),
    ({"tiers": [tier(resources={"gpus": 10**4})]}, "tiers[0].resources.gpus: 10000 is greater than the maximum of 64"),
    ({"benchmark": {"pp_tokens": 10**12}}, "benchmark.pp_tokens: 1000000000000 is greater than the maximum"),
    ({"benchmark": {"tg_tokens": 10**6}}, "benchmark.tg_tokens: 1000000 is greater than the maximum"),
    ({"benchmark": {"repetitions": 10**6}}, "benchmark.repetitions: 1000000 is greater than the maximum of 100"),
    ({"package": {"split_max_mb": 10**12}}, "package.split_max_mb: 1000000000000 is greater than the maximum"),
    ({"toolchain": {"gpu_layers": 10**12}}, "toolchain.gpu_layers: 1000000000000 is greater than the maximum"),
    ({"gates": {"default": {"max_mean_kld": math.nan}}}, "gates.default.max_mean_kld: nan is not of type 'number'"),
    ({"gates": {"per_quant": {"Q8_0": {"max_delta_ppl_pct": 1e12}}}},
     "gates.per_quant.Q8_0.max_delta_ppl_pct: 1000000000000.0 is greater than the maximum of 10000"),
    ({"gates": {"default": {"min_tg_speedup": 1e6}}}, "gates.default.min_tg_speedup: 1000000.0 is greater than"),
]


@pytest.mark.parametrize("config,expected", REFUSED, ids=[f"{i}-{e[:40]}" for i, (_, e) in enumerate(REFUSED)])
def test_plan_time_checks_refuse_naming_the_field(workdir, config, expected):
    with pytest.raises(UserError) as err:
        plan(workdir, **config)
    assert str(err.value).startswith("c.yaml: ") and expected in str(err.value)


@pytest.mark.parametrize("config", [
    {"models": [model("llama-3"), model("llama-3-instruct")]},  # a prefix alone is fine
    {"tiers": [tier("x-y")], "quants": ["y-F16"], "variants": {"y-F16": {"type": "Q8_0"}}, "models": [model("m-x")]},
    {"quants": ["Q4_K_M", "Q4_K_M_static"], "variants": {"Q4_K_M_static": {"type": "Q4_K_M", "imatrix": False}}},
    {"quants": ["Q4_K_M", "Q4_K_S", "IQ4_XS", "IQ4_NL", "Q8_0", "Q2_K", "Q2_K_S", "IQ2_XS", "IQ2_XXS", "IQ3_XS",
                "IQ3_XXS", "Q4_K_L"], "variants": {"Q4_K_L": {"type": "Q4_K_M"}}},  # each tag finds one file only
    # the reference's own type: one speed job measures both; in one package `-hf REPO:F16` may also pick
    # the BF16 file, but two llama.cpp type names cannot be renamed (the card says how to ask for the file)
    {"quants": ["F16", "BF16"]},
    {"quants": ["Q1_0", "TQ1_0"]},
    {"quant_options": {"Q4_K_M": {"tensor_types": {"blk\\.[0-3]\\.ffn_(up|down)": "Q8_0", "attn_v$": "Q6_K",
                                                   "^token_embd": "Q8_0", "(?:attn_k|attn_q)": "Q6_K",
                                                   "blk\\.\\d{1,2}\\.": "Q5_K", "(?!x)attn_output": "Q6_K"}}}},
    hf("HuggingFaceTB/SmolLM2-135M-Instruct", "refs/pr/1"), hf(revision="0123456789abcdef0123456789abcdef01234567"),
    hf(revision="release/v1.2"),
])
def test_ordinary_names_patterns_and_revisions_are_accepted(workdir, config):
    plan(workdir, **config)


def test_every_schema_pattern_is_anchored():
    """Patterns are matched against the whole text (config.py); anchored, they mean the same to any
    JSON Schema validator (ECMA-262's $ is the end of the text)."""
    def patterns(node):
        if isinstance(node, dict):
            yield from ([node["pattern"]] if isinstance(node.get("pattern"), str) else [])
            for value in node.values():
                yield from patterns(value)
        elif isinstance(node, list):
            for value in node:
                yield from patterns(value)

    found = list(patterns(load_schema()))
    assert len(found) >= 7 and all(p.startswith("^") and p.endswith("$") for p in found)


def test_every_number_in_the_schema_has_bounds():
    def numbers(node, where):
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number"):
                yield where, node
            for key, value in node.items():
                yield from numbers(value, f"{where}.{key}")

    for where, node in numbers(load_schema(), ""):
        assert "maximum" in node and ("minimum" in node or "exclusiveMinimum" in node), where


# --- every accepted plan gives each output its own path (property test) ----------------------------

SENTINEL_MODEL, SENTINEL_TIER = "sentinelmodel", "sentineltier"


@pytest.fixture(scope="module")
def layout(workdir) -> list[tuple[str, list[str], bool]]:
    """(rule, its output/log/benchmark patterns, whether its {build} also takes the reference type)
    of every rule: the results layout as the rules declare it. The summary rule expands its plots
    over models and tiers when parsed, so the workflow is parsed with a sentinel model and tier
    whose names are then turned back into wildcards."""
    config = workdir / "layout.yaml"
    sentinels = {"models": [model(SENTINEL_MODEL)], "tiers": [tier(SENTINEL_TIER)]}
    config.write_text(yaml.safe_dump({**SMALL_TEXTS, **sentinels}))
    rules = []
    for rule, constraints, patterns in rule_outputs(workdir, config):
        patterns = [p.replace(SENTINEL_MODEL, "{model}").replace(SENTINEL_TIER, "{tier}") for p in patterns]
        rules.append((rule, patterns, bool(re.fullmatch(constraints.get("build", "(?!)"), "F16"))))
    return rules


def output_collisions(layout, plan) -> list[str]:
    """Every output path of ``plan`` expanded from the rules' patterns; what is wrong with them:
    a path outside results/, one path from two patterns or two sets of names (one pattern of two
    rules is one output: source_local and source_hub make source.json for different sources), a
    file where a folder is needed, or one folder made from two different names. Compared ignoring
    case."""
    problems = []
    files, folders = defaultdict(set), defaultdict(set)
    for _, patterns, takes_reference in layout:
        for pattern in patterns:
            names = sorted(set(re.findall(r"\{(\w+)\}", pattern)))
            for values in _expansions(plan, names, takes_reference):
                path = pattern.format(**values)
                parts = path.split("/")
                if parts[0] != "results" or any(p in ("", ".", "..") for p in parts):
                    problems.append(f"{path} escapes results/")
                files[path.lower()].add((pattern, tuple(sorted(values.items()))))
                template = pattern.split("/")
                for depth in range(1, len(parts)):
                    prefix = "/".join(template[:depth])
                    used = tuple(sorted((k, v) for k, v in values.items() if "{" + k + "}" in prefix))
                    folders["/".join(parts[:depth]).lower()].add((prefix, used))
    problems += [f"{path}: written for {sorted(owners)}" for path, owners in files.items() if len(owners) > 1]
    problems += [f"{path}: a folder made as {sorted(made)}" for path, made in folders.items() if len(made) > 1]
    problems += [f"{path}: a file and a folder" for path in files if path in folders]
    return problems


def _expansions(plan, names: list[str], takes_reference: bool):
    """Wildcard values of a pattern: every model, its builds (and the reference type where the rule
    measures it) and its auto builds' menu types, every tier."""
    for model_name in plan.models if "model" in names else [None]:
        builds = list(plan.models[model_name].builds) if model_name else []
        domains = {"model": [model_name], "tier": list(plan.tiers), "reftype": [plan.reference_type],
                   "build": builds + ([plan.reference_type] if takes_reference else []),
                   "menu_type": list(plan.models[model_name].auto_menu) if model_name else []}
        for combo in product(*(domains[n] for n in names)):
            yield dict(zip(names, combo))


def test_the_layout_check_finds_what_names_py_refuses(layout, workdir):
    """The oracle itself: a plan built past the checks (names already made unique by hand) collides."""
    plan = build_plan({**SMALL_TEXTS, "models": [model("a")], "quants": ["Q8_0"]}, "c.yaml", base=workdir)
    assert output_collisions(layout, plan) == []
    renamed = type(plan)(**{**vars(plan), "models": {"package": plan.models["a"]}})
    assert any("a folder made as" in p for p in output_collisions(layout, renamed))


def test_fixed_entries_of_results_are_reserved_model_names(layout):
    fixed = {p.split("/")[1] for _, patterns, _ in layout for p in patterns if not p.startswith("results/{")}
    assert fixed == set(RESERVED_MODEL_NAMES)


# The names of a config are runs of consecutive pieces of one random "spine": the models are its
# beginnings, the variants its ends and the tiers runs within (spine a-b-Q8_0: models a and a-b,
# variant b-Q8_0, quant Q8_0), so that names run together in the shapes of the layout
# ({model}-{build}, {model}-{tier}-{build}, {build}.sanity), differ in case or echo fixed names often
# enough to come near every collision. In a quarter of the configs one name also holds something no
# name may hold.
PLAIN = ["a", "b", "A", "x-y", "sensitive", "reference", "size-vs-kld", "tokens-per-s", "package", "Logs"]
ENDS = ["Q8_0", "Q4_K_M", "F16", "sanity", "verdict", "reference", "00001-of-00002"]
TYPES = ["Q8_0", "Q4_K_M", "F16", "BF16"]
HOSTILE = [".", "..", "/", "a/b", "../x", "", "\n", "m\n", "\x00", "\x1b", "é", "\u202e", "ﬁ", "-", "_"]
HOSTILE_PIECE = st.one_of(st.sampled_from(HOSTILE), st.text(alphabet="ab.-_/\n\x01é09Q", max_size=4))


@st.composite
def configs(draw) -> dict:
    spine = draw(st.lists(st.sampled_from(PLAIN), min_size=2, max_size=3)) + [draw(st.sampled_from(ENDS))]
    separator = draw(st.sampled_from(["-", ".", "_"]))
    swapped = draw(st.lists(st.integers(0, 9), max_size=2))  # names at these positions change case

    def names(runs) -> list[str]:
        return [separator.join(spine[a:b]).swapcase() if i in swapped else separator.join(spine[a:b])
                for i, (a, b) in enumerate(runs)]

    k = len(spine)
    models = names([(0, stop) for stop in range(1, k) if stop == 1 or draw(st.booleans())])
    variants = {v: {"type": draw(st.sampled_from(["Q8_0", "Q4_K_M", "Q6_K"]))}
                for v in names([(start, k) for start in range(1, k) if draw(st.booleans())]) if v not in TYPES}
    tiers = names(draw(st.lists(st.integers(0, k - 1).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, k))),
                                min_size=1, max_size=2)))
    remedies = [{"name": draw(st.sampled_from(["sensitive", "a", "SENSITIVE", "sanity", "reference", "x.verdict"])),
                 "tensor_types": {"attn_v": "Q8_0"}} for _ in range(draw(st.integers(0, 2)))]
    types = list(dict.fromkeys(draw(st.lists(st.sampled_from(TYPES), max_size=2)) + spine[-1:]))
    quants = list(draw(st.permutations([*variants, *(t for t in types if t in TYPES)]))) or ["Q8_0"]
    if draw(st.integers(0, 3)) == 2:  # a twin in another case
        names_of = draw(st.sampled_from([models, tiers, quants]))
        names_of.append(draw(st.sampled_from(names_of)).swapcase())
        variants.update({q: {"type": "Q8_0"} for q in quants if q not in TYPES and q not in variants})
    config = {**SMALL_TEXTS, "reference_type": draw(st.sampled_from(["F16", "BF16"])), "quants": quants,
              "variants": variants, "fallback": {"remedies": remedies},
              "models": [model(m) for m in models], "tiers": [tier(t) for t in tiers]}
    if draw(st.integers(0, 3)) == 2:  # one name made hostile
        named = [*config["models"], *config["tiers"], *remedies]
        entry = named[draw(st.integers(0, len(named) - 1))]
        at = draw(st.integers(0, len(entry["name"])))
        entry["name"] = entry["name"][:at] + draw(HOSTILE_PIECE) + entry["name"][at:]
    return config


FIELD = re.compile(r"c\.yaml: [a-z_]+(\[\d+\]|\.[^:\s]+)*: ")  # 'file: field: problem'


def test_accepted_plans_never_share_an_output_path(layout, workdir):
    outcomes = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(configs())
    def check(config):
        try:
            plan = build_plan(config, "c.yaml", base=workdir)
        except UserError as err:
            assert FIELD.match(str(err)), str(err)
            outcomes["refused"] += 1
            return
        assert output_collisions(layout, plan) == [], config
        outcomes["accepted"] += 1

    started = time.monotonic()
    check()
    print(f"{dict(outcomes)} in {time.monotonic() - started:.1f} s")
    assert outcomes["accepted"] >= 10 and outcomes["refused"] >= 10
