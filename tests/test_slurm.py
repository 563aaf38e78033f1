"""The default job through a real SLURM cluster (scripts/local-slurm.sh) makes the local run's bytes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import psutil
import pytest

from workflow_run import ROOT, snakemake, write_config
from workflow_scripts.config import load_schema

pytestmark = [pytest.mark.toolchain, pytest.mark.real_model, pytest.mark.slurm]

SCRIPT = ROOT / "scripts" / "local-slurm.sh"
MODEL = "smollm2-135m"
CALIBRATION = ROOT / "config" / "data" / "calibration.txt"


def _why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd starts jobs as their user)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install slurm-wlm"
    return None


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Environment of a running single-node cluster whose state lives in a temporary directory."""
    reason = _why_no_slurm()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the SLURM test: {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-state")
    started = subprocess.run([str(SCRIPT), "start", str(state)], capture_output=True, text=True)
    assert started.returncode == 0, f"{started.stderr[-3000:]}\nlogs: {state / 'log'}"
    daemons = {name: int((state / "run" / f"{name}.pid").read_text()) for name in ("munged", "slurmctld", "slurmd")}
    yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    stopped = subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    alive = [name for name, pid in daemons.items() if psutil.pid_exists(pid) and psutil.Process(pid).name() == name]
    assert not alive, f"still running after stop: {alive}"


def _squeue(env) -> dict[str, str]:
    """Job id → state of every job the cluster still remembers (MinJobAge keeps finished ones)."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("|") for line in out.split())


def test_default_job_through_slurm_matches_the_local_run(slurm_env, demo_run, tmp_path):
    before = set(_squeue(slurm_env))
    # One CPU tier that fits the 24 GB test node (a tier asks SLURM for its RAM; a GPU tier for a GPU).
    laptop = next(t for t in load_schema()["properties"]["tiers"]["default"] if t["name"] == "laptop-8gb")
    config = write_config(tmp_path, {"calibration": {"text": str(CALIBRATION)}, "tiers": [laptop]})
    proc = snakemake(tmp_path, config, "--workflow-profile", str(ROOT / "profiles" / "slurm"), "--jobs", "4",
                     "--max-threads", "2", "--latency-wait", "5", "--slurm-no-account",
                     # No accounting database here: the plugin's default (sacct) cannot see jobs end.
                     "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
                     env=slurm_env)
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr))
    jobs = {job: state for job, state in _squeue(slurm_env).items() if job not in before}
    assert len(submitted) >= 30 and submitted == set(jobs), (submitted, jobs)
    assert set(jobs.values()) == {"COMPLETED"}
    assert (tmp_path / "results" / MODEL / "SHA256SUMS").read_text() == demo_run.sha256sums
    assert (tmp_path / "results" / "package" / MODEL / "SHA256SUMS").is_file()
