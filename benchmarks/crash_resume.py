"""Kill the workflow many times at random moments during convert, imatrix, quantize and validate,
resume each time, and report: kills per stage, jobs redone, and whether the final files are the
bytes of a clean run (tests/test_crash_resume.py does the same with 12 kill points).

    .venv/bin/python -m benchmarks.crash_resume --work /tmp/crash [--per-stage 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from tests.crash_points import STAGES, crash_and_resume, job_starts
from tests.tiny_model import make_tiny_llama
from tests.workflow_run import ROOT, scenario, snakemake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--per-stage", type=int, default=10, help="killed runs aimed at each stage")
    parser.add_argument("--seed", type=int, default=1)
    ns = parser.parse_args()
    model = make_tiny_llama(ns.work / "tiny-llama", (ROOT / "config/data/calibration.txt").read_text())
    clean, work = ns.work / "clean", ns.work / "killed"
    for path in (clean, work):
        path.mkdir(parents=True, exist_ok=False)
    clean_starts = job_starts(snakemake(clean, scenario("tiny", clean, model)).stderr)
    started = time.monotonic()
    hits, starts = crash_and_resume(work, scenario("tiny", work, model), [s for s in STAGES for _ in range(ns.per_stage)],
                                    ns.seed)
    same = (work / "results/tiny/SHA256SUMS").read_text() == (clean / "results/tiny/SHA256SUMS").read_text()
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=work / "results/tiny").returncode == 0
    print(f"kill points aimed: {len(STAGES) * ns.per_stage}; kills landed per stage: {dict(hits)}")
    print(f"jobs redone: {sum(starts.values()) - sum(clean_starts.values())} "
          f"(per rule: {dict(starts - clean_starts)})")
    print(f"final SHA256SUMS equal to the clean run's: {same}; sha256sum -c: {'ok' if check else 'FAILED'}; "
          f"partial files left: {len(list((work / 'results').rglob('*.partial')))}")
    print(f"wall time of the killed runs and the resume: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
