"""Cost against size: the whole workflow on random-weight Llamas of growing size, one config, one host.

    .venv/bin/python -m benchmarks.cost_scale run --work /tmp/cost-scale [--sizes 30m,180m,480m,1b]
    .venv/bin/python -m benchmarks.cost_scale table --work /tmp/cost-scale

``run`` makes each model (benchmarks/gpu_measure.py's ~1B Llama with its hidden size and layer
count changed: FFN 4 × hidden, one head per 64 columns, a quarter as many KV heads, the tests'
512-piece vocabulary) and runs the whole workflow on it (the default target: package included)
with the same settings for every size: Q8_0, Q4_K_M and IQ4_XS, imatrix and evaluation on 4 × 512
tokens, one CPU tier of every core, gates opened, no fallback and no sanity margin (the weights are random: their
quality figures decide nothing, and every build must be made and measured). A model already run is
kept; each run's log is ``<work>/<size>/snakemake.log``.

``table`` reads Snakemake's benchmark files (one per job; a rule's jobs summed, e.g. quantize's
three builds) and prints, per stage, the seconds and the largest peak RSS at each size, the disk
the stage's outputs take, and the growth exponent of its time in parameter count: the slope of
log(time) against log(parameters) between the two largest sizes (where fixed costs weigh least)
and over all sizes (least squares), and of its CPU time between the two largest (jobs that ran
beside others wait for a core: their wall time can grow faster than their work); then the time
and disk of a 70B model on this host,
each stage's time carried from the largest size with its exponent. Peak RSS is Snakemake's
sampled figure: a tool whose child process ends between two samples shows the wrapper's few MB.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.gpu_measure import (SHAPE_8B, VOCAB_8B, cell, corpus, llama_tensor_shapes, make_model_1b,
                                    make_sparse_checkpoint, unjudged)
from tests.tiny_model import make_tiny_mixtral
from workflow_scripts.gguf_header import read_gguf_header

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"30m": (512, 8, 0), "180m": (1024, 12, 0), "480m": (1536, 14, 0), "1b": (2048, 16, 0), "moe110m": (512, 8, 8)}
"""Hidden size, layers and experts of each model: dense Llamas of about 30M, 180M, 480M and 970M
parameters, and a Mixtral of 8 experts (top 2) of 1,024 columns each, about 110M parameters of
which 30M are used per token (left out of the growth exponents, which are the dense models')."""
QUANTS = ["Q8_0", "Q4_K_M", "IQ4_XS"]
SHAPE_70B = {**SHAPE_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64}
"""Llama-3.1-70B's sizes (its config.json; 8 KV heads and the 128,256-token vocabulary as the 8B)."""
TARGET_PARAMETERS = 70e9
OUTPUTS = {"convert": ("reference",), "quantize": ("quant",), "imatrix": ("imatrix",),
           "reference_logits": ("validate/{model}-reference.logits",), "source": ("source",)}
"""Where each stage's large outputs lie under results/{model}/ (the disk it takes)."""


def config(model: str, model_dir: Path, threads: int) -> dict:
    return {
        **unjudged(QUANTS),
        "models": [{"name": model, "source": {"type": "local", "path": str(model_dir)}}],
        "quants": QUANTS,
        "calibration": {"chunks": 4, "ctx": 512},
        "evaluation": {"chunks": 4, "ctx": 512},
        "tiers": [{"name": f"cpu-{threads}t", "threads": threads, "ram_gb": 16, "ctx": 2048, "latency_budget_s": 600}],
        "benchmark": {"pp_tokens": 128, "tg_tokens": 32, "repetitions": 2, "answer_tokens": 16},
    }


def run(work: Path, sizes: list[str], cores: int) -> None:
    snakemake = Path(sys.executable).with_name("snakemake")
    for size in sizes:
        hidden, layers, experts = SIZES[size]
        model, workdir = f"rand{size}", work / size
        if (workdir / "results" / model / "SHA256SUMS").exists():
            print(f"{size}: already run ({workdir})", flush=True)
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "model" / "config.json").exists():
            print(f"{size}: making the model (hidden {hidden}, {layers} layers, {experts or 'no'} experts)", flush=True)
            if experts:
                make_tiny_mixtral(workdir / "model", corpus(), experts=experts, dead_experts=0, shape={
                    "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                    "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 256})
            else:
                make_model_1b(workdir / "model", layers, hidden)
        (workdir / "config.yaml").write_text(json.dumps(config(model, (workdir / "model").resolve(), cores), indent=2))
        log = workdir / "snakemake.log"
        print(f"{size}: the workflow, log {log}", flush=True)
        started = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.run([str(snakemake), "--snakefile", str(ROOT / "Snakefile"), "--configfile", "config.yaml",
                                   "--cores", str(cores)], cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"{size}: the workflow failed; see {log}")
        print(f"{size}: done in {time.perf_counter() - started:.0f} s", flush=True)


def parameters(workdir: Path, model: str) -> tuple[int, int]:
    """The model's parameters, and those a token uses (expert tensors counted for the routed experts)."""
    header = read_gguf_header(workdir / "results" / model / "reference" / f"{model}-F16.gguf")
    arch = header.metadata["general.architecture"]
    share = header.metadata.get(f"{arch}.expert_used_count", 1) / header.metadata.get(f"{arch}.expert_count", 1)
    total = sum(t.n_elements for t in header.tensors.values())
    return total, round(sum(t.n_elements * (share if "_exps" in t.name else 1) for t in header.tensors.values()))


def stage_costs(workdir: Path) -> dict[str, dict]:
    """Per rule: jobs, wall and CPU seconds summed over them, the largest peak RSS (bytes; None if
    not sampled)."""
    costs: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "s": 0.0, "cpu": 0.0, "rss": None})
    for tsv in sorted((workdir / "results" / "benchmarks").glob("*/*.tsv")):
        if tsv.parent.name == "toolchain":
            continue
        record = next(csv.DictReader(tsv.open(), delimiter="\t"))
        stage = costs[tsv.parent.name]
        stage["jobs"] += 1
        stage["s"] += float(record["s"])
        stage["cpu"] += float(record["cpu_time"])
        if record["max_rss"] not in ("", "NA", "-"):
            stage["rss"] = max(stage["rss"] or 0, float(record["max_rss"]) * 2**20)
    return dict(costs)


def disk_bytes(workdir: Path, model: str, stage: str) -> int | None:
    if stage not in OUTPUTS:
        return None
    total = 0
    for place in OUTPUTS[stage]:
        path = workdir / "results" / model / place.format(model=model)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
        total += sum(p.stat().st_size for p in files)
    return total


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x)."""
    points = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def table(work: Path, sizes: list[str]) -> str:
    runs = []
    for size in sizes:
        model, workdir = f"rand{size}", work / size
        if (workdir / "results" / model / "SHA256SUMS").exists():
            runs.append((size, model, workdir, *parameters(workdir, model), stage_costs(workdir)))
    dense = [run for run in runs if not SIZES[run[0]][2]]
    if not dense:
        return f"no finished run of a dense model under {work}\n"
    stages = sorted({stage for *_, costs in runs for stage in costs},
                    key=lambda s: -max(costs.get(s, {}).get("s", 0) for *_, costs in runs))
    names = [f"{size} ({total / 1e6:.0f}M" + (f", {active / 1e6:.0f}M active)" if active != total else ")")
             for size, _, _, total, active, _ in runs]
    lines = [f"Host: {os.cpu_count()} cores. Seconds per stage (its jobs summed); peak RSS and disk of the largest dense "
             "model; growth exponent of the time in parameter count over the dense models.", "",
             "| stage (jobs) | " + " | ".join(f"{name} s" for name in names) + " | peak RSS MB | disk MB "
             "| exponent, two largest | exponent, all | CPU-time exponent, two largest | 70B s, predicted |",
             "|---" * (len(runs) + 7) + "|"]
    (_, big_model, big_dir, big_p, _, big_costs), total70 = dense[-1], 0.0
    for stage in stages:
        times = [(p, costs[stage]["s"]) for _, _, _, p, _, costs in dense if stage in costs]
        cpu = [(p, costs[stage]["cpu"]) for _, _, _, p, _, costs in dense if stage in costs]
        top = slope(times[-2:]) if times else None
        # Carried from the largest dense model with its exponent (measured at one size only: in proportion).
        predicted = times[-1][1] * (TARGET_PARAMETERS / times[-1][0]) ** max(1.0 if top is None else top, 0.0) \
            if times else None
        total70 += predicted or 0.0
        stage_big = big_costs.get(stage, {})
        disk = disk_bytes(big_dir, big_model, stage)
        cells = [cell(costs[stage]["s"] if stage in costs else None, ".1f") for *_, costs in runs]
        lines.append(f"| {stage} ({stage_big.get('jobs', '')}) | " + " | ".join(cells)
                     + f" | {cell(stage_big.get('rss') and stage_big['rss'] / 1e6, '.0f')} | {cell(disk and disk / 1e6, '.0f')}"
                     f" | {cell(top, '.2f')} | {cell(slope(times), '.2f')} | {cell(slope(cpu[-2:]), '.2f')}"
                     f" | {cell(predicted, ',.0f')} |")
    totals = [(total, sum(c["s"] for c in costs.values())) for _, _, _, total, _, costs in runs]
    dense_totals = [point for point, run in zip(totals, runs) if run in dense]
    lines.append("| **all jobs** | " + " | ".join(f"{t:.0f}" for _, t in totals) + " | | | "
                 f"{cell(slope(dense_totals[-2:]), '.2f')} | {cell(slope(dense_totals), '.2f')} | | {total70:,.0f} |")
    used = json.loads((big_dir / "results" / big_model / "disk.json").read_text())
    lines += ["", f"Disk under results/ at {big_p / 1e6:.0f}M parameters: predicted {used['predicted_bytes'] / 1e9:.2f} GB, "
              f"used {used['used_bytes'] / 1e9:.2f} GB; carried to 70B in proportion: "
              f"{used['used_bytes'] * TARGET_PARAMETERS / big_p / 1e9:.0f} GB. "
              f"70B on this host, all jobs one after another: {total70 / 3600:.1f} h.", "",
              f"Llama-3.1-70B's shapes ({sum(math.prod(d) for d in llama_tensor_shapes(SHAPE_70B, VOCAB_8B).values()) / 1e9:.1f}B "
              "parameters), this config, as the workflow plans it: " + ", ".join(disk_planned(SHAPE_70B, VOCAB_8B)) + "."]
    return "\n".join(lines) + "\n"


def disk_planned(shape: dict, vocab: int) -> list[str]:
    """The disk the workflow plans (before any job) for this config on a checkpoint of these shapes:
    build_plan on a sparse one (real headers, holes for data), per file, and the shards' own size."""
    import tempfile

    from tests.tiny_model import save_tokenizer
    from workflow_scripts.config import build_plan

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        save_tokenizer(corpus(), base / "tokenizer")
        weights = make_sparse_checkpoint(base / "model", base / "tokenizer", shape, vocab)
        shutil.copytree(ROOT / "config" / "data", base / "config" / "data")
        run = config("model", base / "model", 2)
        need = build_plan(run, "cost_scale", base=base, free_bytes=10**15).disk["model"]
    files = [f"{'package, ' + path.split('#')[1] if '#' in path else path.split('/', 2)[-1]} {size / 1e9:.1f} GB"
             for path, size in need.files.items() if size >= 1e8]
    return files + [f"together {sum(need.files.values()) / 1e9:.0f} GB under results/, "
                    f"{(sum(need.files.values()) + weights) / 1e9:.0f} GB with the source's {weights / 1e9:.0f} GB of shards"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ns = parser.parse_args(argv)
    sizes = [s for s in ns.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: {', '.join(unknown)}; expected some of {', '.join(SIZES)}")
    if ns.command == "run":
        run(ns.work.resolve(), sizes, ns.cores)
    print(table(ns.work.resolve(), sizes), end="")


if __name__ == "__main__":
    main()
