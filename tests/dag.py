"""Dry runs through Snakemake's Python API: which jobs would run, counted by rule."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def _parsed(workdir: Path, configfile: Path, targets: tuple[str, ...] = ()):
    """The workflow parsed in ``workdir`` with ``configfile``: its API and its DAG API."""
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=2),
            config_settings=ConfigSettings(configfiles=[configfile]),
            snakefile=ROOT / "Snakefile",
            workdir=workdir,
        )
        yield workflow_api, workflow_api.dag(DAGSettings(targets=frozenset(targets)))


def _dry_run(workdir: Path, configfile: Path, targets: tuple[str, ...], read):
    """``read(jobs)`` of the jobs a dry run of the workflow would execute in ``workdir``."""
    with _parsed(workdir, configfile, targets) as (workflow_api, dag_api):
        dag_api.execute_workflow(executor="dryrun")
        return read(workflow_api._workflow.dag.needrun_jobs(exclude_finished=False))


def rule_outputs(workdir: Path, configfile: Path) -> list[tuple[str, dict[str, str], list[str]]]:
    """Each rule's name, its own wildcard constraints, and its output, log and benchmark paths as
    the workflow declares them for ``configfile`` (wildcard constraints stripped)."""
    from snakemake.io import strip_wildcard_constraints

    with _parsed(workdir, configfile) as (workflow_api, _):
        return [(rule.name, dict(rule.wildcard_constraints),
                 [strip_wildcard_constraints(str(path)) for path in
                  [*rule.output, *rule.log, *([rule.benchmark] if rule.benchmark else [])]])
                for rule in workflow_api._workflow.rules]


def planned_jobs(workdir: Path, configfile: Path, targets: tuple[str, ...] = ()) -> Counter:
    """Jobs a dry run of the workflow would execute in ``workdir``, counted per rule."""
    return _dry_run(workdir, configfile, targets,
                    lambda jobs: Counter(job.rule.name for job in jobs if job.rule.name != "all"))


def planned_reasons(workdir: Path, configfile: Path, targets: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Why Snakemake would run each planned job (its ``reason``, as ``snakemake -n`` prints it), per rule."""
    def read(jobs) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for job in jobs:
            if job.rule.name != "all":
                found.setdefault(job.rule.name, []).append(str(job.dag.reason(job)))
        return found

    return _dry_run(workdir, configfile, targets, read)


def planned_resources(workdir: Path, configfile: Path, rule: str, targets: tuple[str, ...]) -> list[dict]:
    """The wildcards and resources of each planned job of ``rule``."""
    return _dry_run(workdir, configfile, targets, lambda jobs: [
        {**dict(job.wildcards.items()), **dict(job.resources.items())} for job in jobs if job.rule.name == rule])
