"""CPU against GPU on one host: the helper of benchmarks/gpu_measure.sh.

``model`` makes a ~1B-parameter Llama with random weights (speed does not depend on the weights'
values, only on their shapes and types); ``config`` writes the workflow config of one side (a CPU
toolchain with a CPU tier, or a CUDA toolchain with a GPU tier); ``table`` reads both sides'
results and prints them side by side: stage times from results/benchmarks/*.tsv, llama-bench
tokens/s per file, VRAM measured against memory_fit's prediction, and the share of the GPU's
memory bandwidth a generated token uses (file bytes × tg tokens/s / bandwidth: generating one
token reads every weight once).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from workflow_scripts.llama_tools import parse_bench_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = "rand1b"
QUANTS = ["Q8_0", "Q4_K_M"]
REFERENCE = "F16"
SHAPE_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 4096}
TIERS = {
    "cpu": {"name": "cpu-16t", "threads": 16, "ram_gb": 64, "ctx": 4096, "latency_budget_s": 30},
    "cuda": {"name": "gpu-h200", "threads": 16, "ram_gb": 64, "vram_gb": 141, "gpu_layers": 999, "ctx": 4096,
             "latency_budget_s": 5},
}
H200_BANDWIDTH = 4.8e12
"""Bytes/s: the H200's HBM3e bandwidth by NVIDIA's datasheet (nominal, not measured here)."""
STAGES = (("imatrix", f"imatrix/{MODEL}.tsv"), ("reference perplexity", f"reference_logits/{MODEL}.tsv"),
          *((f"KLD {q}", f"validate/{MODEL}-{q}.tsv") for q in QUANTS))


def make_model(dest: Path, layers: int, hidden: int) -> None:
    from tests.tiny_model import make_tiny_llama

    corpus = (ROOT / "config/data/calibration.txt").read_text() + (ROOT / "config/data/evaluation.txt").read_text()
    scale = hidden / SHAPE_1B["hidden_size"]
    shape = {**SHAPE_1B, "num_hidden_layers": layers, "hidden_size": hidden,
             "intermediate_size": int(SHAPE_1B["intermediate_size"] * scale),
             "num_attention_heads": max(1, int(32 * scale)), "num_key_value_heads": max(1, int(8 * scale))}
    make_tiny_llama(dest, corpus, shape=shape, dtype="float16")


def workflow_config(backend: str, model_dir: Path) -> dict:
    """Few quants and chunks, so the CPU side ends in minutes; the same work on both sides."""
    return {
        "toolchain": {"backend": backend},
        "models": [{"name": MODEL, "source": {"type": "local", "path": str(model_dir)}}],
        "quants": QUANTS,
        "calibration": {"chunks": 8, "ctx": 512},
        "evaluation": {"chunks": 8, "ctx": 512},
        "tiers": [TIERS[backend]],
        "benchmark": {"pp_tokens": 512, "tg_tokens": 128, "repetitions": 3, "answer_tokens": 64},
    }


def targets(backend: str) -> list[str]:
    """What the comparison reads: the imatrix, each quant's KL-divergence run, each file's speed."""
    tier = TIERS[backend]["name"]
    return ([f"results/{MODEL}/imatrix/{MODEL}.imatrix.gguf"]
            + [f"results/{MODEL}/validate/{q}.json" for q in QUANTS]
            + [f"results/{MODEL}/speed/{tier}/{name}.json" for name in (REFERENCE, *QUANTS)])


def stage_seconds(run: Path, tsv: str) -> float | None:
    path = run / "results/benchmarks" / tsv
    if not path.exists():
        return None
    return float(next(csv.DictReader(path.open(), delimiter="\t"))["s"])


def bench(run: Path, backend: str, name: str) -> dict | None:
    path = run / f"results/{MODEL}/speed/{TIERS[backend]['name']}/{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def speed(run: Path, backend: str, name: str, record: dict | None) -> tuple[dict, bool]:
    """llama-bench's figures for a file: from its speed record, else from llama-bench's own
    output beside the job's log (written before the reference task, so it survives that task's
    failure); and whether they came from there."""
    if record and record.get("measured"):
        return record["llama_bench"], False
    raw = run / f"results/logs/speed/{MODEL}-{TIERS[backend]['name']}-{name}.json"
    try:
        return parse_bench_json(raw.read_text()), True
    except (OSError, ValueError):
        return {}, False


def _fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def table(cpu: Path, cuda: Path, bandwidth: float) -> str:
    lines = ["| stage | CPU s | GPU s | CPU / GPU |", "|---|---|---|---|"]
    for label, tsv in STAGES:
        c, g = stage_seconds(cpu, tsv), stage_seconds(cuda, tsv)
        lines.append(f"| {label} | {_fmt(c)} | {_fmt(g)} | {_fmt(c / g if c and g else None)} |")
    lines += ["", "| file | weights MB | CPU pp t/s | GPU pp t/s | CPU tg t/s | GPU tg t/s | GPU tg × bytes / bandwidth "
              "| VRAM measured MB | VRAM predicted MB | measured / predicted |", "|---|---|---|---|---|---|---|---|---|---|"]
    raw_only, gpus = False, []
    for name in (REFERENCE, *QUANTS):
        gpu_record = bench(cuda, "cuda", name)
        (cpu_speed, cpu_raw) = speed(cpu, "cpu", name, bench(cpu, "cpu", name))
        (gpu_speed, gpu_raw) = speed(cuda, "cuda", name, gpu_record)
        raw_only |= cpu_raw or gpu_raw
        gpus = gpus or (gpu_record or {}).get("host", {}).get("gpus", [])
        size = next((s["model_size"] for s in (gpu_speed, cpu_speed) if s), None)
        tg = gpu_speed.get("tg", {}).get("tokens_per_s")
        vram = (gpu_record or {}).get("vram", {})
        lines.append("| " + " | ".join([
            name + ("*" if cpu_raw or gpu_raw else ""), _fmt(size and size / 1e6, ".0f"),
            _fmt(cpu_speed.get("pp", {}).get("tokens_per_s")), _fmt(gpu_speed.get("pp", {}).get("tokens_per_s")),
            _fmt(cpu_speed.get("tg", {}).get("tokens_per_s")), _fmt(tg),
            _fmt(tg and size and tg * size / bandwidth, ".1%"),
            _fmt(vram.get("measured_bytes") and vram["measured_bytes"] / 1e6, ".0f"),
            _fmt(vram.get("predicted_bytes") and vram["predicted_bytes"] / 1e6, ".0f"),
            _fmt(vram.get("measured_over_predicted"), ".2f")]) + " |")
    if raw_only:
        lines += ["", "*: llama-bench's own output; the speed job failed afterwards, in its reference task."]
    lines += ["", f"GPU: {', '.join(gpus) or 'none found'}; bandwidth figure: {bandwidth / 1e12:.2f} TB/s"
              + (" (H200 datasheet, nominal)" if bandwidth == H200_BANDWIDTH else "")
              + ". Weights are random: speed depends on shapes and types, not on values."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model", help="make the random-weight Llama")
    model.add_argument("dest", type=Path)
    model.add_argument("--layers", type=int, default=SHAPE_1B["num_hidden_layers"])
    model.add_argument("--hidden", type=int, default=SHAPE_1B["hidden_size"], help="other sizes scale with it")
    config = sub.add_parser("config", help="write one side's workflow config; print its targets")
    config.add_argument("--backend", choices=sorted(TIERS), required=True)
    config.add_argument("--model-dir", type=Path, required=True)
    config.add_argument("--out", type=Path, required=True)
    report = sub.add_parser("table", help="both sides' figures side by side (markdown)")
    report.add_argument("--cpu", type=Path, required=True, help="working directory of the CPU run")
    report.add_argument("--cuda", type=Path, required=True, help="working directory of the CUDA run")
    report.add_argument("--bandwidth", type=float, default=H200_BANDWIDTH, help="GPU memory bandwidth, bytes/s")
    ns = parser.parse_args(argv)
    if ns.command == "model":
        make_model(ns.dest, ns.layers, ns.hidden)
    elif ns.command == "config":
        ns.out.write_text(json.dumps(workflow_config(ns.backend, ns.model_dir.resolve()), indent=2) + "\n")
        print(" ".join(targets(ns.backend)))
    else:
        print(table(ns.cpu, ns.cuda, ns.bandwidth), end="")


if __name__ == "__main__":
    main()
