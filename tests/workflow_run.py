"""Run the real workflow (the snakemake CLI, as a user would) in a scratch directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CALIBRATION = ROOT / "config" / "data" / "calibration.txt"
SCENARIOS = ROOT / "tests" / "scenarios"
TINY_MODEL_DIR = "tiny-llama"
"""Where a scenario's config finds the tiny model, relative to the working directory."""


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def scenario(name: str, workdir: Path, tiny_hf: Path | None = None, model_dir: str = TINY_MODEL_DIR) -> Path:
    """Lay out scenario ``name`` (tests/scenarios/<name>/) in ``workdir``, with the tiny model
    linked where its config looks for it (``model_dir``); returns the config file."""
    shutil.copytree(SCENARIOS / name, workdir, dirs_exist_ok=True)
    if tiny_hf is not None:
        (workdir / model_dir).symlink_to(tiny_hf, target_is_directory=True)
    return workdir / "config.yaml"


def copy_run(workdir: Path, dest: Path) -> Path:
    """A private copy of a finished run (its model directory too, times kept), for a test that
    changes files: the shared run stays as it was made."""
    shutil.copytree(workdir, dest, symlinks=False)
    return dest


def snakemake(workdir: Path, configfile: Path | None, *args: str, check: bool = True,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """``snakemake --snakefile <project>/Snakefile --directory <workdir> [--configfile ...]``
    (without a config file: the default config alone, as ``make run`` runs it)."""
    config = ["--configfile", str(configfile)] if configfile else []
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *config,
           "--cores", str(os.cpu_count() or 1), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_timeline(log: str) -> list[tuple[str, int | None, str, int]]:
    """('start'|'end', jobid, rule, threads) in the order Snakemake's job log reports them (a
    job's block lists its jobid and, unless it is 1, its threads; a log cut off by a kill may end
    inside a block, which still counts as a start)."""
    events, block, rules = [], None, {}

    def start() -> None:
        rules[block.get("jobid")] = (block["rule"], block.get("threads", 1))
        events.append(("start", block.get("jobid"), *rules[block.get("jobid")]))

    for line in log.splitlines():
        if block is not None and not line.startswith("    "):
            start()
            block = None
        if header := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            block = {"rule": header.group(1)}
        elif block is not None and (field := re.match(r"^\s+(jobid|threads): (\d+)$", line)):
            block[field.group(1)] = int(field.group(2))
        elif finished := re.match(r"^Finished jobid: (\d+)", line):
            events.append(("end", int(finished.group(1)), *rules[int(finished.group(1))]))
    if block is not None:
        start()
    return events
