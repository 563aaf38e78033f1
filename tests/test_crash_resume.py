"""SIGKILL the workflow (Snakemake and every process under it) in the middle of convert, imatrix,
quantize and validate, again and again; each time resume. The final files must be the bytes a
clean run makes, no cut-off file may ever pass for a finished one, and a resumed run redoes at
most the jobs that were running when it was killed."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from conftest import CALIBRATION
from workflow_run import SNAKEMAKE, ROOT, snakemake, write_config
from workflow_scripts.checksums import sha256_file

pytestmark = pytest.mark.toolchain

# Each stage with the log directories of its jobs, in the order the DAG runs them (validation here:
# the per-quant jobs, which wait for quantize; the reference's run beside imatrix). An attempt aimed
# at a stage is killed at a random moment after a job of that stage, or of a later one if that stage
# is already done, has started; three attempts are aimed at each stage.
STAGES = {
    "convert": ("convert",),
    "imatrix": ("imatrix",),
    "quantize": ("quantize",),
    "validate": ("validate", "tensor_error"),
}
ATTEMPTS = [stage for stage in STAGES for _ in range(3)]
CORES = 2


def _config(workdir: Path, tiny_hf: Path) -> Path:
    return write_config(workdir, {
        "calibration": {"text": str(CALIBRATION), "chunks": 4, "ctx": 128},
        "quants": ["Q8_0", "Q4_K_M", "Q5_0"],
        "tiers": [{"name": "laptop-8gb", "threads": 2, "ram_gb": 8, "latency_budget_s": 10}],
        "models": [{"name": "tiny", "source": {"type": "local", "path": str(tiny_hf)}}],
    })


def _job_starts(log: str) -> Counter:
    return Counter(line.split()[-1].rstrip(":") for line in log.splitlines()
                   if line.startswith(("rule ", "localrule ", "checkpoint ")) and line.endswith(":"))


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
    and SIGKILL the whole process tree. Returns (the stage hit or None if the run finished first,
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


def _finished_files_are_whole(results: Path) -> None:
    """Every file with a checksum sidecar matches it; a cut-off output only ever has a .partial name."""
    for sidecar in results.rglob("*.sha256"):
        target = sidecar.with_suffix("")
        if target.exists():
            assert sidecar.read_text().split()[0] == sha256_file(target), f"{target} does not match its sidecar"


def test_killed_runs_resume_to_the_clean_bytes(tiny_hf, toolchain_root, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    clean_run = snakemake(clean, _config(clean, tiny_hf))
    clean_starts = _job_starts(clean_run.stderr)
    clean_sums = (clean / "results/tiny/SHA256SUMS").read_text()

    work = tmp_path / "killed"
    work.mkdir()
    config = _config(work, tiny_hf)
    rng = random.Random(20261203)
    starts, hits = Counter(), Counter()
    for target in ATTEMPTS:
        hit, log = _run_and_kill(work, config, target, rng.uniform(0.0, 0.8))
        starts += _job_starts(log)
        if hit is None:
            break  # nothing of that stage or later was left: the run finished
        hits[hit] += 1
        _finished_files_are_whole(work / "results")
        # After a crash Snakemake's lock stays behind; the user clears it (README: troubleshooting).
        snakemake(work, config, "--unlock")
    kills = sum(hits.values())
    assert kills >= 10 and set(hits) == set(STAGES), f"kills per stage: {dict(hits)}"
    final = snakemake(work, config)
    starts += _job_starts(final.stderr)

    assert (work / "results/tiny/SHA256SUMS").read_text() == clean_sums
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=work / "results/tiny", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert not list((work / "results").rglob("*.partial"))
    # Finished jobs are not redone: each kill costs at most the jobs that were running (≤ CORES).
    redone = sum(starts.values()) - sum(clean_starts.values())
    assert 0 <= redone <= CORES * kills, (starts, clean_starts)
    print(f"kills per stage {dict(hits)}; {redone} jobs redone in all; per rule: {dict(starts - clean_starts)}")
