"""How much memory a GGUF needs on a tier, predicted from the file before anything is run.

weights (the tensor bytes, all of them mapped) + KV cache at the tier's context (F16 K and V for
every layer: ctx × layers × kv_heads × (key + value length) × 2 bytes) + compute buffers
(the logits of one 512-token batch, n_vocab × 512 × 4 bytes, plus a fixed 256 MiB for activations
and the runtime). On a GPU tier the offloaded share of the weights, the whole KV cache, the compute
buffers and the CUDA context (driver, kernels, cuBLAS workspace) count against VRAM. Only a share
of a tier's memory is usable: the system and other programs keep the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

UBATCH = 512
RUNTIME_BYTES = 256 * 1024 * 1024
CUDA_CONTEXT_BYTES = 768 * 1024 * 1024
"""What a CUDA process holds on the GPU before any tensor: measured on an H200 (CUDA 13, llama.cpp
built for sm_90) as a near-constant 0.68-0.75 GB above the rest of the prediction; rounded up, so
a fit verdict errs on the safe side."""
USABLE_RAM = 0.8
USABLE_VRAM = 0.9
GB = 1e9


def model_shape(gguf: Path) -> dict[str, int]:
    """Layers, heads, head sizes, vocabulary and tensor bytes, read from the GGUF's metadata."""
    from workflow_scripts.gguf_header import read_gguf_header

    header = read_gguf_header(gguf)

    def field(key: str, default: int | None = None) -> int:
        value = header.metadata.get(key)
        if value is None:
            if default is None:
                raise ValueError(f"{gguf}: metadata key {key} missing")
            return default
        return int(max(value) if isinstance(value, list) else value)  # per-layer lists: the largest

    arch = header.metadata["general.architecture"]
    n_embd, n_head = field(f"{arch}.embedding_length"), field(f"{arch}.attention.head_count")
    head_dim = n_embd // n_head
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    return {
        "layers": field(f"{arch}.block_count"),
        "kv_heads": field(f"{arch}.attention.head_count_kv", n_head),
        "key_length": field(f"{arch}.attention.key_length", head_dim),
        "value_length": field(f"{arch}.attention.value_length", head_dim),
        "vocab": len(tokens) if tokens is not None else 0,
        "tensor_bytes": sum(t.n_bytes for t in header.tensors.values()),
    }


def predict(shape: dict[str, int], ctx: int, gpu_layers: int = 0) -> dict[str, Any]:
    """Predicted bytes in RAM and VRAM for one tier's settings."""
    kv = ctx * shape["layers"] * shape["kv_heads"] * (shape["key_length"] + shape["value_length"]) * 2
    compute = shape["vocab"] * UBATCH * 4 + RUNTIME_BYTES
    offloaded = min(gpu_layers, shape["layers"]) / shape["layers"] if shape["layers"] else 0.0
    context = CUDA_CONTEXT_BYTES if gpu_layers else 0
    vram = int(shape["tensor_bytes"] * offloaded + kv + compute + context) if gpu_layers else 0
    ram = int(shape["tensor_bytes"] * (1 - offloaded) + (0 if gpu_layers else kv + compute)) + RUNTIME_BYTES // 4
    return {"weights_bytes": shape["tensor_bytes"], "kv_cache_bytes": kv, "compute_bytes": compute,
            "cuda_context_bytes": context, "ram_bytes": ram, "vram_bytes": vram}


def fits(prediction: dict[str, Any], tier: dict[str, Any]) -> tuple[bool, str]:
    """Whether the prediction fits the tier's usable memory, and the figures that decide it."""
    ram_limit = tier["ram_gb"] * GB * USABLE_RAM
    if prediction["ram_bytes"] > ram_limit:
        return False, f"needs {prediction['ram_bytes'] / GB:.2f} GB RAM > {ram_limit / GB:.2f} GB usable of {tier['ram_gb']} GB"
    if tier["vram_gb"]:
        vram_limit = tier["vram_gb"] * GB * USABLE_VRAM
        if prediction["vram_bytes"] > vram_limit:
            return False, (f"needs {prediction['vram_bytes'] / GB:.2f} GB VRAM > {vram_limit / GB:.2f} GB usable "
                           f"of {tier['vram_gb']} GB")
        return True, f"{prediction['vram_bytes'] / GB:.2f} GB VRAM of {vram_limit / GB:.2f} GB usable"
    return True, f"{prediction['ram_bytes'] / GB:.2f} GB RAM of {ram_limit / GB:.2f} GB usable"
