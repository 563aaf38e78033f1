"""SIGKILL the workflow (Snakemake and every process under it) in the middle of convert, imatrix,
quantize and validate, three times each; each time resume. The final files must be the bytes a
clean run makes, no cut-off file may ever pass for a finished one, and a resumed run redoes at
most the jobs that were running when it was killed."""

from __future__ import annotations

import subprocess

import pytest

from crash_points import CORES, STAGES, crash_and_resume, job_starts, tiny_config
from workflow_run import snakemake

pytestmark = pytest.mark.toolchain


def test_killed_runs_resume_to_the_clean_bytes(tiny_hf, toolchain_root, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    clean_starts = job_starts(snakemake(clean, tiny_config(clean, tiny_hf)).stderr)
    work = tmp_path / "killed"
    work.mkdir()

    hits, starts = crash_and_resume(work, tiny_config(work, tiny_hf), [s for s in STAGES for _ in range(3)], 20261203)

    kills = sum(hits.values())
    assert kills >= 10 and set(hits) == set(STAGES), f"kills per stage: {dict(hits)}"
    assert (work / "results/tiny/SHA256SUMS").read_text() == (clean / "results/tiny/SHA256SUMS").read_text()
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=work / "results/tiny", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert not list((work / "results").rglob("*.partial"))
    # Finished jobs are not redone: each kill costs at most the jobs that were running (≤ CORES).
    redone = sum(starts.values()) - sum(clean_starts.values())
    assert 0 <= redone <= CORES * kills, (starts, clean_starts)
    print(f"kills per stage {dict(hits)}; {redone} jobs redone in all; per rule: {dict(starts - clean_starts)}")
