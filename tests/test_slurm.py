"""The tiny scenario through a real SLURM cluster (scripts/local-slurm.sh) makes the shared local run's bytes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import psutil
import pytest

from tests.workflow_run import ROOT, scenario, snakemake

pytestmark = [pytest.mark.toolchain, pytest.mark.slurm]

SCRIPT = ROOT / "scripts" / "local-slurm.sh"


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


def test_the_tiny_scenario_through_slurm_matches_the_local_run(slurm_env, tiny_run, tiny_hf, tmp_path):
    """Every job a SLURM job (the scenario's one CPU tier fits the test node: a speed job asks SLURM
    for its tier's RAM), each COMPLETED, and the same bytes as the local run."""
    before = set(_squeue(slurm_env))
    config = scenario("tiny", tmp_path, tiny_hf)
    proc = snakemake(tmp_path, config, "--workflow-profile", str(ROOT / "profiles" / "slurm"), "--jobs", "4",
                     "--max-threads", "2", "--latency-wait", "5", "--slurm-no-account",
                     # No accounting database here: the plugin's default (sacct) cannot see jobs end.
                     "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
                     env=slurm_env)
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr))
    jobs = {job: state for job, state in _squeue(slurm_env).items() if job not in before}
    assert len(submitted) >= 20 and submitted == set(jobs), (submitted, jobs)
    assert set(jobs.values()) == {"COMPLETED"}
    assert (tmp_path / "results" / "tiny" / "SHA256SUMS").read_text() == tiny_run.sha256sums
    assert (tmp_path / "results" / "package" / "tiny" / "SHA256SUMS").is_file()
