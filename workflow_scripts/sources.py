"""Model sources: a GGUF file, a local HF-format directory, or a Hub repository at a pinned revision.

This module holds the source manifest and its command line (``python -m workflow_scripts.sources
manifest``): each source yields a manifest with the sha256 of every file used, so the convert step
can prove it reads exactly what was recorded (every part of a split GGUF, every shard of a sharded
checkpoint). The checks live in ``gguf_header``, ``gguf_split`` and ``hf_dir``,
the download in ``hub``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_header import resolve_gguf_path
from workflow_scripts.gguf_split import source_parts
from workflow_scripts.hf_dir import check_hf_source
from workflow_scripts.hub import fetch_hub


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
        parts = source_parts(path)  # [path], or every part of a split GGUF named by its first
        if "path" in source:
            manifest["identity"] = {"path": str(path)}
        else:
            manifest["identity"] = {"package": source["package"], "file": source["file"],
                                    "package_version": _package_version(source["package"])}
        manifest["files"] = [file_entry(part) for part in parts]
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
