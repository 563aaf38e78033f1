"""How long does planning a large sweep take, next to the floor Snakemake itself sets?

Writes a sweep config of MODELS models × 20 quant types × 5 tiers with dummy local GGUF sources,
times ``snakemake --dry-run`` of the workflow on it, then times the dry run of a minimal Snakefile
with the same rules' file patterns and the same number of jobs (plain rules, no input functions,
no config checks; like the workflow's, each job has an output, a log and a benchmark file): the
floor. Prints both, the ratio and the job counts. A measurement, not a gate: it exits 0 unless
something crashed.

    .venv/bin/python benchmarks/plan_scale.py --work /tmp/scale [--models 100]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
QUANTS = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "IQ4_XS", "IQ4_NL",
          "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS", "Q2_K", "IQ2_M"]
TIERS = [{"name": f"tier{i}", "threads": 4 * (i + 1), "ram_gb": 8 * (i + 1), "latency_budget_s": 10} for i in range(5)]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def sweep_config(work: Path, models: int) -> Path:
    sources = work / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(models):
        path = sources / f"m{index:03d}.gguf"
        path.write_bytes(b"GGUF")
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


def floor_snakefile(work: Path, counts: dict[str, int], models: int) -> Path:
    """One plain rule per workflow rule, each with as many jobs as the workflow's dry run had,
    spread over the same model names and file layout."""
    rules, targets = [], []
    for rule, n in sorted(counts.items()):
        if rule in ("all", "total"):
            continue
        per_model, extra = divmod(n, models)
        pattern = f"results/{{model}}/{rule}/{{item}}"
        rules.append(f"rule {rule}:\n    output: \"{pattern}.out\"\n    log: \"{pattern}.log\"\n"
                     f"    benchmark: \"{pattern}.tsv\"\n    shell: \"touch {{output}}\"\n")
        items = [(m, i) for m in range(models) for i in range(per_model)] + [(0, per_model + i) for i in range(extra)]
        targets += [f"results/m{m:03d}/{rule}/{i}.out" for m, i in items]
    body = "rule all:\n    input: TARGETS\n    default_target: True\n\n" + "\n".join(rules)
    path = work / "floor" / "Snakefile"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"TARGETS = {targets!r}\n\n" + body)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--models", type=int, default=100)
    ns = parser.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    config = sweep_config(ns.work, ns.models)
    ours, counts = dry_run(["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(config)], ns.work / "run")
    floor = floor_snakefile(ns.work, counts, ns.models)
    base, floor_counts = dry_run(["--snakefile", str(floor)], floor.parent)
    print(f"workflow: {counts.get('total')} jobs planned in {ours:.1f} s "
          f"({ns.models} models x {len(QUANTS)} quant types x {len(TIERS)} tiers)")
    print(f"floor:    {floor_counts.get('total')} jobs planned in {base:.1f} s (plain rules, same job count)")
    print(f"ratio:    {ours / base:.2f}")
    print("jobs per rule: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "total"))


if __name__ == "__main__":
    main()
