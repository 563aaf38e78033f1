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
from workflow_scripts.gguf_header import TensorEntry, check_gguf_file, read_gguf_header
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


def _copy_fields(reader, writer) -> None:
    """Copy every key/value of ``reader`` to ``writer``, in the source's order.

    The virtual ``GGUF.*`` fields (header) are not keys. ``general.architecture`` is added by the
    writer itself, so the dict is re-ordered afterwards to match the source exactly.
    """
    from gguf import GGUFValueType

    order = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        order.append(key)
        if key == "general.architecture":
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
        if key == "general.alignment":  # the writer must pad as the copied key says
            writer.data_alignment = int(field.contents())
    kv = writer.kv_data[0]
    writer.kv_data[0] = {key: kv[key] for key in order if key in kv} | kv


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
    float32), and a split source needs no scratch copy. gguf-py's writer writes the header, the
    metadata (the first part's, without the split.* keys) and tensor infos; the data is laid out as
    its ``write_tensor_data`` would: padded to the alignment before the first tensor and after each
    one, so the bytes are those of writing each tensor whole.
    """
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize

    from workflow_scripts.gguf_split import SPLIT_KEYS

    parts, dest = [Path(p) for p in parts], Path(dest)
    outtype = outtype.upper()
    if outtype not in FILE_TYPES:
        raise UserError(f"outtype {outtype!r}: expected one of {', '.join(FILE_TYPES)}")
    reader = check_gguf_file(parts[0])  # metadata only: its tensors' memory maps are never read
    tensors = [(header, t) for header in map(read_gguf_header, parts) for t in header.tensors.values()]
    source_types = Counter(t.type.name for _, t in tensors)
    targets = {t.name: reference_tensor_type(t, outtype) for _, t in tensors}
    record: dict[str, Any] = {"source_types": dict(sorted(source_types.items())), "outtype": outtype,
                              "tensors": len(tensors), "source_parts": len(parts)}
    as_is = all(t.type == targets[t.name] for _, t in tensors)
    if as_is and len(parts) == 1:
        with atomic_output(dest) as tmp:
            shutil.copyfile(parts[0], tmp)
        return {**record, "method": "copy", "note": f"the source GGUF is already {outtype}; copied as is"}
    arch = reader.fields["general.architecture"].contents()
    with atomic_output(dest) as tmp:
        writer = GGUFWriter(tmp, arch)
        _copy_fields(reader, writer)
        for key in SPLIT_KEYS:
            writer.kv_data[0].pop(key, None)
        for _, tensor in tensors:
            dtype = np.dtype(np.float32 if targets[tensor.name] == GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor_info(tensor.name, _numpy_shape(tensor), dtype,
                                   int(tensor.n_elements) * dtype.itemsize, raw_dtype=targets[tensor.name])
        _set_file_type(writer, FILE_TYPES[outtype])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]  # one file: the writer was given no split limits
        writer.write_padding(fout, fout.tell())
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
            assert written == writer.tensors[0][tensor.name].nbytes, tensor.name
            writer.write_padding(fout, written)
        writer.close()
    if as_is:
        return {**record, "method": "join", "note": f"the source's {len(parts)} parts are already {outtype}; joined"}
    return {**record, "method": "dequantize", "note": _record_note(source_types, outtype)}


def _numpy_shape(tensor: TensorEntry) -> tuple[int, ...]:
    """gguf-py stores shapes innermost-first; numpy order is the reverse."""
    return tuple(int(d) for d in reversed(tensor.shape))


def _set_file_type(writer, value: int) -> None:
    """Point general.file_type at the reference type (the copied value named the source's type)."""
    from gguf import GGUFValueType

    for kv in writer.kv_data:
        if "general.file_type" in kv:
            kv["general.file_type"].value = value
            return
    writer.add_key_value("general.file_type", value, GGUFValueType.UINT32)


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
