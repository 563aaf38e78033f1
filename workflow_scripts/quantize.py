"""One quantize job: the recipe checked against the reference, llama-quantize, the recipe check.

Before the tool runs, the reference's checksum is verified and explicit output/embedding types
are checked against its row length (llama-quantize would abort mid-file). The tool writes under a
temporary name (tool_step); the census then reads the finished file's tensor types against the
recipe and fails the job on an override that did not take effect.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_census import census, preflight, recipe_from_args
from workflow_scripts.tool_step import run_tool


def quantize(stamp: Path, reference: Path, build: dict, threads: int, out: Path, census_out: Path, log: Path,
             verify_paths: list[Path]) -> dict:
    """Make ``out`` as ``build`` says (``type``, ``recipe``: the type overrides, ``tensor_type_file``:
    an auto build's chosen types, ``argv``: llama-quantize's arguments with ``{out}`` for the
    output) and write its census, which checks the file's overrides like any others."""
    for path in verify_paths:
        verify(path)
    recipe = recipe_from_args(build["type"], [*build["recipe"], *tensor_type_file_args(build.get("tensor_type_file"))])
    preflight(reference, recipe)
    log.unlink(missing_ok=True)  # the census reads the fallback reasons from this run's log only
    run_tool(stamp, "llama-quantize", [*build["argv"], str(threads)], out, log, [])
    result = census(out, recipe, log.read_text(errors="replace"))
    atomic_write_text(census_out, json.dumps(result, indent=2) + "\n")
    with open(log, "a") as handle:
        handle.write(f"{out}: {result['bits_per_weight']} bits per weight, {result['classes']}\n")
    return result


def tensor_type_file_args(path: str | None) -> list[str]:
    """The lines of a --tensor-type-file as --tensor-type options (none without a file)."""
    if path is None:
        return []
    lines = Path(path).read_text().split()
    if not lines:
        raise UserError(f"{path}: no PATTERN=TYPE lines; expected the auto recipe's tensor types")
    return [arg for line in lines for arg in ("--tensor-type", line)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True, help="the GGUF quantized from")
    parser.add_argument("--build-json", required=True, help="the build: type, recipe, llama-quantize arguments")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--verify", type=Path, action="append", default=[],
                        help="input whose .sha256 sidecar must match before anything runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--census", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    ns = parser.parse_args(argv)
    quantize(ns.stamp, ns.reference, json.loads(ns.build_json), ns.threads, ns.out, ns.census, ns.log, ns.verify)


if __name__ == "__main__":
    run_cli(main)
