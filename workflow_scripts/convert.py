"""Make the full-precision reference GGUF (F16 or BF16) of a model from its source.

HF-format sources go through ``convert_hf_to_gguf.py`` of the pinned llama.cpp (the one the
toolchain stamp names), so conversion and quantization always come from the same commit. GGUF
sources are copied or dequantized (``workflow_scripts.sources``). Either way the source files are
first checked against the digests the source step recorded, and the result records how it was
made, because "F16 from a dequantized Q4_1" and "F16 from safetensors" are different references.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workflow_scripts.atomic import atomic_output, atomic_write_text
from workflow_scripts.checksums import sha256_file, write_sidecar
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.tool_step import run_logged


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--source-manifest", type=Path, required=True)
    parser.add_argument("--outtype", choices=["F16", "BF16"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    ns = parser.parse_args(argv)
    ns.log.parent.mkdir(parents=True, exist_ok=True)
    manifest = verify_source_files(ns.source_manifest)
    stamp = json.loads(ns.stamp.read_text())
    if manifest["type"] == "gguf":
        from workflow_scripts.sources import gguf_to_reference

        record = gguf_to_reference(Path(manifest["files"][0]["path"]), ns.out, ns.outtype.lower())
    else:
        record = convert_hf(stamp.get("convert_script"), Path(manifest["directory"]), ns.outtype, ns.out, ns.log)
    digest = write_sidecar(ns.out)
    record.update({"output": ns.out.name, "sha256": digest, "source_type": manifest["type"],
                   "llama_cpp_commit": stamp.get("llama_cpp_commit")})
    atomic_write_text(ns.record, json.dumps(record, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run_cli(main)
