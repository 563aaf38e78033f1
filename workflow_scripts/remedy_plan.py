"""A fallback remedy's planned tensor types, before anything is quantized: whether it would change a
single tensor's actual type against the build it follows.

A remedy asks for higher types on some tensors, but what a tensor gets also depends on its row
length: on 640-wide rows every K-quant falls back to a 32-value-block type (Q6_K → Q8_0), so a
remedy raising attn_v to Q8_0 over a Q6_K build changes nothing, and building it would only repeat
the failed file under another name. ``llama-quantize --dry-run`` with the remedy's own arguments
prints every tensor's actual type (and writes nothing) in well under a second; the plan compares
that with the tensor types of the build before it (its census, or its own plan when that remedy was
skipped too) and records which tensors change. The fallback chain skips a remedy that changes none
(workflow_scripts/fallback.py).

    python -m workflow_scripts.remedy_plan --stamp llama.cpp.json --build-json '{"argv": [...], ...}'
        --previous PREVIOUS.census.json|PREVIOUS.plan.json --name BUILD --log LOG --out BUILD.plan.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.tool_step import run_logged, tool_path

# "[  12/ 272] blk.0.attn_v.weight - [   576,    192,      1,      1], type =    f16, size =     0.21 MiB ->
# 0.11 MiB (q8_0)"; a tensor left as it is (a norm) has no "->" part.
_TENSOR_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+-\s+\[[^\]]*\],\s+type\s+=\s+(\w+),\s+size\s+=[^(\n]*?"
                          r"(?:->\s+[\d.]+\s+\w+\s+\((\w+)\))?\s*$", re.MULTILINE)


def parse_dry_run(text: str) -> dict[str, str]:
    """Every tensor's type after quantizing, from llama-quantize --dry-run's output: the type after
    "->" where it is quantized, else its type as it is; ggml's names upper-cased as the census writes
    them (q4_K → Q4_K)."""
    return {name: (after or before).upper() for name, before, after in _TENSOR_LINE.findall(text)}


def previous_types(path: Path) -> dict[str, str]:
    """The tensor types of the build a remedy follows: a census' ``tensor_types`` or a plan's ``types``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read the previous build's tensor types ({err}); expected the complete "
                        "output of its quantize or remedy-plan job") from None
    types = data.get("tensor_types", data.get("types")) if isinstance(data, dict) else None
    if not isinstance(types, dict) or not types:
        raise UserError(f"{path}: expected a census with 'tensor_types' or a remedy plan with 'types'")
    return types


def compare(planned: dict[str, str], before: dict[str, str]) -> dict[str, list[str]]:
    """Per tensor whose type changes: [type before, planned type]. UserError when the two do not name
    the same tensors (the plan and the build before it were not made from one reference)."""
    if set(planned) != set(before):
        odd = sorted(set(planned).symmetric_difference(before))
        raise UserError(f"the dry run names other tensors than the build before it ({', '.join(odd[:5])}); expected "
                        "both made from the same reference")
    return {name: [before[name], ttype] for name, ttype in planned.items() if before[name] != ttype}


def plan(stamp: Path, build: dict[str, Any], name: str, previous: Path, out: Path, log: Path,
         verify_paths: list[Path]) -> dict[str, Any]:
    """Dry-run the remedy ``build`` (its llama-quantize ``argv``, ``{out}`` for the output, which a dry
    run does not write), compare with ``previous``'s types, write the plan to ``out``."""
    for path in verify_paths:
        verify(path)
    before = previous_types(previous)
    argv = [str(out.with_name(out.name + ".dry-run.gguf")) if arg == "{out}" else arg for arg in build["argv"]]
    log.unlink(missing_ok=True)  # parsed: this run's output only
    run_logged([str(tool_path(stamp, "llama-quantize")), "--dry-run", *argv], log, "llama-quantize",
               f"the dry run of {name}")
    planned = parse_dry_run(log.read_text(errors="replace"))
    if not planned:
        raise UserError(f"{log}: llama-quantize --dry-run listed no tensors; expected one line per tensor")
    changed = compare(planned, before)
    result = {"build": name, "previous": str(previous), "types": planned, "changed": changed,
              "unchanged": not changed}
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    summary = (f"{name}: changes no tensor's type against {previous.name}; it will not be built" if not changed
               else f"{name}: changes {len(changed)} tensor type(s) against {previous.name}")
    with open(log, "a") as handle:
        handle.write(summary + "\n")
    print(summary)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, required=True, help="the toolchain's stamp (llama.cpp.json)")
    parser.add_argument("--build-json", required=True, help="the remedy build: its llama-quantize argv")
    parser.add_argument("--name", required=True, help="the remedy build's name")
    parser.add_argument("--previous", type=Path, required=True, help="census or plan of the build it follows")
    parser.add_argument("--verify", type=Path, action="append", default=[],
                        help="input whose .sha256 sidecar must match before anything runs")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    plan(ns.stamp, json.loads(ns.build_json), ns.name, ns.previous, ns.out, ns.log, ns.verify)


if __name__ == "__main__":
    run_cli(main)
