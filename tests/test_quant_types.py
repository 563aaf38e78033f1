"""Quant-type knowledge: in step with the schema users read, and with llama.cpp's block layouts."""

import copy
from pathlib import Path

import pytest
import yaml

from tests.stub_sources import EMPTY_GGUF
from workflow_scripts.config import build_plan, gate_for, load_schema
from workflow_scripts.errors import UserError
from workflow_scripts.quant_types import (
    BASE_TYPE, IMATRIX_REQUIRED_QUANTS, IMATRIX_REQUIRED_TENSOR_TYPES, NO_ROW_FALLBACK, QUANT_TYPES, bits_per_weight,
    block_size, expected_base_type, remedy_floor, supported_quant_types, unsupported_reason,
)

SCHEMA = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "schema" / "config.schema.yaml").read_text())
SCHEMA_QUANT_TYPES = SCHEMA["$defs"]["quant_type"]["enum"]
SCHEMA_TENSOR_TYPES = SCHEMA["$defs"]["tensor_type"]["enum"]
# gguf 0.19.0, the newest on PyPI, has no Q2_0 (the vendored llama.cpp's gguf-py has it, as (64, 2 + 16)).
GGUF_HAS_Q2_0 = "Q2_0" in __import__("gguf").GGMLQuantizationType.__members__


def test_the_schema_lists_the_file_types_the_module_knows():
    assert SCHEMA_QUANT_TYPES == list(QUANT_TYPES)
    assert [q for q in SCHEMA_QUANT_TYPES if q not in BASE_TYPE] == []


def test_base_types_follow_llama_cpp():
    assert [expected_base_type(q) for q in ("Q4_K_M", "Q3_K_M", "IQ2_M", "IQ3_XS", "Q8_0")] == [
        "Q4_K", "Q3_K", "IQ2_S", "IQ3_S", "Q8_0"]
    with pytest.raises(ValueError, match="'Q9' is not known"):
        expected_base_type("Q9")


def test_types_that_need_an_imatrix_are_known_types():
    assert IMATRIX_REQUIRED_QUANTS <= set(QUANT_TYPES)
    assert IMATRIX_REQUIRED_TENSOR_TYPES <= set(SCHEMA_TENSOR_TYPES)


# llama.cpp's block layouts (ggml-common.h), bytes per block / weights per block, written out here.
@pytest.mark.parametrize("tensor_type,bits", [
    ("Q4_0", 4.5),  # 2-byte scale + 16 bytes of 4-bit quants, 32 weights: 18 bytes
    ("Q8_0", 8.5),  # 2 + 32 bytes, 32 weights
    ("Q4_K", 4.5),  # 144 bytes, 256 weights
    ("Q6_K", 6.5625),  # 210 bytes, 256 weights
    ("IQ4_XS", 4.25),  # 136 bytes, 256 weights
    ("F16", 16.0), ("BF16", 16.0), ("F32", 32.0),
])
def test_bits_per_weight_follow_llama_cpp_block_layouts(tensor_type, bits):
    assert bits_per_weight(tensor_type) == bits


@pytest.mark.parametrize("quant", supported_quant_types())
def test_every_base_type_has_bits_per_weight(quant):
    """A remedy compares its tensor types with the file type's base type by bits per weight."""
    assert 1 <= bits_per_weight(expected_base_type(quant)) <= 16
    assert 1 <= bits_per_weight(remedy_floor(quant)) <= 16


def test_only_the_types_gguf_py_cannot_read_are_unsupported():
    """The pinned llama-quantize makes Q2_0, but gguf 0.19.0 cannot read its tensors: every later
    stage would fail on the file (the plan-time refusal is tested below). When gguf-py learns Q2_0,
    this fails: run tests/test_every_quant_type.py, which then makes Q2_0 too."""
    assert [q for q in QUANT_TYPES if unsupported_reason(q)] == ([] if GGUF_HAS_Q2_0 else ["Q2_0"])
    if not GGUF_HAS_Q2_0:
        assert "gguf-py (gguf 0.19.0) cannot read Q2_0 tensors" in unsupported_reason("Q2_0")
    assert "Q2_0" not in supported_quant_types() and supported_quant_types()[-2:] == ("F16", "BF16")


def test_types_without_a_row_fallback_have_large_blocks():
    """Types of 32-value blocks need no fallback (such a row becomes F16): only larger blocks can abort."""
    assert NO_ROW_FALLBACK <= set(BASE_TYPE.values()) and all(block_size(t) > 32 for t in NO_ROW_FALLBACK)


def test_a_remedy_never_lowers_the_q8_0_tensors_of_an_mxfp4_moe_file():
    """MXFP4_MOE gives MXFP4 only to MoE expert tensors and Q8_0 to all others: ffn_down=Q6_K would
    lower a dense model's every ffn_down."""
    assert remedy_floor("MXFP4_MOE") == "Q8_0" and bits_per_weight("MXFP4") < bits_per_weight("Q6_K")
    assert remedy_floor("Q4_K_M") == "Q4_K" and remedy_floor("IQ2_M") == "IQ2_S"


@pytest.mark.parametrize("quant", supported_quant_types())
def test_every_type_can_pass_the_size_gate(quant):
    """A type whose tensors are no smaller than the reference's (F16, BF16) is not held to a size
    reduction or a speed-up it cannot have; every other type is, by the default gate."""
    schema = load_schema()
    defaults = {key: spec["default"] for key, spec in schema["properties"]["gates"]["properties"].items()}
    gate = gate_for(quant, defaults, schema)
    if bits_per_weight(expected_base_type(quant)) >= 16:
        assert gate["min_size_reduction_pct"] == 0 and gate["min_tg_speedup"] == 0
    else:
        assert gate["min_size_reduction_pct"] == defaults["default"]["min_size_reduction_pct"] > 0


@pytest.fixture
def plan_config(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(EMPTY_GGUF)
    (tmp_path / "cal.txt").write_text("text " * 2100)  # 20 chunks × 512 tokens need 10240 bytes
    return {"calibration": {"text": "cal.txt"}, "models": [{"name": "a", "source": {"type": "gguf", "path": "m.gguf"}}]}


@pytest.mark.skipif(GGUF_HAS_Q2_0, reason="the installed gguf-py reads Q2_0")
def test_q2_0_is_refused_at_plan_time_with_the_reason(plan_config):
    plan_config["quants"] = ["Q8_0", "Q2_0"]
    with pytest.raises(UserError) as err:
        build_plan(plan_config, "c.yaml")
    assert str(err.value).startswith("c.yaml: quants[1]: 'Q2_0' cannot be made by this workflow (the pinned "
                                     "llama-quantize makes it, but the installed gguf-py (gguf 0.19.0) cannot read "
                                     "Q2_0 tensors")
    assert str(err.value).endswith("; expected one of " + ", ".join(supported_quant_types()))
    plan_config["quants"] = ["low"]
    plan_config["variants"] = {"low": {"type": "Q2_0"}}
    with pytest.raises(UserError, match=r"^c.yaml: variants.low.type: 'Q2_0' cannot be made"):
        build_plan(plan_config, "c.yaml")


def test_every_supported_type_plans_with_the_default_remedies(plan_config):
    plan_config["quants"] = list(supported_quant_types())
    plan = build_plan(copy.deepcopy(plan_config), "c.yaml").models["a"]
    assert set(plan.builds) >= set(supported_quant_types())
    # measured: nothing on the menu is above Q8_0 (MXFP4_MOE's dense tensors are Q8_0)
    assert plan.remedies["MXFP4_MOE"] == plan.remedies["Q8_0"] == plan.remedies["F16"] == ()
    assert plan.remedies["Q4_0"] == ("Q4_0-measured",) and plan.remedies["Q6_K"] == ("Q6_K-measured",)
    plan_config["fallback"] = {"remedies": [{"name": "sensitive", "tensor_types": {"attn_v": "Q8_0", "ffn_down": "Q6_K"},
                                             "output_tensor_type": "Q8_0", "token_embedding_type": "Q8_0"}]}
    plan = build_plan(plan_config, "c.yaml").models["a"]
    assert plan.remedies["MXFP4_MOE"] == plan.remedies["Q8_0"] == plan.remedies["F16"] == ()
    assert plan.builds["Q1_0-sensitive"].recipe == plan.builds["Q4_0-sensitive"].recipe


@pytest.mark.parametrize("tensor_type", SCHEMA_TENSOR_TYPES)
def test_every_tensor_type_the_schema_accepts_has_bits_per_weight(tensor_type):
    assert 1 <= bits_per_weight(tensor_type) <= 32
