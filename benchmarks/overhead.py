"""What does the workflow cost on top of the tools it drives?

Runs the default job through Snakemake in one directory (timed), takes the shell command of every
job from Snakemake's log in the order they ran, and runs exactly those commands as a plain bash
script in a second, empty directory (timed). Prints both wall times and their ratio, whether both
runs made the same GGUF bytes (SHA256SUMS), how many times each tool ran per model, and how long a
second Snakemake run with nothing stale takes. A measurement, not a gate: it exits 0 unless
something crashed.

    .venv/bin/python -m benchmarks.overhead --work /tmp/overhead [--cores 2]

Another job than the default: ``--configfile`` (e.g. a scenario's config.yaml) and ``--link`` for
each file or directory its config names relative to the working directory (linked into both runs'
directories under its own name), e.g. the large-vocabulary scenario:

    .venv/bin/python -m benchmarks.overhead --work /tmp/overhead-gemma \
        --configfile tests/scenarios/gemma3-270m/config.yaml --link /tmp/gemma-3-270m

Snakemake may run independent jobs side by side where the script runs them one after another, so
a ratio below 1 is possible; run with --cores 1 for a strictly sequential comparison.
"""

from __future__ import annotations

import argparse
import collections
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench", "workflow_scripts.convert")


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed; see {log}")
    return time.perf_counter() - started


def shell_commands(log_text: str) -> list[str]:
    """Every job's shell command, in the order Snakemake started them."""
    return [m.group(1) for m in re.finditer(r"^Shell command: (.*)$", log_text, re.M) if m.group(1) != "None"]


def directories(command: str) -> set[str]:
    """The directories a command writes into (Snakemake creates them before a job starts)."""
    return {str(Path(word).parent) for word in shlex.split(command) if word.startswith("results/")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--configfile", type=Path, help="a config over the default one (default: none)")
    parser.add_argument("--link", type=Path, action="append", default=[],
                        help="a file or directory the config names, linked into both working directories")
    ns = parser.parse_args()
    shutil.rmtree(ns.work, ignore_errors=True)
    flow, plain = ns.work / "workflow", ns.work / "script"
    flow.mkdir(parents=True)
    plain.mkdir()
    for path in ns.link:
        for where in (flow, plain):
            (where / path.name).symlink_to(path.resolve())
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", str(ns.cores),
                 "--printshellcmds"] + (["--configfile", str(ns.configfile.resolve())] if ns.configfile else [])
    workflow_s = timed(snakemake, flow, ns.work / "workflow.log")
    commands = shell_commands((ns.work / "workflow.log").read_text())
    script = plain / "run.sh"
    script.write_text("set -euo pipefail\n" + f"export PATH={Path(sys.executable).parent}:$PATH\n"
                      + "".join(f"mkdir -p . {' '.join(sorted(directories(c)))}\n{c}\n" for c in commands))
    script_s = timed(["bash", str(script)], plain, ns.work / "script.log")
    noop_s = timed(snakemake, flow, ns.work / "noop.log")
    noop_jobs = (ns.work / "noop.log").read_text().count("Shell command:")
    same = [(flow / p).read_text() == (plain / p).read_text() for p in sorted(
        str(q.relative_to(flow)) for q in (flow / "results").glob("*/SHA256SUMS"))]
    calls = collections.Counter(tool for c in commands for tool in TOOLS if tool in c)
    print(f"workflow (snakemake --cores {ns.cores}): {workflow_s:.1f} s, {len(commands)} jobs")
    print(f"same commands as a bash script:        {script_s:.1f} s")
    print(f"ratio workflow / script:               {workflow_s / script_s:.3f}")
    print(f"same SHA256SUMS in both directories:   {all(same) and bool(same)}")
    print(f"no-op re-run:                          {noop_s:.1f} s, {noop_jobs} jobs")
    print("tool runs: " + ", ".join(f"{tool} {n}" for tool, n in sorted(calls.items())))


if __name__ == "__main__":
    main()
