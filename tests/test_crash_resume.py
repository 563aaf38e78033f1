"""SIGKILL the workflow (Snakemake and every process under it) in the middle of convert, imatrix,
quantize and validate, three times each; each time resume. The final files must be the bytes of
the shared tiny run — made in another directory, so this is also the check that a second checkout
makes the same bytes — no cut-off file may ever pass for a finished one, and a resumed run redoes
at most the jobs that were running when it was killed."""

from __future__ import annotations

import subprocess

import pytest

from tests.crash_points import CORES, STAGES, crash_and_resume, job_starts
from tests.workflow_run import scenario

pytestmark = [pytest.mark.toolchain, pytest.mark.slow]


def test_killed_runs_resume_to_the_clean_bytes(tiny_run, tiny_hf, tmp_path):
    clean_starts = job_starts(tiny_run.proc.stderr)
    work = tmp_path / "elsewhere" / "deeper"
    work.mkdir(parents=True)
    config = scenario("tiny", work, tiny_hf)

    hits, starts = crash_and_resume(work, config, [s for s in STAGES for _ in range(3)], 20261203)

    kills = sum(hits.values())
    # Twelve attempts; once a stage is done an attempt aimed at it hits a later one, and the last ones may find
    # the run finished: every stage is hit, and most attempts are.
    assert kills >= 2 * len(STAGES) and set(hits) == set(STAGES), f"kills per stage: {dict(hits)}"
    assert (work / "results/tiny/SHA256SUMS").read_text() == tiny_run.sha256sums
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=work / "results/tiny", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert not list((work / "results").rglob("*.partial"))
    # Finished jobs are not redone: each kill costs at most the jobs that were running (≤ CORES).
    redone = sum(starts.values()) - sum(clean_starts.values())
    assert 0 <= redone <= CORES * kills, (starts, clean_starts)
    print(f"kills per stage {dict(hits)}; {redone} jobs redone in all; per rule: {dict(starts - clean_starts)}")
