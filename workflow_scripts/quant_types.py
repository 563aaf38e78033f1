"""What the workflow knows about llama.cpp's quant types: the file types it accepts, the tensor type
each file type is named after, which types need an importance matrix, and the bits per weight of a
tensor type.

It imports nothing from the project, so any module may use it. The file types users read are the
schema's ``$defs.quant_type.enum`` (config/schema/config.schema.yaml); tests/test_quant_types.py
keeps that list equal to ``QUANT_TYPES``.
"""

from __future__ import annotations

# llama_ftype_get_default_type (src/llama-quant.cpp of the pinned llama.cpp): the tensor type a
# file type is named after; mixtures (_S/_M/_L, IQ*_M) upgrade some tensors from it. In the
# schema's order.
BASE_TYPE = {
    "Q1_0": "Q1_0", "Q2_0": "Q2_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "MXFP4_MOE": "MXFP4", "Q5_0": "Q5_0",
    "Q5_1": "Q5_1", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S",
    "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "Q2_K": "Q2_K", "Q2_K_S": "Q2_K",
    "IQ3_XXS": "IQ3_XXS", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S", "IQ3_XS": "IQ3_S", "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q8_0": "Q8_0", "F16": "F16",
    "BF16": "BF16",
}
# The llama-quantize file types the workflow accepts: those whose base type is known.
QUANT_TYPES = tuple(BASE_TYPE)

# llama.cpp refuses these without an importance matrix (src/llama-quant.cpp,
# tensor_requires_imatrix): their main tensors become IQ1/IQ2/IQ3_XXS types, or Q2_K in Q2_K_S.
IMATRIX_REQUIRED_QUANTS = frozenset(
    {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
)
IMATRIX_REQUIRED_TENSOR_TYPES = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"})


def expected_base_type(quant: str) -> str:
    """The tensor type file type ``quant`` is named after; ValueError for a type not in QUANT_TYPES."""
    try:
        return BASE_TYPE[quant]
    except KeyError:
        raise ValueError(f"quant type {quant!r} is not known; expected one of {', '.join(QUANT_TYPES)}") from None


def bits_per_weight(tensor_type: str) -> float:
    """Storage bits per weight of a ggml tensor type: block bytes × 8 / weights per block, from
    gguf-py's copy of llama.cpp's block layouts (GGML_QUANT_SIZES)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[tensor_type]]
    return size * 8 / block
