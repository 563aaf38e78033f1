"""How long does planning a large sweep take, next to the floor Snakemake itself sets?

Writes a sweep config of MODELS models × 20 quant types × 5 tiers with dummy GGUF sources (one tiny tensor each),
times ``snakemake --dry-run`` of the workflow on it, then times the dry run of a minimal Snakefile
with the same jobs and the same dependency edges (read from the workflow's own ``--d3dag``): one
plain rule per workflow rule, its jobs' files laid out as results/<group>/<rule>/<job>, each with
an output, a log and a benchmark file like the workflow's, and each job's inputs looked up in a
precomputed table: no config checks, no params or resources, one-word shell commands. That is the
floor. Prints both, the ratio and the job counts. A measurement, not a gate: it exits 0 unless
something crashed.

    .venv/bin/python -m benchmarks.plan_scale --work /tmp/scale [--models 100]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from gguf import GGUFWriter

ROOT = Path(__file__).resolve().parent.parent
QUANTS = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "IQ4_XS", "IQ4_NL",
          "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS", "Q2_K", "IQ2_M"]
TIERS = [{"name": f"tier{i}", "threads": 4 * (i + 1), "ram_gb": 8 * (i + 1), "latency_budget_s": 10} for i in range(5)]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def sweep_config(work: Path, models: int) -> Path:
    sources = work / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    dummy = sources / "dummy.gguf"
    writer = GGUFWriter(str(dummy), "llama")  # a complete GGUF with one tensor: planning never reads more
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    entries = []
    for index in range(models):
        path = sources / f"m{index:03d}.gguf"
        path.write_bytes(dummy.read_bytes())
        entries.append({"name": f"m{index:03d}", "source": {"type": "gguf", "path": str(path)}})
    config = {"quants": QUANTS, "tiers": TIERS, "models": entries,
              "calibration": {"text": str(ROOT / "config" / "data" / "calibration.txt")}}
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(args: list[str], workdir: Path) -> tuple[float, dict[str, int]]:
    """Seconds of a dry run and its job counts per rule (from Snakemake's job stats table)."""
    started = time.perf_counter()
    proc = subprocess.run([*SNAKEMAKE, "--dry-run", "--quiet", "rules", "--cores", "2", "--directory", str(workdir), *args],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M)}
    return elapsed, counts


def workflow_dag(args: list[str], workdir: Path) -> dict:
    """The workflow's planned jobs and edges (``--d3dag``: nodes with their rule, edges u → v),
    with Snakemake's 10,000-job limit for drawing a DAG lifted."""
    lifted = ("import sys, snakemake.cli, snakemake.dag; snakemake.dag.DAG.d3dag.__defaults__ = (10**9,); "
              "sys.exit(snakemake.cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", lifted, "--d3dag", "--cores", "2", "--directory", str(workdir), *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"--d3dag failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def floor_snakefile(work: Path, dag: dict, models: int) -> Path:
    """One plain rule per workflow rule; job j of rule R makes results/g<j mod models>/R/j.out from
    the outputs of the jobs the workflow's job j depends on."""
    rule_of = {node["id"]: node["value"]["rule"] for node in dag["nodes"]}

    def path(job: int) -> str:
        return f"results/g{job % models:03d}/{rule_of[job]}/{job}.out"

    deps: dict[int, list[str]] = {job: [] for job in rule_of}
    for edge in dag["edges"]:
        deps[edge["v"]].append(path(edge["u"]))
    root = next(job for job, rule in rule_of.items() if rule == "all")
    rules = []
    for rule in sorted(set(rule_of.values()) - {"all"}):
        pattern = f"results/{{group}}/{rule}/{{job}}"
        rules.append(f"rule {rule}:\n    input: lambda w: DEPS[int(w.job)]\n    output: \"{pattern}.out\"\n"
                     f"    log: \"{pattern}.log\"\n    benchmark: \"{pattern}.tsv\"\n    shell: \"touch {{output}}\"\n")
    body = (f"DEPS = {deps!r}\n\nwildcard_constraints:\n    group=r\"g\\d+\",\n    job=r\"\\d+\",\n\n"
            f"rule all:\n    input: DEPS[{root}]\n    default_target: True\n\n" + "\n".join(rules))
    snakefile = work / "floor" / "Snakefile"
    snakefile.parent.mkdir(parents=True, exist_ok=True)
    snakefile.write_text(body)
    return snakefile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--models", type=int, default=100)
    ns = parser.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    config = sweep_config(ns.work, ns.models)
    workflow = ["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(config)]
    floor = floor_snakefile(ns.work, workflow_dag(workflow, ns.work / "run"), ns.models)
    ours, counts = dry_run(workflow, ns.work / "run")
    base, floor_counts = dry_run(["--snakefile", str(floor)], floor.parent)
    print(f"workflow: {counts.get('total')} jobs planned in {ours:.1f} s "
          f"({ns.models} models x {len(QUANTS)} quant types x {len(TIERS)} tiers)")
    print(f"floor:    {floor_counts.get('total')} jobs planned in {base:.1f} s (plain rules, same jobs and edges)")
    print(f"ratio:    {ours / base:.2f}")
    print("jobs per rule: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "total"))


if __name__ == "__main__":
    main()
