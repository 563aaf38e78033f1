"""Do the speeds the workflow records match llama-bench run by hand on the same files?

For every benchmark record under results/{model}/speed/{tier}/ of a finished run (measured
tiers only), this runs llama-bench by hand with the same file, threads, GPU layers, pp/tg sizes
and repetitions, and prints the workflow's tokens/s, the hand run's, their ratio, and each side's
run-to-run spread (stddev / mean). A measurement, not a gate: it exits 0 unless something crashed.

    .venv/bin/python -m benchmarks.bench_vs_hand --workdir . --model smollm2-135m [--tier laptop-8gb]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from workflow_scripts.llama_tools import parse_bench_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--model", required=True)
    parser.add_argument("--tier", help="only this tier")
    ns = parser.parse_args()
    results = ns.workdir / "results"
    stamp = json.loads((results / "toolchain" / "llama.cpp.json").read_text())
    settings_seen = None
    print(f"{'tier':18} {'file':34} {'test':4} {'workflow t/s':>14} {'hand t/s':>14} {'ratio':>6}")
    for record_path in sorted((results / ns.model / "speed").glob("*/*.json")):
        record = json.loads(record_path.read_text())
        if not record["measured"] or (ns.tier and record["tier"]["name"] != ns.tier):
            continue
        bench = record["llama_bench"]
        gguf = next(p for p in (results / ns.model / "quant" / record["file"], results / ns.model / "reference" / record["file"])
                    if p.exists())
        cmd = [str(Path(stamp["bin_dir"]) / "llama-bench"), "-m", str(gguf), "-o", "json", "-t", str(bench["threads"]),
               "-ngl", str(bench["gpu_layers"]), "-p", str(bench["pp"]["tokens"]), "-n", str(bench["tg"]["tokens"]),
               "-r", str(len(bench["tg"]["samples"]))]
        settings_seen = cmd[5:]
        hand = parse_bench_json(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        for test in ("pp", "tg"):
            ours, theirs = bench[test], hand[test]
            print(f"{record['tier']['name']:18} {record['file']:34} {test:4} "
                  f"{ours['tokens_per_s']:8.1f} ±{100 * ours['stddev'] / ours['tokens_per_s']:3.0f}% "
                  f"{theirs['tokens_per_s']:8.1f} ±{100 * theirs['stddev'] / theirs['tokens_per_s']:3.0f}% "
                  f"{ours['tokens_per_s'] / theirs['tokens_per_s']:6.2f}")
    print(f"llama-bench settings of the last row: {' '.join(settings_seen or [])}")


if __name__ == "__main__":
    main()
