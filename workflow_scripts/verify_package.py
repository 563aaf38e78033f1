"""Check a package as its downloader would, or rebuild one of its files and compare.

``python -m workflow_scripts.verify_package DIR``: every file listed in SHA256SUMS exists and
matches, nothing is there that is not listed, and the manifest's digests and provenance subjects
agree with the files. ``--reproduce FILE`` (run in the workflow's working directory) re-runs the
file's recorded llama-quantize command on the recorded inputs, after checking their digests, and
compares the sha256 of the result with the published one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from workflow_scripts.atomic import partial_path
from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.tool_step import tool_path

PUBLISH_RECORD = "published.json"
"""Written into the package by publishing (workflow_scripts.publish): a record of the upload, not
part of the package (never uploaded, not in SHA256SUMS)."""


def read_sums(directory: Path) -> dict[str, str]:
    """``SHA256SUMS`` of a package as {file name: digest}."""
    path = directory / "SHA256SUMS"
    if not path.is_file():
        raise UserError(f"{path}: missing; expected the package's checksum list")
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise UserError(f"{path}: line {number}: expected '<sha256>  <file>', got {line[:80]!r}")
        sums[parts[1].lstrip("*")] = parts[0]
    return sums


def intoto_name(model: str) -> str:
    """The package's provenance statements as a file of their own, ``{model}.intoto.jsonl``: a
    downloader's in-toto or SLSA tooling reads it without knowing this project's manifest."""
    return f"{model}.intoto.jsonl"


def intoto_lines(manifest: dict) -> str:
    """One line per shipped GGUF (manifest order): its in-toto statement, unsigned, as in the manifest."""
    return "".join(json.dumps(entry["provenance"], sort_keys=True, separators=(",", ":")) + "\n"
                   for entry in manifest["files"])


def verify_package(directory: Path) -> dict:
    """Raise UserError naming the first file that does not match; return the manifest."""
    sums = read_sums(directory)
    record = {PUBLISH_RECORD, partial_path(PUBLISH_RECORD).name}
    present = {p.name for p in directory.iterdir() if p.is_file()} - {"SHA256SUMS", *record}
    if present - set(sums):
        raise UserError(f"{directory}: {', '.join(sorted(present - set(sums)))} not listed in SHA256SUMS; "
                        "expected every file of the package to be listed")
    for name, digest in sorted(sums.items()):
        path = directory / name
        if not path.is_file():
            raise UserError(f"{path}: listed in SHA256SUMS but missing")
        if sha256_file(path) != digest:
            raise UserError(f"{path}: sha256 does not match SHA256SUMS; the file was changed or damaged")
    manifest = json.loads((directory / "manifest.json").read_text())
    listed = {manifest["imatrix"]["file"]} if manifest["imatrix"] else set()
    for entry in manifest["files"]:
        published = entry.get("parts") or [{"file": entry["file"], "sha256": entry["sha256"]}]
        subjects = {s["name"]: s["digest"]["sha256"] for s in entry["provenance"]["subject"]}
        for item in published:
            if sums.get(item["file"]) != item["sha256"] or subjects.get(item["file"]) != item["sha256"]:
                raise UserError(f"{directory / 'manifest.json'}: files[{entry['file']}]: digest or provenance subject "
                                f"of {item['file']} disagrees with SHA256SUMS")
            listed.add(item["file"])
    ggufs = {name for name in sums if name.endswith(".gguf")}
    if ggufs != listed:
        raise UserError(f"{directory / 'manifest.json'}: lists {sorted(listed)} but the package holds {sorted(ggufs)}")
    statements = directory / intoto_name(manifest["model"])
    if not statements.is_file() or statements.read_text() != intoto_lines(manifest):
        raise UserError(f"{statements}: missing or not the manifest's provenance statements; expected one line per "
                        "file of manifest.json, each its files[].provenance")
    return manifest


def reproduce(directory: Path, name: str, stamp: Path) -> tuple[str, str]:
    """Re-run the recorded command for ``name``; return (published, rebuilt) sha256."""
    manifest = verify_package(directory)
    entry = next((e for e in manifest["files"] if e["file"] == name), None)
    if entry is None:
        raise UserError(f"{directory / 'manifest.json'}: no file {name!r}; expected one of "
                        f"{', '.join(e['file'] for e in manifest['files'])}")
    tool = tool_path(stamp, "llama-quantize")
    for dep in entry["provenance"]["predicate"]["buildDefinition"]["resolvedDependencies"]:
        if dep["name"] == "llama-quantize":
            if sha256_file(tool) != dep["digest"]["sha256"]:
                raise UserError(f"{tool}: not the llama-quantize {name} was made with (llama.cpp "
                                f"{(dep['annotations']['llama_cpp_commit'] or 'unknown')[:12]}); "
                                f"expected sha256 {dep['digest']['sha256']}")
            continue
        if not Path(dep["name"]).is_file():
            raise UserError(f"{dep['name']}: input of {name} not found; run from the workflow's working directory")
        if sha256_file(dep["name"]) != dep["digest"]["sha256"]:
            raise UserError(f"{dep['name']}: sha256 differs from the one {name} was made from")
    # Rebuilt beside the file it is made from (the reference: the workflow's results/, whose disk was
    # planned), not in the system's temporary directory, often a small or memory-backed file system
    # that a quant of a large model does not fit.
    source = Path(entry["command"][entry["command"].index(name) - 1])
    with tempfile.TemporaryDirectory(prefix=".reproduce-", dir=source.parent) as tmp:
        out = Path(tmp) / name
        command = [str(tool)] + [str(out) if a == name else a for a in entry["command"][1:]]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"llama-quantize failed while reproducing {name}: {proc.stderr[-2000:]}")
        return entry["sha256"], sha256_file(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--reproduce", metavar="FILE", help="rebuild this GGUF of the package and compare")
    parser.add_argument("--stamp", type=Path, default=Path("results/toolchain/llama.cpp.json"),
                        help="toolchain stamp naming the llama.cpp build to use")
    ns = parser.parse_args(argv)
    if ns.reproduce:
        published, rebuilt = reproduce(ns.directory, ns.reproduce, ns.stamp)
        if published != rebuilt:
            raise UserError(f"{ns.reproduce}: rebuilt sha256 {rebuilt} differs from the published {published}")
        print(f"{ns.reproduce}: reproduced, sha256 {rebuilt}")
        return
    manifest = verify_package(ns.directory)
    print(f"{ns.directory}: {len(manifest['files'])} GGUF files and the manifest match SHA256SUMS and the provenance")


if __name__ == "__main__":
    run_cli(main)
