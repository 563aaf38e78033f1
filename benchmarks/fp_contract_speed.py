"""Does deterministic floating point (-ffp-contract=off) cost inference speed?

The toolchain compiles llama.cpp's quantization code (ggml-base) with -ffp-contract=off so
quantization gives the same bytes on every machine. This benchmark builds the same llama.cpp
twice in one run — as the toolchain does, and unpatched — quantizes one model with each, and runs
llama-bench (pp256, tg64) on both builds alternately (A B A B) to spread noise. It prints both
builds' tokens/s, the ratio, and whether the two builds' quants are byte-identical. It is a
measurement, not a gate: it exits 0 unless something crashed.

    python -m benchmarks.fp_contract_speed --src <llama.cpp tree> --work /tmp/fpc --threads 16

Without --model it writes a random-weight llama GGUF of SmolLM2-135M's shape (or --shape 1b);
speed does not depend on the weight values.

With --compare OLD NEW it builds nothing and measures two existing builds (directories with
bin/llama-bench and bin/llama-quantize, e.g. two cached toolchain builds) the same way, OLD as
the baseline: e.g. a build with upstream flags everywhere against one that compiles code off the
hot path with lower optimisation (toolchain.COLD_CODE_O1). --src defaults to NEW's source tree.

    python -m benchmarks.fp_contract_speed --compare ~/.cache/gguf-forge/llama.cpp/<old>/build \
        /tmp/cache/llama.cpp/<new>/build --work /tmp/cmp --model reference-F16.gguf
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from workflow_scripts.toolchain import DETERMINISTIC_FP, apply_patches, cmake_args

SHAPES = {
    "135m": dict(layers=30, hidden=576, heads=9, kv_heads=3, ffn=1536, vocab=49152),
    "1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=32000),
}
TARGETS = ["llama-bench", "llama-quantize"]


def build(src: Path, dest: Path, args: list[str], jobs: int) -> float:
    started = time.monotonic()
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    log = open(dest.with_suffix(".log"), "w")
    subprocess.run(["cmake", "-S", str(src), "-B", str(dest), *generator, *args], check=True, stdout=log, stderr=log)
    subprocess.run(["cmake", "--build", str(dest), "-j", str(jobs), "--target", *TARGETS], check=True, stdout=log, stderr=log)
    return time.monotonic() - started


def random_llama_gguf(src: Path, out: Path, shape: dict) -> None:
    """A llama GGUF with random F16 weights and a minimal SPM vocabulary (enough for llama-bench)."""
    sys.path.insert(0, str(src / "gguf-py"))
    import numpy as np
    from gguf import GGUFWriter, TokenType

    rng = np.random.default_rng(0)
    h, ffn, vocab, layers = shape["hidden"], shape["ffn"], shape["vocab"], shape["layers"]
    kv = h // shape["heads"] * shape["kv_heads"]
    writer = GGUFWriter(out, "llama")
    writer.add_block_count(layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(h)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(h // shape["heads"])
    writer.add_file_type(1)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"▁tok{i}" for i in range(vocab - len(tokens))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * (vocab - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    writer.add_tensor("token_embd.weight", mat(vocab, h))
    writer.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    writer.add_tensor("output.weight", mat(vocab, h))
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(p + "attn_q.weight", mat(h, h))
        writer.add_tensor(p + "attn_k.weight", mat(kv, h))
        writer.add_tensor(p + "attn_v.weight", mat(kv, h))
        writer.add_tensor(p + "attn_output.weight", mat(h, h))
        writer.add_tensor(p + "ffn_gate.weight", mat(ffn, h))
        writer.add_tensor(p + "ffn_up.weight", mat(ffn, h))
        writer.add_tensor(p + "ffn_down.weight", mat(h, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def bench(bin_dir: Path, model: Path, threads: int, extra: list[str] = ()) -> dict[str, tuple[float, float]]:
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(model), "-p", "256", "-n", "64", "-r", "5",
                          "-t", str(threads), "-o", "json", *extra], check=True, capture_output=True, text=True).stdout
    results = {}
    for row in json.loads(out):
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        results[test] = (row["avg_ts"], row["stddev_ts"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="unpatched llama.cpp tree (default with --compare: NEW's)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                        help="measure these two existing build directories instead of building")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--model", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    parser.add_argument("--quants", nargs="+", default=["Q4_K_M", "Q8_0"])
    parser.add_argument("--bench-arg", action="append", default=[],
                        help="extra llama-bench argument for both builds, e.g. --bench-arg=--repack --bench-arg=0")
    ns = parser.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    if ns.compare:
        old, new = (p.resolve() for p in ns.compare)
        labels = ("old", "new")
        builds = {"old": old, "new": new}
        src = ns.src or new.parent / "src"
        for name, path in builds.items():
            print(f"{name}: {path}", flush=True)
    else:
        if ns.src is None:
            parser.error("--src is required unless --compare is given")
        src = ns.src
        if DETERMINISTIC_FP.text in (src / DETERMINISTIC_FP.path).read_text():
            raise SystemExit(f"{src} is already patched; give the unpatched llama.cpp tree")
        patched = ns.work / "src-patched"
        shutil.rmtree(patched, ignore_errors=True)
        shutil.copytree(src, patched, symlinks=True)
        apply_patches(patched, (DETERMINISTIC_FP,))
        labels = ("without", "with")  # baseline first
        builds = {"with": ns.work / "build-with", "without": ns.work / "build-without"}
        for name, tree in (("with", patched), ("without", src)):
            seconds = build(tree, builds[name], cmake_args("cpu", []), ns.jobs)
            print(f"build {name:7s} -ffp-contract=off: {seconds:.0f} s ({ns.jobs} jobs)", flush=True)
    base, other = labels
    model = ns.model
    if model is None:
        model = ns.work / f"random-{ns.shape}-F16.gguf"
        random_llama_gguf(src, model, SHAPES[ns.shape])
        print(f"model: random weights, {ns.shape} llama shape (speed does not depend on weight values)")
    quants = {}
    for quant in ns.quants:
        for name in labels:
            out = ns.work / f"{quant}-{name}.gguf"
            subprocess.run([str(builds[name] / "bin/llama-quantize"), "--allow-requantize", str(model), str(out),
                            quant, str(ns.threads)], check=True, capture_output=True)
            quants[(quant, name)] = out
        digests = {name: sha256(quants[(quant, name)]) for name in labels}
        print(f"{quant}: quantized by both builds, byte-identical: {digests[base] == digests[other]} "
              f"(sha256 {digests[base][:16]}, {digests[other][:16]})")
    rows = []
    for quant in ns.quants:
        runs = {base: [], other: []}
        for name in (base, other, base, other):
            runs[name].append(bench(builds[name] / "bin", quants[(quant, other)], ns.threads, ns.bench_arg))
        for test in runs[other][0]:
            mean = {n: sum(r[test][0] for r in runs[n]) / len(runs[n]) for n in runs}
            spread = {n: max(r[test][1] / r[test][0] for r in runs[n]) for n in runs}
            rows.append((quant, test, mean[base], mean[other], mean[other] / mean[base], max(spread.values())))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.machine())
    print(f"\nhost: {cpu}, {os.cpu_count()} cores, llama-bench -t {ns.threads} {' '.join(ns.bench_arg)}".rstrip()
          + ", 2 x 5 repetitions per build")
    ratio = f"{other}/{base}"
    print(f"{'quant':8s} {'test':6s} {'t/s ' + base:>12s} {'t/s ' + other:>10s} {ratio:>13s} {'max sd/mean':>12s}")
    for quant, test, base_ts, other_ts, r, sd in rows:
        print(f"{quant:8s} {test:6s} {base_ts:12.1f} {other_ts:10.1f} {r:13.3f} {sd:12.3f}")


if __name__ == "__main__":
    main()
