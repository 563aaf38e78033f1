"""Dequantization oracles that owe nothing to gguf-py (which the project's own code uses):

- ``ggml_to_float``: llama.cpp's own C dequantization (``to_float`` of ggml's type traits in the
  pinned build's ``libggml-base.so``), through ctypes;
- ``q8_0_reference`` and ``q4_1_reference``: the block layouts of ggml-common.h written out in numpy,
  checked against ``dequantize_row_q8_0``/``dequantize_row_q4_1`` of the pinned tree's
  ggml/src/ggml-quants.c (the sums are float32 there, and ggml-base is built with
  -ffp-contract=off, so ``q * d + m`` rounds twice, as numpy's separate multiply and add do);
- ``bf16_reference``: float32 to bfloat16 by torch, the rounding llama.cpp's convert uses.
"""

from __future__ import annotations

import ctypes

import numpy as np

# block_q8_0: ggml_half d; int8_t qs[32]          -> y[j] = qs[j] * d
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
# block_q4_1: ggml_half d, m; uint8_t qs[16]       -> y[j] = (qs[j] & 15) * d + m, y[j + 16] = (qs[j] >> 4) * d + m
Q4_1_BLOCK = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])


def _blocks(raw, block: np.dtype) -> np.ndarray:
    data = np.ascontiguousarray(raw).view(np.uint8).ravel()
    assert data.size % block.itemsize == 0, (data.size, block.itemsize)
    return data.view(block)


def q8_0_reference(raw) -> np.ndarray:
    """The float32 values of Q8_0 bytes ``raw`` (any shape), flat, in storage order."""
    blocks = _blocks(raw, Q8_0_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]
    return (blocks["qs"].astype(np.float32) * d).ravel()


def q4_1_reference(raw) -> np.ndarray:
    """The float32 values of Q4_1 bytes ``raw`` (any shape), flat: per block, the low nibbles give
    elements 0..15 and the high nibbles 16..31."""
    blocks = _blocks(raw, Q4_1_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]
    m = blocks["m"].astype(np.float32)[:, None]
    quants = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32)
    product = quants * d  # rounded to float32 before the min is added, as in C without contraction
    return (product + m).ravel()


def bf16_reference(values: np.ndarray) -> np.ndarray:
    """``values`` (float32) rounded to bfloat16, as raw uint16 words."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return tensor.view(torch.int16).numpy().view(np.uint16)


class TypeTraits(ctypes.Structure):
    """``struct ggml_type_traits`` of the pinned ggml (ggml/include/ggml.h)."""

    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def ggml_to_float(lib: ctypes.CDLL, tensor) -> np.ndarray:
    """llama.cpp's own dequantization of a GGUF tensor (gguf-py ReaderTensor), through ggml's type traits."""
    from gguf import GGML_QUANT_SIZES

    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    traits = lib.ggml_get_type_traits(int(tensor.tensor_type)).contents
    block, size = GGML_QUANT_SIZES[tensor.tensor_type]
    assert traits.type_name.decode().upper() == tensor.tensor_type.name and (traits.blck_size, traits.type_size) == (block, size)
    raw = np.ascontiguousarray(tensor.data).view(np.uint8)
    out = np.empty(int(tensor.n_elements), dtype=np.float32)
    TO_FLOAT(traits.to_float)(raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out
