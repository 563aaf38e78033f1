"""Config checks: every bad config is refused with a message naming the field."""

import copy

import pytest

from tests.stub_sources import EMPTY_GGUF, write_hf_dir
from workflow_scripts.config import build_plan, quantize_args
from workflow_scripts.errors import UserError


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(EMPTY_GGUF)
    write_hf_dir(tmp_path / "hf")
    (tmp_path / "cal.txt").write_text("text " * 2100)  # 20 chunks × 512 tokens need 10240 bytes
    return {
        "calibration": {"text": "cal.txt"},
        "models": [
            {"name": "a", "source": {"type": "gguf", "path": "m.gguf"}},
            {"name": "b", "source": {"type": "local", "path": "hf"}, "quants": ["Q8_0"]},
        ],
    }


def test_valid_config_gets_defaults_and_per_model_quants(base):
    plan = build_plan(base, "c.yaml")
    assert plan.models["a"].quants == ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M")
    assert plan.models["b"].quants == ("Q8_0",)
    assert plan.models["a"].calibration == {"text": "cal.txt", "chunks": 20, "ctx": 512}
    assert plan.reference_type == "F16" and plan.models["a"].imatrix is True
    assert plan.toolchain["llama_cpp_python_version"] == "0.3.36"


def test_model_calibration_overrides_only_the_keys_it_names(base):
    base["models"][1]["calibration"] = {"chunks": 4}
    plan = build_plan(base, "c.yaml")
    assert plan.models["b"].calibration == {"text": "cal.txt", "chunks": 4, "ctx": 512}


def test_quant_options_become_llama_quantize_arguments(base):
    base["quant_options"] = {"Q4_K_M": {"tensor_types": {"ffn_down": "Q6_K", "attn_v": "Q8_0"},
                                        "output_tensor_type": "Q8_0", "token_embedding_type": "Q6_K",
                                        "extra_args": ["--pure"]}}
    plan = build_plan(base, "c.yaml")
    assert plan.models["a"].builds["Q4_K_M"].args == (
        "--tensor-type", "attn_v=Q8_0", "--tensor-type", "ffn_down=Q6_K",
        "--output-tensor-type", "Q8_0", "--token-embedding-type", "Q6_K", "--pure")
    assert "--pure" not in plan.models["a"].builds["Q4_K_M"].recipe
    assert plan.models["a"].builds["Q8_0"].args == ()
    assert quantize_args({}) == ()


def test_variants_are_builds_of_a_type_with_their_own_settings(base):
    base["quant_options"] = {"Q4_K_M": {"tensor_types": {"attn_v": "Q6_K"}}}
    base["variants"] = {"Q4_K_M_static": {"type": "Q4_K_M", "imatrix": False},
                        "Q4_K_L": {"type": "Q4_K_M", "output_tensor_type": "Q8_0", "token_embedding_type": "Q8_0"}}
    base["models"][1]["quants"] = ["Q4_K_M", "Q4_K_M_static", "Q4_K_L"]
    builds = build_plan(base, "c.yaml").models["b"].builds
    assert builds["Q4_K_M_static"].type == "Q4_K_M" and not builds["Q4_K_M_static"].imatrix
    assert builds["Q4_K_M_static"].recipe == builds["Q4_K_M"].recipe == ("--tensor-type", "attn_v=Q6_K")
    assert builds["Q4_K_L"].imatrix and builds["Q4_K_L"].recipe == (
        "--tensor-type", "attn_v=Q6_K", "--output-tensor-type", "Q8_0", "--token-embedding-type", "Q8_0")


def test_remedies_only_raise_types_and_accumulate(base):
    base["fallback"] = {"remedies": [{"name": "v8", "tensor_types": {"attn_v": "Q8_0", "ffn_down": "Q6_K"}},
                                     {"name": "emb", "token_embedding_type": "Q8_0"}]}
    plan = build_plan(base, "c.yaml").models["a"]
    assert plan.remedies["Q4_K_M"] == ("Q4_K_M-v8", "Q4_K_M-emb")
    assert plan.builds["Q4_K_M-emb"].recipe == ("--tensor-type", "attn_v=Q8_0", "--tensor-type", "ffn_down=Q6_K",
                                                "--token-embedding-type", "Q8_0")
    assert plan.builds["Q4_K_M-emb"].type == "Q4_K_M" and plan.gates["Q4_K_M-emb"] == plan.gates["Q4_K_M"]
    # Q6_K would lower ffn_down of a Q6_K file: only attn_v rises; nothing rises above Q8_0.
    assert plan.builds["Q6_K-v8"].recipe == ("--tensor-type", "attn_v=Q8_0")
    assert plan.remedies["Q8_0"] == ()
    base["fallback"] = {"remedies": []}
    assert build_plan(base, "c.yaml").models["a"].remedies["Q4_K_M"] == ()


def test_a_measured_remedy_raises_from_the_build_before_it_within_its_allowance(base):
    base["fallback"] = {"remedies": [{"name": "sensitive", "tensor_types": {"attn_v": "Q8_0"}},
                                     {"name": "measured", "measured": {"allowance_pct": 15}}]}
    base["variants"] = {"Q4_K_M_static": {"type": "Q4_K_M", "imatrix": False}}
    base["models"][1]["quants"] = ["Q8_0", "Q4_K_M", "Q4_K_M_static"]
    plan = build_plan(base, "c.yaml").models["b"]
    # Q8_0: the fixed remedy raises nothing, and no menu type is above Q8_0
    assert plan.remedies["Q8_0"] == ()
    assert plan.remedies["Q4_K_M"] == ("Q4_K_M-sensitive", "Q4_K_M-measured")
    measured = plan.builds["Q4_K_M-measured"]
    assert measured.auto["objective"] == {"raise_from": "Q4_K_M-sensitive"} and measured.auto["allowance_pct"] == 15
    assert measured.auto["menu"] == ["Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "IQ4_NL", "Q5_0", "Q5_1"]
    assert measured.auto["setting"] == "fallback.remedies[1].measured"
    # every tensor's type comes from its file; none of the fixed remedy's settings compete with it
    assert measured.quantize_argv("ref.gguf", "im.gguf", "t.txt") == [
        "--tensor-type-file", "t.txt", "--imatrix", "im.gguf", "ref.gguf", "{out}", "Q4_K_M"]
    # a static build's errors are not the imatrix quantization's the measurements are of
    assert plan.remedies["Q4_K_M_static"] == ("Q4_K_M_static-sensitive",)
    assert plan.auto_menu == ("IQ4_NL", "IQ4_XS", "Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")


@pytest.mark.parametrize("remedies,variants,expected", [
    ([{"name": "m", "measured": {}, "tensor_types": {"attn_v": "Q8_0"}}], {},
     "fallback.remedies[0]: tensor_types cannot be combined with measured"),
    ([{"name": "m", "measured": {}}, {"name": "s", "token_embedding_type": "Q8_0"}], {},
     "fallback.remedies[1]: a fixed remedy after the measured fallback.remedies[0]; expected fixed remedies first"),
    ([{"name": "m", "measured": {"allowance_pct": 0}}], {},
     "fallback.remedies[0].measured.allowance_pct: 0 is less than or equal to the minimum of 0"),
    ([{"name": "m", "measured": {"menu": ["Q4_K", "Q8_0"]}}], {"a": {"type": "Q4_K_M", "auto": {"target_bpw": 5}}},
     "variants.a.auto.menu: differs from fallback.remedies[0].measured.menu"),
])
def test_bad_measured_remedies_are_refused(base, remedies, variants, expected):
    base["fallback"] = {"remedies": remedies}
    base["variants"] = variants
    base["models"][1]["quants"] = ["Q4_K_M", *variants]
    with pytest.raises(UserError) as err:
        build_plan(base, "c.yaml")
    assert expected in str(err.value)


def test_an_auto_variant_is_a_build_whose_types_come_at_run_time(base):
    base["variants"] = {"Q4_auto": {"type": "Q4_K_M", "auto": {"bytes_of": "Q4_K_M"}},
                        "small": {"type": "Q3_K_M", "auto": {"target_bpw": 3.9}}}
    base["models"][1]["quants"] = ["Q4_K_M", "Q4_auto", "small"]
    plan = build_plan(base, "c.yaml").models["b"]
    auto = plan.builds["Q4_auto"]
    assert (auto.type, auto.imatrix, auto.recipe) == ("Q4_K_M", True, ())
    assert auto.auto == {"objective": {"bytes_of": "Q4_K_M"}, "source_types": [], "setting": "variants.Q4_auto.auto",
                         "menu": ["Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "IQ4_NL", "Q5_0", "Q5_1"]}
    assert auto.quantize_argv("ref.gguf", "im.gguf", "t.txt") == [
        "--tensor-type-file", "t.txt", "--imatrix", "im.gguf", "ref.gguf", "{out}", "Q4_K_M"]
    assert plan.remedies["Q4_auto"] == () and plan.remedies["Q4_K_M"] == ("Q4_K_M-measured",)
    assert plan.auto_menu == ("IQ4_NL", "IQ4_XS", "Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")
    assert plan.builds["small"].auto["objective"] == {"target_bpw": 3.9}


@pytest.mark.parametrize("auto,extra,quants,expected", [
    ({}, {}, ["Q4_auto"], "variants.Q4_auto.auto: sets no objective; expected exactly one of bytes_of, target_bpw"),
    ({"bytes_of": "Q4_K_M", "max_mean_kld": 0.01}, {}, ["Q4_K_M", "Q4_auto"],
     "variants.Q4_auto.auto: sets bytes_of and max_mean_kld; expected exactly one"),
    ({"bytes_of": "Q4_K_M"}, {}, ["Q4_auto"], "variants.Q4_auto.auto.bytes_of: Q4_K_M is not among models[1]'s quants"),
    ({"target_bpw": 4.5}, {"tensor_types": {"attn_v": "Q8_0"}}, ["Q4_auto"],
     "variants.Q4_auto: tensor_types cannot be combined with auto"),
    ({"target_bpw": 4.5}, {"imatrix": False}, ["Q4_auto"], "variants.Q4_auto.imatrix: an auto build weighs"),
    ({"target_bpw": 0.5}, {}, ["Q4_auto"], "variants.Q4_auto.auto.target_bpw: 0.5 is less than the minimum of 1"),
    ({"target_bpw": 4.5, "menu": ["Q4_K"]}, {}, ["Q4_auto"], "variants.Q4_auto.auto.menu"),
])
def test_bad_auto_variants_are_refused(base, auto, extra, quants, expected):
    base["variants"] = {"Q4_auto": {"type": "Q4_K_M", "auto": auto, **extra}}
    base["models"][1]["quants"] = quants
    with pytest.raises(UserError) as err:
        build_plan(base, "c.yaml")
    assert expected in str(err.value)


def test_auto_builds_of_one_model_share_one_menu(base):
    base["variants"] = {"a1": {"type": "Q4_K_M", "auto": {"target_bpw": 4.5}},
                        "a2": {"type": "Q4_K_M", "auto": {"target_bpw": 5, "menu": ["Q4_K", "Q8_0"]}}}
    base["models"][1]["quants"] = ["a1", "a2"]
    with pytest.raises(UserError, match=r"variants.a2.auto.menu: differs from variants.a1.auto.menu"):
        build_plan(base, "c.yaml")


@pytest.mark.parametrize("variants,quants,expected", [
    ({}, ["Q4_K_L"], "models[1].quants[0]: 'Q4_K_L' is not allowed; expected one of"),
    ({"Q4_K_M": {"type": "Q4_K_M", "imatrix": False}}, ["Q4_K_M"], "variants.Q4_K_M: a variant may not be named like"),
    ({"IQ2-static": {"type": "IQ2_XS", "imatrix": False}}, ["IQ2-static"], "variants.IQ2-static.imatrix is false"),
])
def test_bad_variants_are_refused(base, variants, quants, expected):
    base["variants"] = variants
    base["models"][1]["quants"] = quants
    with pytest.raises(UserError) as err:
        build_plan(base, "c.yaml")
    assert expected in str(err.value)


def _set(cfg, path, value):
    *parents, last = path
    node = cfg
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()

BAD = [
    # (path to change, new value, expected text in the message)
    (("models",), [], "models: [] should be non-empty"),
    (("quants",), ["Q4_K_Z"], "quants[0]: 'Q4_K_Z' is not allowed; expected one of"),
    (("models", 0, "quants"), ["Q4_K"], "models[0].quants[0]: 'Q4_K' is not allowed"),
    (("colour",), "blue", "(top level): unknown key(s) 'colour'"),
    (("models", 0, "sorce"), {}, "models[0]: unknown key(s) 'sorce'"),
    (("models", 0, "source", "type"), "s3", "models[0].source.type: 's3' is not allowed; expected one of local, gguf, hf"),
    (("models", 0, "source", "path"), "missing.gguf", "models[0].source.path: file 'missing.gguf' does not exist"),
    (("models", 1, "source", "path"), "nodir", "models[1].source.path: directory 'nodir' does not exist"),
    (("models", 1, "name"), "a", "models[1].name: 'a' is already used by models[0]"),
    (("models", 1, "name"), "../x", "models[1].name: '../x' does not match"),
    (("models", 1, "name"), "/abs", "models[1].name: '/abs' does not match"),
    (("models", 1, "name"), "a/b", "models[1].name: 'a/b' does not match"),
    (("models", 1, "name"), "a..b", "models[1].name: 'a..b' may not contain '..'"),
    (("calibration", "text"), "nope.txt", "calibration.text: file 'nope.txt' does not exist"),
    (("calibration", "chunks"), 0, "calibration.chunks: 0 is less than the minimum of 1"),
    (("calibration", "ctx"), "512", "calibration.ctx: '512' is not of type 'integer'"),
    (("reference_type",), "F8", "reference_type: 'F8' is not allowed; expected one of F16, BF16"),
    (("toolchain",), {"llama_cpp_python_version": "latest"}, "toolchain.llama_cpp_python_version: 'latest' does not match"),
    (("toolchain",), {"backend": "rocm"}, "toolchain.backend: 'rocm' is not allowed"),
    (("toolchain",), {"build_dir": "nobuild"}, "toolchain.build_dir: directory 'nobuild' does not exist"),
    (("quant_options",), {"Q4_K_M": {"tensor_types": {"attn_v": "Q7"}}}, "quant_options.Q4_K_M.tensor_types.attn_v: 'Q7' is not allowed"),
    (("quant_options",), {"Q4_K_M": {"output_type": "Q8_0"}}, "quant_options.Q4_K_M: unknown key(s) 'output_type'"),
    (("models", 0, "source"), {"type": "hf", "repo_id": "x"}, "models[0].source: 'revision' is a required property"),
    (("models", 0, "source"), {"type": "gguf", "path": "m.gguf", "file": "x"}, "either path, or package and file, not both"),
    (("models", 0, "source"), {"type": "local", "path": "hf", "revision": "main"}, "models[0].source: unknown key(s) 'revision'"),
    (("models", 0, "source"), {"type": "gguf", "package": "no_such_package_here", "file": "x.gguf"}, "models[0].source"),
    (("tiers",), [{"name": "t", "threads": -1, "ram_gb": 8, "latency_budget_s": 5}], "tiers[0].threads: -1 is less than the minimum of 1"),
    (("tiers",), [{"name": "t", "threads": 4, "ram_gb": 8, "latency_budget_s": 0}], "tiers[0].latency_budget_s: 0 is less than or equal to the minimum of 0"),
    (("tiers",), [{"name": "t", "threads": 4, "ram_gb": 8, "latency_budget_s": 5, "cores": 4}], "tiers[0]: unknown key(s) 'cores'"),
    (("tiers",), [{"name": "t", "threads": 4, "ram_gb": 8, "latency_budget_s": 5, "priority": "cheap"}], "tiers[0].priority: 'cheap' is not allowed; expected one of quality, balanced, speed"),
    (("tiers",), [{"name": "t", "threads": 4, "ram_gb": 8, "latency_budget_s": 5}] * 2, "tiers[1].name: 't' is already used"),
    (("tiers",), [{"name": "g", "threads": 4, "ram_gb": 8, "vram_gb": 24, "latency_budget_s": 5}], "tiers[0]: vram_gb is 24 but gpu_layers is 0"),
    (("benchmark",), {"repetitions": 0}, "benchmark.repetitions: 0 is less than the minimum of 1"),
    (("gates",), {"default": {"min_tg_speedup": -1}}, "gates.default.min_tg_speedup: -1 is less than the minimum of 0"),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[".".join(map(str, b[0])) + "=" + repr(b[1])[:20] for b in BAD])
def test_bad_config_is_refused_naming_the_field(base, path, value, expected):
    cfg = copy.deepcopy(base)
    _set(cfg, path, value)
    with pytest.raises(UserError) as err:
        build_plan(cfg, "c.yaml")
    assert str(err.value).startswith("c.yaml: ")
    assert expected in str(err.value)


def test_imatrix_quant_without_imatrix_is_refused(base):
    base["imatrix"] = False
    base["quants"] = ["Q4_K_M", "IQ2_XS"]
    with pytest.raises(UserError, match=r"models\[0\]: quant IQ2_XS needs an importance matrix .* imatrix is false"):
        build_plan(base, "c.yaml")


def test_override_to_an_imatrix_type_needs_an_imatrix_too(base):
    base["models"][0]["imatrix"] = False
    base["models"][0]["quants"] = ["Q4_K_M"]
    base["quant_options"] = {"Q4_K_M": {"tensor_types": {"ffn_up": "IQ2_XXS"}}}
    with pytest.raises(UserError, match=r"models\[0\].imatrix is false"):
        build_plan(base, "c.yaml")


def test_top_level_must_be_a_mapping():
    with pytest.raises(UserError, match="expected a mapping"):
        build_plan(["models"], "c.yaml")


def test_an_alias_bomb_is_refused_in_bounded_time_before_anything_walks_it():
    """Loaded as Snakemake loads it, 544 bytes of YAML hold 9**9 strings by reference: the walk
    stops when its budget is spent, long before the schema validation would write them out."""
    import time

    import yaml

    from tests.test_user_errors import alias_bomb
    from workflow_scripts.config import check_config_size

    config = yaml.load(alias_bomb(), Loader=yaml.FullLoader)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"^c.yaml: models\[0\]\.note\[8\]\[8\]\[8\]\[8\].*: too large to check"):
        check_config_size(config, "c.yaml")
    assert time.perf_counter() - start < 5


def test_deep_nesting_and_huge_strings_are_refused():
    from tests.test_user_errors import nested

    with pytest.raises(UserError, match=r"^c.yaml: models\[0\]\.note(\[0\]){14}: nested more than 16 levels deep"):
        build_plan({"models": [{"name": "m", "note": nested(20)}]}, "c.yaml")
    with pytest.raises(UserError, match=r"^c.yaml: models\[0\]\.note: too large to check"):
        build_plan({"models": [{"name": "m", "note": "x" * 2_000_000}]}, "c.yaml")
    with pytest.raises(UserError, match=r"^c.yaml: variants: too large to check"):  # a key is a string too
        build_plan({"variants": {"v" * 2_000_000: {"type": "Q8_0"}}}, "c.yaml")


def test_aliases_within_the_budget_are_fine(base):
    shared = {"tensor_types": {"attn_v": "Q8_0"}, "output_tensor_type": "Q8_0"}
    base["quant_options"] = {"Q4_K_M": shared, "Q5_K_M": shared}  # what a YAML alias loads as
    assert build_plan(base, "c.yaml").models["a"].builds["Q5_K_M"].args[:2] == ("--tensor-type", "attn_v=Q8_0")


def test_config_reference_is_generated_from_the_current_schema():
    from pathlib import Path

    from workflow_scripts.config_doc import render

    doc = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    assert doc.read_text() == render(), "docs/config.md is stale: python -m workflow_scripts.config_doc > docs/config.md"


def test_shipped_default_config_is_valid(monkeypatch):
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    plan = build_plan(yaml.safe_load((root / "config" / "config.yaml").read_text()), "config/config.yaml")
    assert list(plan.models) == ["smollm2-135m"]
    assert plan.models["smollm2-135m"].quants == ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M")
