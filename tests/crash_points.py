"""Kill the workflow (Snakemake and every process under it) at chosen stages, then resume it.

Shared by tests/test_crash_resume.py and benchmarks/crash_resume.py (more kill points).
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil

from tests.workflow_run import ROOT, SNAKEMAKE, job_timeline, snakemake
from workflow_scripts.checksums import sha256_file

# Each stage with the log directories of its jobs, in the order the DAG runs them (validation here:
# the per-quant jobs, which wait for quantize; the reference's run beside imatrix). An attempt aimed
# at a stage is killed at a random moment after a job of that stage, or of a later one if that stage
# is already done, has started.
STAGES = {
    "convert": ("convert",),
    "imatrix": ("imatrix",),
    "quantize": ("quantize",),
    "validate": ("validate", "tensor_error"),
}
CORES = 2


def job_starts(log: str) -> Counter:
    """Jobs started per rule, from Snakemake's job log."""
    return Counter(rule for kind, _, rule, _ in job_timeline(log) if kind == "start")


def _stage_started(results: Path, target: str, since: float) -> str | None:
    """The stage, ``target`` or a later one, of which a job has started since ``since``."""
    names = list(STAGES)
    for stage in names[names.index(target):]:
        for name in STAGES[stage]:
            logs = results / "logs" / name
            if logs.is_dir() and any(p.stat().st_mtime >= since for p in logs.iterdir()):
                return stage
    return None


def _run_and_kill(workdir: Path, config: Path, target: str, delay: float) -> tuple[str | None, str]:
    """Start the workflow; once a job of ``target`` (or a later stage) has started, wait ``delay`` s
    and SIGKILL the whole process tree. Returns (the stage hit, or None if the run finished first;
    Snakemake's log up to then)."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", str(CORES)]
    started = time.time()
    with open(workdir / "attempt.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        while proc.poll() is None:
            hit = _stage_started(workdir / "results", target, started)
            if hit:
                time.sleep(delay)
                tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
                for pid in tree:
                    try:
                        psutil.Process(pid).kill()
                    except psutil.NoSuchProcess:
                        pass
                proc.wait()
                return hit, (workdir / "attempt.log").read_text()
            time.sleep(0.02)
    return None, (workdir / "attempt.log").read_text()


def finished_files_are_whole(results: Path) -> None:
    """Every file with a checksum sidecar matches it; a cut-off output only ever has a .partial name."""
    for sidecar in results.rglob("*.sha256"):
        target = sidecar.with_suffix("")
        if target.exists():
            assert sidecar.read_text().split()[0] == sha256_file(target), f"{target} does not match its sidecar"


def crash_and_resume(workdir: Path, config: Path, attempts: list[str], seed: int) -> tuple[Counter, Counter]:
    """Aim one killed run at each stage in ``attempts`` (random delays from ``seed``), checking the
    finished files after each kill and clearing the stale lock as a user would (README:
    troubleshooting); then run to the end. Returns (kills per stage hit, jobs started per rule)."""
    rng = random.Random(seed)
    hits, starts = Counter(), Counter()
    for target in attempts:
        hit, log = _run_and_kill(workdir, config, target, rng.uniform(0.0, 0.8))
        starts += job_starts(log)
        if hit is None:
            break  # nothing of that stage or later was left: the run finished
        hits[hit] += 1
        finished_files_are_whole(workdir / "results")
        snakemake(workdir, config, "--unlock")
    starts += job_starts(snakemake(workdir, config).stderr)
    return hits, starts
