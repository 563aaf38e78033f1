"""Speed and memory of one GGUF on one hardware tier, measured on this host and labelled with it.

``llama-bench -o json`` gives prompt-processing and generation tokens/s (mean ± stddev over the
repetitions), of the reference too when it is given, in the same run just before the file, so that
the speed-up is a ratio of two figures taken side by side; a child process running llama-cpp-python on the toolchain's library gives model load
time, time to first token and the end-to-end latency of the reference task, and the kernel's
peak resident memory of that child. A GPU tier on a host without a GPU (or with a CPU-only
toolchain) is recorded as not measured, with the reason: never estimated, never faked. A tier
asking for more threads than the host has runs with the host's cores, and says so. The memory the
tier would need is predicted from the file (memory_fit) and set beside the measured peak; on a GPU
tier the child's GPU memory (nvidia-smi) is set beside the predicted VRAM, with their ratio. Only
what changes a measurement (threads, GPU layers, context) is passed in: a tier's memory size,
budget or priority is judged later (recommend), without measuring again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gpu import host_gpus, process_memory_bytes, used_memory_bytes
from workflow_scripts.llama_tools import parse_bench_json_per_model
from workflow_scripts.memory_fit import model_shape, predict
from workflow_scripts.provenance import host_info
from workflow_scripts.tool_step import failure, run_logged, tool_path


def unmeasurable(tier: dict, stamp: dict, gpus: list[str]) -> str | None:
    """Why this host cannot measure the tier, or None."""
    if not tier["gpu_layers"]:
        return None
    if not gpus:
        return "GPU tier, and this host has no NVIDIA GPU"
    if stamp.get("backend") != "cuda":
        return f"GPU tier, and the toolchain was built for {stamp.get('backend')} (set toolchain.backend: cuda)"
    return None


def run_llama_bench(stamp: Path, ggufs: list[Path], tier: dict, threads: int, settings: dict, log: Path) -> dict[str, dict]:
    """One llama-bench run over the files, one after the other: each file's record, keyed by its path."""
    out = log.with_suffix(".json")
    cmd = [str(tool_path(stamp, "llama-bench")), *(arg for gguf in ggufs for arg in ("-m", str(gguf))), "-o", "json",
           "-t", str(threads), "-ngl", str(tier["gpu_layers"]), "-p", str(settings["pp_tokens"]),
           "-n", str(settings["tg_tokens"]), "-r", str(settings["repetitions"])]
    what = " and ".join(map(str, ggufs))
    with open(out, "w") as stdout, open(log, "w") as stderr:
        proc = subprocess.run(cmd, stdout=stdout, stderr=stderr)
    if proc.returncode != 0:
        run_logged(cmd, log, "llama-bench", f"the speed of {what}")  # re-run for its logged error with the tail
    try:
        records = parse_bench_json_per_model(out.read_text())
    except ValueError as err:
        raise UserError(f"{out}: {err}") from None
    if set(records) != {str(gguf) for gguf in ggufs}:
        raise UserError(f"{out}: llama-bench measured {sorted(records)}, not {what}")
    return records


def run_task(stamp: dict, gguf: Path, tier: dict, threads: int, settings: dict) -> dict[str, Any]:
    """The reference task in a fresh child process, so its peak RSS is the task's alone."""
    request = {"gguf": str(gguf), "ctx": tier["ctx"], "threads": threads, "gpu_layers": tier["gpu_layers"],
               "prompt": settings["prompt"], "answer_tokens": settings["answer_tokens"]}
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": stamp["bin_dir"]}
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.speed", "--task", json.dumps(request)],
                          capture_output=True, env=env, text=True)
    if proc.returncode != 0:
        raise UserError(f"reference task on {gguf} {failure(proc.returncode)}; its last output:\n{proc.stderr[-2000:]}"
                        + static_runtime_hint(stamp, proc.returncode))
    return json.loads(proc.stdout)


def static_runtime_hint(stamp: dict, returncode: int) -> str:
    """The likely cause of a crashed task when the toolchain carries its own static libstdc++."""
    if returncode >= 0 or stamp.get("libstdcxx") != "static":
        return ""
    compilers = stamp.get("compilers", {})
    compiler = " or ".join(compilers[k] for k in ("cxx", "cuda_host") if k in compilers) or "its C++ compiler"
    return (f"\nA library of this toolchain (libllama or a ggml backend) has the C++ runtime linked in statically "
            f"(by {compiler}), and llama-cpp-python can crash loading it beside another libstdc++. Build the "
            "toolchain with compilers that link libstdc++ as a shared library (e.g. CC=/usr/bin/gcc "
            "CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++).")


def task(request: dict) -> dict[str, Any]:
    """Inside the child: load, stream the answer, time first token and the whole answer; the peak
    resident memory is the kernel's figure for this process (getrusage); with layers on the GPU,
    its GPU memory is read while the model is still loaded."""
    import resource

    from llama_cpp import Llama

    used_before = used_memory_bytes() if request["gpu_layers"] else 0
    started = time.perf_counter()
    # verbose: llama.cpp logs to this child's stderr, which the parent shows only if the task fails.
    llm = Llama(model_path=request["gguf"], n_ctx=request["ctx"], n_threads=request["threads"],
                n_gpu_layers=request["gpu_layers"], use_mmap=True, seed=0, verbose=True)
    loaded = time.perf_counter()
    first = None
    tokens = 0
    # End of text is banned so every model answers with the same number of tokens.
    for chunk in llm.create_completion(request["prompt"], max_tokens=request["answer_tokens"], temperature=0.0, stream=True,
                                   logit_bias={llm.token_eos(): float("-inf")}):
        first = first or time.perf_counter()
        tokens += chunk["choices"][0]["finish_reason"] is None  # the closing chunk carries no token
    done = time.perf_counter()
    result = {"load_s": round(loaded - started, 4), "ttft_s": round(first - loaded, 4), "latency_s": round(done - loaded, 4),
              "answer_tokens": tokens, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if request["gpu_layers"]:
        result["vram"] = vram_reading(process_memory_bytes(os.getpid()), used_memory_bytes() - used_before)
    return result


def vram_reading(process_bytes: int | None, growth_bytes: int) -> dict[str, Any]:
    """The task's GPU memory: the driver's figure for the process, else how much the GPUs' memory in
    use grew while the model was loaded (includes any other program's growth meanwhile)."""
    if process_bytes is not None:
        return {"bytes": process_bytes, "method": "nvidia-smi used_memory of the task process"}
    return {"bytes": growth_bytes, "method": "growth of nvidia-smi memory.used during the task"}


def vram_check(prediction: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Predicted VRAM (memory_fit) beside the measured, so the fits-in-VRAM verdict can be trusted
    or its model corrected: a ratio above 1 means the prediction was too small."""
    predicted = prediction["vram_bytes"]
    return {"predicted_bytes": predicted, "measured_bytes": measured["bytes"], "method": measured["method"],
            "measured_over_predicted": round(measured["bytes"] / predicted, 3) if predicted else None}


def measure(stamp_path: Path, gguf: Path, tier: dict, settings: dict, log: Path,
            reference: Path | None = None) -> dict[str, Any]:
    stamp = json.loads(stamp_path.read_text())
    prediction = predict(model_shape(gguf), tier["ctx"], tier["gpu_layers"])
    gpus = host_gpus()
    result: dict[str, Any] = {"tier": tier, "file": gguf.name, "file_bytes": gguf.stat().st_size, "memory": prediction,
                              "host": {**host_info(), "gpus": gpus}, "llama_cpp_commit": stamp.get("llama_cpp_commit")}
    reason = unmeasurable(tier, stamp, gpus)
    if reason:
        return {**result, "measured": False, "reason": reason}
    threads = min(tier["threads"], os.cpu_count() or 1)
    benches = run_llama_bench(stamp_path, [reference, gguf] if reference else [gguf], tier, threads, settings, log)
    # The reference measured in the same run, just before: its speed-up is not swayed by how busy the
    # host was minutes apart, when the reference's own job ran (seen: 0.91x in one run, 1.37x in another).
    paired = {"reference_llama_bench": {"file": reference.name, **benches[str(reference)]}} if reference else {}
    answer = run_task(stamp, gguf, tier, threads, settings)
    notes = [f"tier asks for {tier['threads']} threads, host has {threads} cores"] if threads < tier["threads"] else []
    vram = {"vram": vram_check(prediction, answer["vram"])} if "vram" in answer else {}
    return {**result, "measured": True, "threads": threads, "notes": notes, "llama_bench": benches[str(gguf)], **paired,
            "task": answer, **vram}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", help=argparse.SUPPRESS)  # the child process of run_task
    parser.add_argument("--stamp", type=Path)
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--reference-gguf", type=Path, nargs="?",
                        help="measure this file (the reference) in the same llama-bench run, just before --gguf")
    parser.add_argument("--tier-json")
    parser.add_argument("--settings-json")
    parser.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args(argv)
    if ns.task:
        print(json.dumps(task(json.loads(ns.task))))
        return
    for path in ns.verify:
        verify(path)
    result = measure(ns.stamp, ns.gguf, json.loads(ns.tier_json), json.loads(ns.settings_json), ns.log,
                     ns.reference_gguf)
    atomic_write_text(ns.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
