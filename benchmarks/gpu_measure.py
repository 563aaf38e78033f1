"""CPU against GPU on one host: the helper of benchmarks/gpu_measure.sh.

``model`` makes a Llama with random weights (speed does not depend on the weights' values, only on
their shapes and types): ``--shape 1b`` (~1B parameters, one file) or ``--shape 8b`` (Llama-3.1-8B's
shapes and its 128,256-row embedding, BF16 in 5 GB safetensors shards with an index, as the
checkpoint comes) or ``--shape moe`` (a Mixtral of the 1B's hidden size and layers with 8 experts
of 2,816 columns, top-2 routing, two experts a layer never routed to: 2.4B parameters, 0.7B used
per token); ``config`` writes the workflow config of one side (a CPU toolchain with a CPU
tier, or a CUDA toolchain with a GPU tier); ``table`` reads the sides' results and prints them
side by side: stage times from results/benchmarks/*.tsv, llama-bench tokens/s per file, VRAM
measured against memory_fit's prediction, and the share of the GPU's memory bandwidth a generated
token uses (file bytes × tg tokens/s / bandwidth: generating one token reads every weight once);
then every job's time and peak RSS, and the disk predicted and used.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

from workflow_scripts.llama_tools import parse_bench_json

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "F16"
SHAPE_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 4096}
SHAPE_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0}
"""Llama-3.1-8B's sizes (its config.json), context cut to 8192 (the tiers measure at 4096)."""
VOCAB_8B = 128256
SHARD_BYTES = 5 * 10**9
RUNS = {"1b": {"model": "rand1b", "quants": ["Q8_0", "Q4_K_M"]},
        "8b": {"model": "rand8b", "quants": ["Q8_0", "Q4_K_M", "IQ4_XS"]},
        "moe": {"model": "randmoe", "quants": ["Q8_0", "Q4_K_M", "IQ4_XS"]}}
WHOLE_RUNS = ("8b", "moe")
"""Runs of the whole workflow (package included), not only the stages compared with the CPU."""
MOE_EXPERTS, MOE_EXPERT_COLUMNS = 8, 2816
PYTHON_RSS_BOUND = 1.5e9
"""Bytes: the peak RSS every job written in Python must stay under, whatever the model's size."""
TIERS = {
    "cpu": {"name": "cpu-16t", "threads": 16, "ram_gb": 64, "ctx": 4096, "latency_budget_s": 30},
    "cuda": {"name": "gpu-h200", "threads": 16, "ram_gb": 64, "vram_gb": 141, "gpu_layers": 999, "ctx": 4096,
             "latency_budget_s": 5},
}
H200_BANDWIDTH = 4.8e12
"""Bytes/s: the H200's HBM3e bandwidth by NVIDIA's datasheet (nominal, not measured here)."""


def stages(model: str, quants: list[str]) -> tuple[tuple[str, str], ...]:
    return (("imatrix", f"imatrix/{model}.tsv"), ("reference perplexity", f"reference_logits/{model}.tsv"),
            *((f"KLD {q}", f"validate/{model}-{q}.tsv") for q in quants))


def corpus() -> str:
    """The text the random models' tokenizer is trained on: the calibration and evaluation texts."""
    return (ROOT / "config/data/calibration.txt").read_text() + (ROOT / "config/data/evaluation.txt").read_text()


def make_model_1b(dest: Path, layers: int, hidden: int) -> None:
    from tests.tiny_model import make_tiny_llama

    scale = hidden / SHAPE_1B["hidden_size"]
    shape = {**SHAPE_1B, "num_hidden_layers": layers, "hidden_size": hidden,
             "intermediate_size": int(SHAPE_1B["intermediate_size"] * scale),
             "num_attention_heads": max(1, int(32 * scale)), "num_key_value_heads": max(1, int(8 * scale))}
    make_tiny_llama(dest, corpus(), shape=shape, dtype="float16")


def llama_tensor_shapes(shape: dict, vocab: int) -> dict[str, tuple[int, ...]]:
    """HF names and (rows, columns) of every tensor of a Llama of these sizes."""
    hidden, ffn = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    tensors: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(shape["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        tensors |= {f"{layer}.input_layernorm.weight": (hidden,), f"{layer}.post_attention_layernorm.weight": (hidden,),
                    f"{layer}.self_attn.q_proj.weight": (hidden, hidden), f"{layer}.self_attn.k_proj.weight": (kv, hidden),
                    f"{layer}.self_attn.v_proj.weight": (kv, hidden), f"{layer}.self_attn.o_proj.weight": (hidden, hidden),
                    f"{layer}.mlp.gate_proj.weight": (ffn, hidden), f"{layer}.mlp.up_proj.weight": (ffn, hidden),
                    f"{layer}.mlp.down_proj.weight": (hidden, ffn)}
    return tensors | {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}


def make_model_moe(dest: Path, layers: int, hidden: int) -> None:
    """A random Mixtral (tests/tiny_model.py's, with its two never-routed experts a layer, so the
    imatrix's expert coverage has something to find) of ``layers`` layers of width ``hidden``,
    8 experts of 2,816 columns at width 2,048 (scaled with it), top-2 routing."""
    from tests.tiny_model import make_tiny_mixtral

    make_tiny_mixtral(dest, corpus(), experts=MOE_EXPERTS, shape={
        "hidden_size": hidden, "intermediate_size": MOE_EXPERT_COLUMNS * hidden // SHAPE_1B["hidden_size"],
        "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 256,
        "max_position_embeddings": SHAPE_1B["max_position_embeddings"]})


def make_model_8b(dest: Path, shape: dict = SHAPE_8B, vocab: int = VOCAB_8B) -> None:
    """A BF16 Llama of ``shape`` written shard by shard (a whole 8B model never sits in memory):
    matrices N(0, 0.02) as transformers initialises them, norms 1; drawn on the GPU when there is
    one. The tokenizer is the tests' 512-piece one: the converter pads the vocabulary to ``vocab``
    with unused tokens, so the embedding and output have the real model's 128,256 rows."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaTokenizer

    from tests.tiny_model import train_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    LlamaTokenizer(vocab_file=str(train_tokenizer(corpus(), dest)), legacy=True, add_bos_token=True,
                   add_eos_token=False).save_pretrained(dest)
    LlamaConfig(vocab_size=vocab, **shape, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                architectures=["LlamaForCausalLM"],
                torch_dtype="bfloat16").save_pretrained(dest)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    shards: list[list[str]] = [[]]
    size = 0
    tensors = llama_tensor_shapes(shape, vocab)
    for name, dims in tensors.items():
        nbytes = 2 * int(torch.tensor(dims).prod())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for k, names in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        data = {name: (torch.ones(tensors[name], dtype=torch.bfloat16) if len(tensors[name]) == 1 else
                       (torch.randn(tensors[name], generator=generator, device=device) * 0.02).to(torch.bfloat16).cpu())
                for name in names}
        save_file(data, str(dest / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(names, file)
    total = sum(2 * int(torch.tensor(d).prod()) for d in tensors.values())
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def make_sparse_checkpoint(dest: Path, tokenizer_from: Path, shape: dict, vocab: int, shard_bytes: int = 5 * 10**9) -> int:
    """An HF checkpoint of ``shape`` as BF16 safetensors shards whose headers are real and whose data
    are holes (sparse files: a 70B checkpoint in a few KB of disk), the tokenizer files of
    ``tokenizer_from``; returns the weights' bytes."""
    dest.mkdir(parents=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_from / name, dest / name)
    (dest / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                  "vocab_size": vocab, "torch_dtype": "bfloat16", **shape}))
    shards: list[dict] = [{}]
    for name, dims in llama_tensor_shapes(shape, vocab).items():
        size = 2 * math.prod(dims)
        if shards[-1] and sum(e["bytes"] for e in shards[-1].values()) + size > shard_bytes:
            shards.append({})
        shards[-1][name] = {"dims": list(dims), "bytes": size}
    weight_map, total = {}, 0
    for number, tensors in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, entry in tensors.items():
            header[name] = {"dtype": "BF16", "shape": entry["dims"], "data_offsets": [offset, offset + entry["bytes"]]}
            offset += entry["bytes"]
            weight_map[name] = file
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(dest / file, "wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            handle.truncate(8 + len(raw) + offset)
        total += offset
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    return total


def unjudged(quants: list[str]) -> dict:
    """Config that ships every build of a random-weight model: gates opened, no fallback, and a
    sanity margin no repetition rate can exceed (the greedy text of random weights loops or not by
    chance: on the H200 the random Mixtral's Q4_K_M and IQ4_XS were withheld for loops at 0.93 and
    0.79 where the reference had 0.28, and their speed went unmeasured); an empty output still fails."""
    opened = {"max_delta_ppl_pct": 10000, "max_mean_kld": 100, "min_same_top_pct": 0, "min_size_reduction_pct": 0,
              "min_tg_speedup": 0}
    return {"gates": {"default": opened, "per_quant": dict.fromkeys(quants, opened)}, "fallback": {"remedies": []},
            "sanity": {"repetition_margin": 1}}


def workflow_config(backend: str, model_dir: Path, run: str = "1b") -> dict:
    """Few quants and chunks, so the CPU side ends in minutes; the same work on both sides. The 8B
    and MoE runs are the whole workflow (package included) with gates opened and no fallback: the
    weights are random, so their quality figures decide nothing, and every build is measured and
    packaged."""
    model, quants = RUNS[run]["model"], RUNS[run]["quants"]
    whole = unjudged(quants) if run in WHOLE_RUNS else {}
    return {
        **whole,
        "toolchain": {"backend": backend},
        "models": [{"name": model, "source": {"type": "local", "path": str(model_dir)}}],
        "quants": quants,
        "calibration": {"chunks": 8, "ctx": 512},
        "evaluation": {"chunks": 8, "ctx": 512},
        "tiers": [TIERS[backend]],
        "benchmark": {"pp_tokens": 512, "tg_tokens": 128, "repetitions": 3, "answer_tokens": 64},
    }


def targets(backend: str, run: str = "1b") -> list[str]:
    """What the comparison reads: the imatrix, each quant's KL-divergence run, each file's speed;
    for the 8B and MoE runs, the whole workflow (the default target)."""
    if run in WHOLE_RUNS:
        return []
    tier, model, quants = TIERS[backend]["name"], RUNS[run]["model"], RUNS[run]["quants"]
    return ([f"results/{model}/imatrix/{model}.imatrix.gguf"]
            + [f"results/{model}/validate/{q}.json" for q in quants]
            + [f"results/{model}/speed/{tier}/{name}.json" for name in (REFERENCE, *quants)])


def stage_seconds(run: Path, tsv: str) -> float | None:
    path = run / "results/benchmarks" / tsv
    if not path.exists():
        return None
    return float(next(csv.DictReader(path.open(), delimiter="\t"))["s"])


def bench(run: Path, backend: str, model: str, name: str) -> dict | None:
    path = run / f"results/{model}/speed/{TIERS[backend]['name']}/{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def speed(run: Path, backend: str, model: str, name: str, record: dict | None) -> tuple[dict, bool]:
    """llama-bench's figures for a file: from its speed record, else from llama-bench's own
    output beside the job's log (written before the reference task, so it survives that task's
    failure); and whether they came from there."""
    if record and record.get("measured"):
        return record["llama_bench"], False
    raw = run / f"results/logs/speed/{model}-{TIERS[backend]['name']}-{name}.json"
    try:
        return parse_bench_json(raw.read_text()), True
    except (OSError, ValueError):
        return {}, False


def cell(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def table(cpu: Path, cuda: Path, bandwidth: float, run: str = "1b") -> str:
    model, quants = RUNS[run]["model"], RUNS[run]["quants"]
    lines = ["| stage | CPU s | GPU s | CPU / GPU |", "|---|---|---|---|"]
    for label, tsv in stages(model, quants):
        c, g = stage_seconds(cpu, tsv), stage_seconds(cuda, tsv)
        lines.append(f"| {label} | {cell(c)} | {cell(g)} | {cell(c / g if c and g else None)} |")
    lines += ["", "| file | weights MB | CPU pp t/s | GPU pp t/s | CPU tg t/s | GPU tg t/s | GPU tg × bytes / bandwidth "
              "| VRAM measured MB | VRAM predicted MB | measured / predicted |", "|---|---|---|---|---|---|---|---|---|---|"]
    raw_only, gpus = False, []
    for name in (REFERENCE, *quants):
        gpu_record = bench(cuda, "cuda", model, name)
        (cpu_speed, cpu_raw) = speed(cpu, "cpu", model, name, bench(cpu, "cpu", model, name))
        (gpu_speed, gpu_raw) = speed(cuda, "cuda", model, name, gpu_record)
        raw_only |= cpu_raw or gpu_raw
        gpus = gpus or (gpu_record or {}).get("host", {}).get("gpus", [])
        size = next((s["model_size"] for s in (gpu_speed, cpu_speed) if s), None)
        tg = gpu_speed.get("tg", {}).get("tokens_per_s")
        vram = (gpu_record or {}).get("vram", {})
        lines.append("| " + " | ".join([
            name + ("*" if cpu_raw or gpu_raw else ""), cell(size and size / 1e6, ".0f"),
            cell(cpu_speed.get("pp", {}).get("tokens_per_s")), cell(gpu_speed.get("pp", {}).get("tokens_per_s")),
            cell(cpu_speed.get("tg", {}).get("tokens_per_s")), cell(tg),
            cell(tg and size and tg * size / bandwidth, ".1%"),
            cell(vram.get("measured_bytes") and vram["measured_bytes"] / 1e6, ".0f"),
            cell(vram.get("predicted_bytes") and vram["predicted_bytes"] / 1e6, ".0f"),
            cell(vram.get("measured_over_predicted"), ".2f")]) + " |")
    if raw_only:
        lines += ["", "*: llama-bench's own output; the speed job failed afterwards, in its reference task."]
    lines += ["", f"GPU: {', '.join(gpus) or 'none found'}; bandwidth figure: {bandwidth / 1e12:.2f} TB/s"
              + (" (H200 datasheet, nominal)" if bandwidth == H200_BANDWIDTH else "")
              + ". Weights are random: speed depends on shapes and types, not on values."]
    return "\n".join(lines) + "\n"


def jobs_table(run_dir: Path, model: str) -> str:
    """Every job's wall time and peak RSS (Snakemake's benchmark files), the largest first, then
    the disk predicted at plan time against the disk used (results/{model}/disk.json)."""
    rows = []
    for tsv in sorted((run_dir / "results/benchmarks").glob("*/*.tsv")):
        record = next(csv.DictReader(tsv.open(), delimiter="\t"))
        rss = float(record["max_rss"]) * 2**20 if record["max_rss"] not in ("", "NA", "-") else None
        rows.append((f"{tsv.parent.name}/{tsv.stem}", float(record["s"]), rss))
    lines = ["| job | s | peak RSS MB | over the 1.5 GB bound of Python jobs |", "|---|---|---|---|"]
    for job, seconds, rss in sorted(rows, key=lambda r: -(r[2] or 0)):
        lines.append(f"| {job} | {seconds:.1f} | {cell(rss and rss / 1e6, '.0f')} | "
                     f"{'yes' if rss and rss > PYTHON_RSS_BOUND else ''} |")
    disk = run_dir / f"results/{model}/disk.json"
    if disk.exists():
        record = json.loads(disk.read_text())
        lines += ["", f"Disk under results/: predicted {record['predicted_bytes'] / 1e9:.2f} GB, "
                  f"used {record['used_bytes'] / 1e9:.2f} GB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model", help="make the random-weight Llama")
    model.add_argument("dest", type=Path)
    model.add_argument("--shape", choices=sorted(RUNS), default="1b")
    model.add_argument("--layers", type=int, default=SHAPE_1B["num_hidden_layers"])
    model.add_argument("--hidden", type=int, default=SHAPE_1B["hidden_size"], help="other sizes scale with it")
    config = sub.add_parser("config", help="write one side's workflow config; print its targets")
    config.add_argument("--backend", choices=sorted(TIERS), required=True)
    config.add_argument("--model-dir", type=Path, required=True)
    config.add_argument("--out", type=Path, required=True)
    config.add_argument("--shape", choices=sorted(RUNS), default="1b")
    report = sub.add_parser("table", help="both sides' figures side by side (markdown)")
    report.add_argument("--cpu", type=Path, required=True, help="working directory of the CPU run (may be absent)")
    report.add_argument("--cuda", type=Path, required=True, help="working directory of the CUDA run")
    report.add_argument("--shape", choices=sorted(RUNS), default="1b")
    report.add_argument("--bandwidth", type=float, default=H200_BANDWIDTH, help="GPU memory bandwidth, bytes/s")
    ns = parser.parse_args(argv)
    if ns.command == "model":
        if ns.shape == "8b":
            make_model_8b(ns.dest)
        elif ns.shape == "moe":
            make_model_moe(ns.dest, ns.layers, ns.hidden)
        else:
            make_model_1b(ns.dest, ns.layers, ns.hidden)
    elif ns.command == "config":
        ns.out.write_text(json.dumps(workflow_config(ns.backend, ns.model_dir.resolve(), ns.shape), indent=2) + "\n")
        print(" ".join(targets(ns.backend, ns.shape)))
    else:
        print(table(ns.cpu, ns.cuda, ns.bandwidth, ns.shape), end="")
        model = RUNS[ns.shape]["model"]
        for side, run_dir in (("CPU", ns.cpu), ("GPU", ns.cuda)):
            if (run_dir / "results/benchmarks").is_dir():
                print(f"\n{side} side, every job:\n\n" + jobs_table(run_dir, model), end="")


if __name__ == "__main__":
    main()
