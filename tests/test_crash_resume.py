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

# Pipeline order: each stage is killed KILLS_PER_STAGE times, at a random moment after one of its
# jobs started, before the next stage is targeted.
STAGES = ("convert", "imatrix", "quantize", "validate")
KILLS_PER_STAGE = 3
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


def _run_and_kill(workdir: Path, config: Path, stage: str, delay: float) -> tuple[bool, str]:
    """Start the workflow; once a job of ``stage`` has started, wait ``delay`` s and SIGKILL the
    whole process tree. Returns (killed, Snakemake's log up to then)."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", str(CORES)]
    logs = workdir / "results" / "logs" / stage
    started = time.time()
    with open(workdir / "attempt.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        while proc.poll() is None:
            if logs.is_dir() and any(p.stat().st_mtime >= started for p in logs.iterdir()):
                time.sleep(delay)
                tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
                for pid in tree:
                    try:
                        psutil.Process(pid).kill()
                    except psutil.NoSuchProcess:
                        pass
                proc.wait()
                return True, (workdir / "attempt.log").read_text()
            time.sleep(0.02)
    return False, (workdir / "attempt.log").read_text()


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
    starts, kills = Counter(), 0
    for stage in STAGES:
        for _ in range(KILLS_PER_STAGE):
            killed, log = _run_and_kill(work, config, stage, rng.uniform(0.0, 1.5))
            starts += _job_starts(log)
            if not killed:
                break  # the stage had nothing left to run: the run finished
            kills += 1
            _finished_files_are_whole(work / "results")
            # After a crash Snakemake's lock stays behind; the user clears it (README: troubleshooting).
            snakemake(work, config, "--unlock")
    assert kills >= 10, f"only {kills} kills landed"
    final = snakemake(work, config)
    starts += _job_starts(final.stderr)

    assert (work / "results/tiny/SHA256SUMS").read_text() == clean_sums
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=work / "results/tiny", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert not list((work / "results").rglob("*.partial"))
    # Finished jobs are not redone: each kill costs at most the jobs that were running (≤ CORES).
    redone = sum(starts.values()) - sum(clean_starts.values())
    assert 0 <= redone <= CORES * kills, (starts, clean_starts)
    print(f"{kills} kills; {redone} jobs redone in all; per rule: {dict(starts - clean_starts)}")
