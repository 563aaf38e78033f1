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

# Base types llama-quantize cannot give a tensor whose row length is not a multiple of their block:
# tensor_type_fallback (src/llama-quant.cpp) has no fallback type for them and aborts the whole file
# (Q1_0, block 128: any model whose hidden size is not a multiple of 128). Every other type with a
# block over 32 values falls back to a type of 32-value blocks for such a tensor.
NO_ROW_FALLBACK = frozenset({"Q1_0"})
# tensor_type_fallback (src/llama-quant.cpp of the pinned llama.cpp): the 32-value-block type a
# tensor gets when its rows are not a multiple of the target type's block.
ROW_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_0": "Q4_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0",
    "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}

# File types whose base type is not what most tensors get: MXFP4_MOE gives MXFP4 only to MoE expert
# tensors and Q8_0 to every other one (llama_tensor_get_type_impl), so a dense model's file is all Q8_0.
ORDINARY_TYPE = {"MXFP4_MOE": "Q8_0"}


def expected_base_type(quant: str) -> str:
    """The tensor type file type ``quant`` is named after; ValueError for a type not in QUANT_TYPES."""
    try:
        return BASE_TYPE[quant]
    except KeyError:
        raise ValueError(f"quant type {quant!r} is not known; expected one of {', '.join(QUANT_TYPES)}") from None


def remedy_floor(quant: str) -> str:
    """The tensor type a remedy must exceed to raise a tensor of file type ``quant``: its base type,
    or the type its ordinary tensors get where that is higher (MXFP4_MOE: Q8_0, so that no remedy
    lowers a dense tensor of it to Q6_K)."""
    return ORDINARY_TYPE.get(quant, expected_base_type(quant))


def unsupported_reason(quant: str) -> str | None:
    """Why the workflow cannot make file type ``quant``, or None when it can.

    The pinned llama-quantize makes every type in QUANT_TYPES; a type whose base type the installed
    gguf-py does not know (Q2_0 in gguf 0.19.0, the newest on PyPI) makes a file that no later stage
    can read: the census, the per-tensor error, the validation and the package all read it with gguf-py.
    """
    from importlib.metadata import version

    from gguf import GGMLQuantizationType

    base = expected_base_type(quant)
    if base not in GGMLQuantizationType.__members__:
        return (f"the pinned llama-quantize makes it, but the installed gguf-py (gguf {version('gguf')}) cannot read "
                f"{base} tensors, so the workflow could not check, validate or package the file")
    return None


def supported_quant_types() -> tuple[str, ...]:
    """The file types in QUANT_TYPES that the workflow can make, check and validate, in the schema's order."""
    return tuple(q for q in QUANT_TYPES if unsupported_reason(q) is None)


def block_size(tensor_type: str) -> int:
    """Weights per block of a ggml tensor type (gguf-py's GGML_QUANT_SIZES)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[tensor_type]][0]


def bits_per_weight(tensor_type: str) -> float:
    """Storage bits per weight of a ggml tensor type: block bytes × 8 / weights per block, from
    gguf-py's copy of llama.cpp's block layouts (GGML_QUANT_SIZES)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[tensor_type]]
    return size * 8 / block
