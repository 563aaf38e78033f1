"""Model sources written by tests: the smallest that pass the workflow's header checks (for tests
that only plan), an HF-format directory of chosen files, and a small real GGUF."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# A GGUF v3 header with no tensors and no keys.
EMPTY_GGUF = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)


def safetensors_bytes(tensors: dict[str, int]) -> bytes:
    """A safetensors file with one U8 tensor of each given length (zeros)."""
    header, offset = {}, 0
    for name, length in tensors.items():
        header[name] = {"dtype": "U8", "shape": [length], "data_offsets": [offset, offset + length]}
        offset += length
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(offset)


LLAMA_CONFIG = '{"architectures": ["LlamaForCausalLM"]}'
"""config.json of the stub HF directories: as little as the converter needs to pick its class."""


def write_hf_dir(path: Path) -> Path:
    """An HF-format directory: config.json and one small safetensors file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(LLAMA_CONFIG)
    (path / "model.safetensors").write_bytes(safetensors_bytes({"w": 16}))
    return path


def hf_dir_of(tmp_path: Path, *files: str) -> Path:
    """``tmp_path/m`` holding ``files``: a small safetensors file, a Llama's architectures for
    config.json, ``{}`` for other JSON, ``x`` otherwise."""
    d = tmp_path / "m"
    d.mkdir()
    for name in files:
        if name.endswith(".safetensors"):
            (d / name).write_bytes(safetensors_bytes({"w": 4}))
        else:
            (d / name).write_text(LLAMA_CONFIG if name == "config.json" else "{}" if name.endswith(".json") else "x")
    return d


def small_gguf(path: Path, weight_type: str = "Q8_0", chat_template: str | None = None) -> Path:
    """A llama-shaped GGUF with tokenizer arrays, a quantized 2-D weight, F32 2-D and 1-D tensors.

    ``weight_type`` F16 makes a file that already is an F16 reference; ``chat_template`` is written
    as ``tokenizer.chat_template``.
    """
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    writer = GGUFWriter(path, "llama")
    writer.add_name("small test model")
    writer.add_file_type(7 if weight_type == "Q8_0" else 1)
    writer.add_context_length(64)
    writer.add_key_value("llama.rope.freq_base", 10000.0, GGUFValueType.FLOAT32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<s>", "a", "b", "ab", "Ġa"])
    writer.add_token_scores([0.0, -1.0, -2.0, -3.0, -4.5])
    writer.add_token_types([3, 1, 1, 1, 1])
    writer.add_token_merges(["a b", "Ġ a"])
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    qtype = GGMLQuantizationType[weight_type]
    weight = rng.standard_normal((8, 64)).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", quantize(weight, qtype), raw_dtype=qtype)
    writer.add_tensor("token_embd.weight", rng.standard_normal((5, 32)).astype(np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
