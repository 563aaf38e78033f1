"""Make the full-precision reference GGUF (F16 or BF16) of a model from its source.

HF-format sources go through ``convert_hf_to_gguf.py`` of the pinned llama.cpp (the one the
toolchain stamp names), so conversion and quantization always come from the same commit. A GGUF
source already of the reference type is copied; any other is dequantized here (gguf-py's own
dequantization) into a reference that keeps every metadata key, tokenizer included. Either way the
source files are first checked against the digests the source step recorded, and the result records
how it was made, because "F16 from a dequantized Q4_1" and "F16 from safetensors" are different
references: quality figures measured against a dequantized file are relative to it, not to the
original weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.atomic import atomic_output, atomic_write_text
from workflow_scripts.checksums import sha256_file, write_sidecar
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_header import (GGUF_HEADER, GGUF_MAGIC, TYPE_AND_COUNT, U32, U64, GGUFHeader, TensorEntry,
                                          encode_string, padded, read_gguf_header)
from workflow_scripts.tool_step import run_logged

# llama.cpp file types (llama_ftype) written into general.file_type of the reference.
FILE_TYPES = {"F16": 1, "BF16": 32}
FLOAT_TYPES = ("F32", "F16", "BF16")


def verify_source_files(manifest_path: Path) -> dict:
    """Re-hash every source file listed in the source manifest; raise on any difference."""
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        path = Path(entry["path"])
        if not path.is_file():
            raise UserError(f"{path}: source file listed in {manifest_path} is missing; re-run the source step")
        if sha256_file(path) != entry["sha256"]:
            raise UserError(
                f"{path}: source file changed since {manifest_path} recorded it "
                "(sha256 differs); delete the manifest to accept the new file"
            )
    return manifest


def convert_hf(convert_script: str | None, hf_dir: Path, outtype: str, out: Path, log: Path) -> dict:
    """Run ``convert_hf_to_gguf.py`` into a temporary name; return what was done."""
    if not convert_script:
        raise UserError(
            "toolchain.build_dir: no convert_hf_to_gguf.py found next to the build; HF-format "
            "sources need the llama.cpp source tree above build/bin"
        )
    with atomic_output(out) as tmp:
        cmd = [sys.executable, convert_script, str(hf_dir), "--outtype", outtype.lower(), "--outfile", str(tmp)]
        run_logged(cmd, log, "convert_hf_to_gguf.py", f"{out} from {hf_dir}", expect=tmp)
    return {
        "method": "convert_hf_to_gguf",
        "convert_script_sha256": sha256_file(convert_script),
        "outtype": outtype,
        "note": f"{outtype} reference converted from the source's HF-format weights",
    }


def reference_tensor_type(tensor: TensorEntry, outtype: str):
    """F32 stays F32, 1-D tensors (norms) become F32 (as convert_hf_to_gguf.py does), the rest ``outtype``."""
    from gguf import GGMLQuantizationType

    if tensor.type == GGMLQuantizationType.F32 or len(tensor.shape) == 1:
        return GGMLQuantizationType.F32
    return GGMLQuantizationType[outtype]


def _record_note(source_types: Counter, outtype: str) -> str:
    quantized = sorted(k for k in source_types if k not in FLOAT_TYPES)
    if quantized:
        return (f"the {outtype} reference is a dequantized {'/'.join(quantized)} GGUF: quality figures are "
                "measured against it, not against the original full-precision weights")
    floats = "/".join(sorted(k for k in source_types if k not in ("F32", outtype)))
    return f"the {outtype} reference is the source's {floats} weights rounded to {outtype}"


def gguf_to_reference(parts: list[Path], dest: Path | str, outtype: str = "f16") -> dict[str, Any]:
    """Write the ``outtype`` (f16/bf16) reference of a GGUF source to ``dest`` atomically; return the
    record. ``parts``: the source file, or the parts of a split one in order (gguf_split.source_parts):
    the reference is then the file that was split, joined with the reference's types.

    A one-file source already of the reference types everywhere is copied byte for byte. Otherwise
    every tensor is dequantized with gguf-py and rounded to the reference type a block of rows at a
    time (read with file reads, written straight to the file), so memory stays at one block of rows
    whatever the size of the model or of its largest tensor (a 128k-token embedding is 2.1 GB as
    float32), and a split source needs no scratch copy. The metadata is the first part's, copied as
    bytes (``_reference_header``); the data is laid out as gguf-py's ``write_tensor_data`` would:
    padded to the alignment before the first tensor and after each one.
    """
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    parts, dest = [Path(p) for p in parts], Path(dest)
    outtype = outtype.upper()
    if outtype not in FILE_TYPES:
        raise UserError(f"outtype {outtype!r}: expected one of {', '.join(FILE_TYPES)}")
    headers = [read_gguf_header(part) for part in parts]
    tensors = [(header, t) for header in headers for t in header.tensors.values()]
    source_types = Counter(t.type.name for _, t in tensors)
    targets = {t.name: reference_tensor_type(t, outtype) for _, t in tensors}
    record: dict[str, Any] = {"source_types": dict(sorted(source_types.items())), "outtype": outtype,
                              "tensors": len(tensors), "source_parts": len(parts)}
    as_is = all(t.type == targets[t.name] for _, t in tensors)
    if as_is and len(parts) == 1:
        with atomic_output(dest) as tmp:
            shutil.copyfile(parts[0], tmp)
        return {**record, "method": "copy", "note": f"the source GGUF is already {outtype}; copied as is"}
    sizes = {t.name: t.n_elements * (4 if targets[t.name] == GGMLQuantizationType.F32 else 2) for _, t in tensors}
    head, alignment = _reference_header(headers[0], [t for _, t in tensors], targets, sizes, outtype)
    with atomic_output(dest) as tmp, open(tmp, "wb") as fout:
        fout.write(head)
        for header, tensor in tensors:
            target, written = targets[tensor.name], 0
            for rows in header.row_blocks(tensor):
                try:
                    values = dequantize(rows, tensor.type).astype(np.float32, copy=False)
                except NotImplementedError:
                    raise UserError(f"{header.path}: tensor {tensor.name} has type {tensor.type.name}, which gguf-py "
                                    "cannot dequantize; expected a GGUF of F32/F16/BF16/Q4_0/Q4_1/Q5_x/Q8_0/K/IQ "
                                    "types, or give the model's HF-format weights instead") from None
                data = values if target == GGMLQuantizationType.F32 else quantize(values, target)
                data.tofile(fout)
                written += data.nbytes
            assert written == sizes[tensor.name], tensor.name
            fout.write(bytes(padded(written, alignment) - written))
    if as_is:
        return {**record, "method": "join", "note": f"the source's {len(parts)} parts are already {outtype}; joined"}
    return {**record, "method": "dequantize", "note": _record_note(source_types, outtype)}


def _reference_header(source: GGUFHeader, tensors: list[TensorEntry], targets: dict, sizes: dict[str, int],
                      outtype: str) -> tuple[bytes, int]:
    """The reference's bytes before its first tensor's data, and its alignment: the GGUF header; the
    source's key/values copied as their bytes, in its order, without decoding them (a 262k-token
    vocabulary is megabytes of strings: gguf-py's reader takes seconds and most of a GB to parse
    them), the split.* keys left out and general.file_type set to the reference's type (added last
    where the source has none); each tensor's info with its reference type and its offset; padding
    to the alignment. The layout is gguf-py's writer's (tests compare the bytes)."""
    from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_VERSION, GGUFValueType

    from workflow_scripts.gguf_split import SPLIT_KEYS

    metadata = {key: raw for key, raw in source.raw_metadata().items() if key not in SPLIT_KEYS}
    if "general.architecture" not in metadata:
        raise UserError(f"{source.path}: no general.architecture key; expected the GGUF of a model")
    metadata["general.file_type"] = (encode_string("general.file_type") + U32.pack(GGUFValueType.UINT32)
                                     + U32.pack(FILE_TYPES[outtype]))
    alignment = source.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    infos, offset = [], 0
    for tensor in tensors:
        infos.append(encode_string(tensor.name) + U32.pack(len(tensor.shape))
                     + b"".join(U64.pack(dim) for dim in tensor.shape)
                     + TYPE_AND_COUNT.pack(targets[tensor.name], offset))
        offset += padded(sizes[tensor.name], alignment)
    head = b"".join([GGUF_HEADER.pack(GGUF_MAGIC, GGUF_VERSION, len(tensors), len(metadata)), *metadata.values(), *infos])
    return head + bytes(padded(len(head), alignment) - len(head)), alignment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--source-manifest", type=Path, required=True)
    parser.add_argument("--outtype", choices=list(FILE_TYPES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    ns = parser.parse_args(argv)
    ns.log.parent.mkdir(parents=True, exist_ok=True)
    manifest = verify_source_files(ns.source_manifest)
    stamp = json.loads(ns.stamp.read_text())
    if manifest["type"] == "gguf":  # the file, or the parts of a split one in order
        record = gguf_to_reference([Path(f["path"]) for f in manifest["files"]], ns.out, ns.outtype.lower())
    else:
        record = convert_hf(stamp.get("convert_script"), Path(manifest["directory"]), ns.outtype, ns.out, ns.log)
    digest = write_sidecar(ns.out)
    record.update({"output": ns.out.name, "sha256": digest, "source_type": manifest["type"],
                   "llama_cpp_commit": stamp.get("llama_cpp_commit")})
    atomic_write_text(ns.record, json.dumps(record, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run_cli(main)
