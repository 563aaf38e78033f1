"""Dry runs through Snakemake's Python API: which jobs would run, counted by rule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(workdir: Path, configfile: Path, targets: tuple[str, ...], read):
    """``read(jobs)`` of the jobs a dry run of the workflow would execute in ``workdir``."""
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=2),
            config_settings=ConfigSettings(configfiles=[configfile]),
            snakefile=ROOT / "Snakefile",
            workdir=workdir,
        )
        dag_api = workflow_api.dag(DAGSettings(targets=frozenset(targets)))
        dag_api.execute_workflow(executor="dryrun")
        return read(workflow_api._workflow.dag.needrun_jobs(exclude_finished=False))


def planned_jobs(workdir: Path, configfile: Path, targets: tuple[str, ...] = ()) -> Counter:
    """Jobs a dry run of the workflow would execute in ``workdir``, counted per rule."""
    return _dry_run(workdir, configfile, targets,
                    lambda jobs: Counter(job.rule.name for job in jobs if job.rule.name != "all"))


def planned_resources(workdir: Path, configfile: Path, rule: str, targets: tuple[str, ...]) -> list[dict]:
    """The wildcards and resources of each planned job of ``rule``."""
    return _dry_run(workdir, configfile, targets, lambda jobs: [
        {**dict(job.wildcards.items()), **dict(job.resources.items())} for job in jobs if job.rule.name == rule])
