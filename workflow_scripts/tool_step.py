"""Run one pinned llama.cpp tool as a workflow step: verify inputs, write atomically, checksum.

Every heavy step has the same shape: the GGUFs it reads must match their ``.sha256`` sidecars,
the tool writes under a temporary name (``{out}`` in its arguments), and only a run that exited 0
is renamed to the final name and given its own sidecar. A failing tool leaves no output and its
last log lines become the job's error message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from workflow_scripts.atomic import partial_path
from workflow_scripts.checksums import verify, write_sidecar
from workflow_scripts.disk_plan import check_logits_file
from workflow_scripts.errors import DISK_FULL_ERRNOS, UserError, disk_full, run_cli
from workflow_scripts.gguf_header import read_gguf_header

TAIL_LINES = 15
DISK_FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk was full


def tool_path(stamp: Path | str, tool: str) -> Path:
    """Absolute path of ``tool`` in the build the stamp describes."""
    info = json.loads(Path(stamp).read_text())
    return Path(info["bin_dir"]) / tool


def log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def run_logged(cmd: list[str], log: Path, name: str, making: str, expect: Path | None = None) -> None:
    """Run ``cmd`` with its output appended to ``log``; on failure raise with the log's last lines.

    ``expect`` is a file the command must have written: a tool that exits 0 without it failed too.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write("+ " + " ".join(cmd) + "\n")
        handle.flush()
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or (expect is not None and not expect.exists()):
        raise UserError(f"{name} {failure(proc.returncode)} while making {making}; last lines of {log}:\n{log_tail(log)}")


def failure(returncode: int) -> str:
    """How a tool ended, in words: a negative status is the signal that killed it (the
    out-of-memory killer sends SIGKILL), which a user should not read as an exit code."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}" if returncode else "wrote no output"


def disk_full_reason(tmp: Path, log: Path) -> str | None:
    """Why a failed tool looks like a full disk (its log says so, or the file system of its output
    has under 1 MiB left while the partial output is still there), else None."""
    if "No space left on device" in log_tail(log):
        return "its log says no space left on device"
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        return None
    return f"{free} bytes left on the file system" if free < DISK_FULL_BYTES else None


def run_tool(stamp: Path, tool: str, args: list[str], output: Path, log: Path,
             verify_paths: list[Path]) -> float:
    """Run ``tool`` with ``{out}`` bound to a temporary name; return its wall time in seconds."""
    for path in verify_paths:
        verify(path)
    tmp = partial_path(output)
    tmp.unlink(missing_ok=True)
    cmd = [str(tool_path(stamp, tool))] + [a.replace("{out}", str(tmp)) for a in args]
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        run_logged(cmd, log, tool, str(output), expect=tmp)
        # llama.cpp's writers do not check their writes: on a full disk a tool exits 0 with a
        # cut-short file. Where the disk is (nearly) full, the output must be as long as it says.
        if disk_full_reason(tmp, log):
            if output.suffix == ".gguf":
                read_gguf_header(tmp)
            elif output.suffix == ".logits":
                check_logits_file(tmp)
    except UserError as err:
        full = disk_full_reason(tmp, log)
        tmp.unlink(missing_ok=True)
        if full:
            raise UserError(f"{disk_full(output)} ({tool}: {full})") from None
        raise err
    except OSError as err:  # the log itself could not be written
        tmp.unlink(missing_ok=True)
        if err.errno not in DISK_FULL_ERRNOS:
            raise
        raise UserError(f"{disk_full(output)} (writing its log {log})") from None
    os.replace(tmp, output)
    write_sidecar(output)
    return time.monotonic() - started


def step_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, str, list[str]]:
    """A step's command line, ``OPTIONS -- TOOL ARGS...``: the options (``parser``'s own and the
    step's ``--stamp``, ``--output``, ``--log``, ``--verify``), the tool, its arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise UserError(f"{parser.prog}: expected '-- TOOL ARGS...' after the options")
    split = argv.index("--")
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--verify", type=Path, action="append", default=[],
                        help="input whose .sha256 sidecar must match before the tool runs")
    ns = parser.parse_args(argv[:split])
    tool, *args = argv[split + 1:]
    return ns, tool, args


def main(argv: list[str] | None = None) -> None:
    ns, tool, args = step_arguments(argparse.ArgumentParser(prog="tool_step", description=__doc__.splitlines()[0]), argv)
    elapsed = run_tool(ns.stamp, tool, args, ns.output, ns.log, ns.verify)
    with open(ns.log, "a") as handle:
        handle.write(f"{tool} finished in {elapsed:.1f} s -> {ns.output}\n")


if __name__ == "__main__":
    run_cli(main)
