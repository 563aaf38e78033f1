"""The smallest model sources that pass the workflow's header checks, for tests that only plan."""

from __future__ import annotations

import json
import struct
from pathlib import Path

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


def write_hf_dir(path: Path) -> Path:
    """An HF-format directory: config.json and one small safetensors file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (path / "model.safetensors").write_bytes(safetensors_bytes({"w": 16}))
    return path
