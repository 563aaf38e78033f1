"""Quant-type knowledge: in step with the schema users read, and with llama.cpp's block layouts."""

from pathlib import Path

import pytest
import yaml

from workflow_scripts.quant_types import (
    BASE_TYPE, IMATRIX_REQUIRED_QUANTS, IMATRIX_REQUIRED_TENSOR_TYPES, QUANT_TYPES, bits_per_weight, expected_base_type,
)

SCHEMA = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "schema" / "config.schema.yaml").read_text())
SCHEMA_QUANT_TYPES = SCHEMA["$defs"]["quant_type"]["enum"]
SCHEMA_TENSOR_TYPES = SCHEMA["$defs"]["tensor_type"]["enum"]
# gguf 0.19.0 from PyPI has no Q2_0 (the vendored llama.cpp's gguf-py has it, as (64, 2 + 16)).
NO_Q2_0 = pytest.mark.xfail(strict=True, raises=KeyError, reason="the installed gguf-py does not know Q2_0")


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


@pytest.mark.parametrize("quant", [pytest.param(q, marks=NO_Q2_0) if q == "Q2_0" else q for q in QUANT_TYPES])
def test_every_base_type_has_bits_per_weight(quant):
    """A remedy compares its tensor types with the file type's base type by bits per weight."""
    assert 1 <= bits_per_weight(expected_base_type(quant)) <= 16


@pytest.mark.parametrize("tensor_type", SCHEMA_TENSOR_TYPES)
def test_every_tensor_type_the_schema_accepts_has_bits_per_weight(tensor_type):
    assert 1 <= bits_per_weight(tensor_type) <= 32
