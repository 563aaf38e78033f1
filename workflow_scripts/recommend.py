"""Speed and size gates, and which file to run on each hardware tier, from measured figures only.

A build ships when it passed its quality gate (validation report) and its size and speed gates
here: size reduction against the reference, and generation speed-up over the reference on every
tier this host measured (failed only when below the gate even within one standard deviation of
both measurements: run-to-run noise must not decide what ships). Per tier, the recommendation is taken among the shipped builds that fit
the tier's memory (predicted) and meet its latency budget (measured, where the tier was measured),
ordered by the tier's priority; the runner-up and the reasons for every exclusion are kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.errors import run_cli
from workflow_scripts.memory_fit import fits


def tier_figures(bench: dict, reference: dict, tier: dict) -> dict[str, Any]:
    """One build on one tier: measured speeds, speed-ups over the reference, memory fit and latency."""
    fit, why = fits(bench["memory"], tier)
    row: dict[str, Any] = {"measured": bench["measured"], "fits": fit, "memory": why,
                           "predicted_ram_bytes": bench["memory"]["ram_bytes"], "predicted_vram_bytes": bench["memory"]["vram_bytes"]}
    if not bench["measured"]:
        return {**row, "reason": bench["reason"]}
    lb, ref = bench["llama_bench"], reference["llama_bench"]
    return {**row, "threads": bench["threads"], "notes": bench["notes"],
            "pp_tps": lb["pp"]["tokens_per_s"], "pp_stddev": lb["pp"]["stddev"],
            "tg_tps": lb["tg"]["tokens_per_s"], "tg_stddev": lb["tg"]["stddev"],
            "pp_speedup": round(lb["pp"]["tokens_per_s"] / ref["pp"]["tokens_per_s"], 3),
            "tg_speedup": round(lb["tg"]["tokens_per_s"] / ref["tg"]["tokens_per_s"], 3),
            # The most the speed-up could be within one standard deviation of both measurements.
            "tg_speedup_high": round((lb["tg"]["tokens_per_s"] + lb["tg"]["stddev"])
                                     / max(ref["tg"]["tokens_per_s"] - ref["tg"]["stddev"], 1e-9), 3),
            **{key: bench["task"][key] for key in ("load_s", "ttft_s", "latency_s", "peak_rss_bytes")},
            "within_latency_budget": bench["task"]["latency_s"] <= tier["latency_budget_s"]}


def speed_verdict(build: dict, gate: dict) -> list[str]:
    """Reasons the build misses its size or speed gate (empty: passed)."""
    reasons = []
    if "min_size_reduction_pct" in gate and build["size_reduction_pct"] < gate["min_size_reduction_pct"]:
        reasons.append(f"size reduction {build['size_reduction_pct']:.1f} % < {gate['min_size_reduction_pct']} %")
    for tier, row in build["tiers"].items():
        # Noise must not fail a build: only a speed-up below the gate even at one stddev's favour does.
        if row["measured"] and "min_tg_speedup" in gate and row["tg_speedup_high"] < gate["min_tg_speedup"]:
            reasons.append(f"generation speed-up {row['tg_speedup']:.2f}x (at most {row['tg_speedup_high']:.2f}x within "
                           f"one stddev) < {gate['min_tg_speedup']}x on {tier}")
    return reasons


def _order(candidates: list[str], builds: dict, quality: dict, tier: dict, measured: bool) -> tuple[list[str], str]:
    """Candidates best first by the tier's priority, and the rule that ordered them."""
    def by_quality(name: str):
        return (quality[name]["kld_mean"], builds[name]["file_bytes"])

    def by_speed(name: str):
        return (-builds[name]["tiers"][tier["name"]]["tg_tps"],) if measured else (builds[name]["file_bytes"],)

    speed_rule = "fastest generation" if measured else "smallest file (tier not measured)"
    if tier["priority"] == "quality":
        return sorted(candidates, key=by_quality), "lowest mean KLD"
    if tier["priority"] == "speed":
        return sorted(candidates, key=by_speed), speed_rule
    band = [n for n in candidates if quality[n]["kld_mean"] <= tier["max_kld"]]
    if not band:
        return sorted(candidates, key=by_quality), f"lowest mean KLD (none within the balanced band KLD ≤ {tier['max_kld']})"
    rest = sorted((n for n in candidates if n not in band), key=by_quality)
    return sorted(band, key=by_speed) + rest, f"{speed_rule} with mean KLD ≤ {tier['max_kld']}"


def recommend(tier: dict, shipped: list[str], builds: dict, quality: dict) -> dict[str, Any]:
    """The build to run on ``tier``, the runner-up, and why every other one was left out."""
    rows = {name: builds[name]["tiers"][tier["name"]] for name in shipped}
    measured = all(row["measured"] for row in rows.values()) and bool(rows)
    excluded = {}
    for name, row in rows.items():
        if not row["fits"]:
            excluded[name] = f"does not fit: {row['memory']}"
        elif measured and not row["within_latency_budget"]:
            excluded[name] = f"reference task took {row['latency_s']:.2f} s > budget {tier['latency_budget_s']} s"
    candidates = [name for name in shipped if name not in excluded]
    ordered, rule = _order(candidates, builds, quality, tier, measured)
    choice = ordered[0] if ordered else None
    why = (f"{rule} among {len(candidates)} shipped file(s) that fit {tier['name']}"
           + (f" and meet its {tier['latency_budget_s']} s budget" if measured else "")) if choice else \
        "no shipped file fits this tier" + (" within its latency budget" if measured else "")
    return {"measured": measured, "priority": tier["priority"], "choice": choice,
            "runner_up": ordered[1] if len(ordered) > 1 else None, "why": why, "excluded": excluded}


def speed_report(model: str, validation: dict, benches: dict[tuple[str, str], dict], reference: str,
                 tiers: list[dict]) -> dict[str, Any]:
    """Size and speed gates per build, final ships, and a recommendation per tier."""
    ref_bytes = next(iter(b for (name, _), b in benches.items() if name == reference))["file_bytes"]
    quality = validation["quants"]
    builds = {}
    for name in (b for b in validation["ships"].values() if b):
        tiers_rows = {t["name"]: tier_figures(benches[(name, t["name"])], benches[(reference, t["name"])], t) for t in tiers}
        size = benches[(name, tiers[0]["name"])]["file_bytes"]
        builds[name] = {"file_bytes": size, "size_reduction_pct": round(100 * (1 - size / ref_bytes), 2), "tiers": tiers_rows}
        reasons = speed_verdict(builds[name], quality[name]["gate"])
        builds[name].update(verdict="failed" if reasons else "passed", reasons=reasons)
    ships = {quant: (name if name and builds[name]["verdict"] == "passed" else None)
             for quant, name in validation["ships"].items()}
    shipped = [name for name in ships.values() if name]
    return {
        "model": model,
        "hosts": [json.loads(h) for h in sorted({json.dumps(b["host"], sort_keys=True) for b in benches.values()})],
        "reference": {"name": reference, "file_bytes": ref_bytes,
                      "tiers": {t["name"]: tier_figures(benches[(reference, t["name"])], benches[(reference, t["name"])], t)
                                for t in tiers}},
        "builds": builds,
        "ships": ships,
        "withheld": {quant: (["quality gate: see validation_report.json"] if validation["ships"][quant] is None
                             else builds[validation["ships"][quant]]["reasons"])
                     for quant, name in ships.items() if name is None},
        "recommendations": {t["name"]: recommend(t, shipped, builds, quality) for t in tiers},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--validation", type=Path, required=True)
    parser.add_argument("--benchmarks", type=Path, nargs="+", required=True,
                        help="results/{model}/benchmark/{tier}/{build}.json files")
    parser.add_argument("--reference", required=True, help="the reference's name among the benchmarked files (e.g. F16)")
    parser.add_argument("--tiers-json", required=True)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    benches = {(p.stem, p.parent.name): json.loads(p.read_text()) for p in ns.benchmarks}
    result = speed_report(ns.model, json.loads(ns.validation.read_text()), benches, ns.reference, json.loads(ns.tiers_json))
    atomic_write_text(ns.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
