"""Speed and size gates, and which file to run on each hardware tier, from measured figures only.

A build ships when it passed its quality gate (validation report) and its size and speed gates
here: size reduction against the reference, and generation speed-up over the reference on every
tier this host measured (failed only when below the gate even within one standard deviation of
both measurements: run-to-run noise must not decide what ships). Per tier, the recommendation is taken among the shipped builds that fit
the tier's memory (predicted) and meet its latency budget (measured, where the tier was measured),
ordered by the tier's priority; the runner-up and the reasons for every exclusion are kept.

Generation speeds that differ by no more than the measurement noise are a tie, not an order, so
that measuring again does not change the answer: two builds tie when
|a − b| ≤ max(TIE_STDDEVS × sqrt(sa² + sb²), benchmark.tie_floor_pct % × max(a, b)), with a and b
llama-bench's mean tg tokens/s and sa, sb its standard deviations over the repetitions (the floor
covers run-to-run variation, which one run's repetitions do not show, and a stddev of 0 or missing).
Among the builds tied with the fastest one left, the lower mean KLD goes first, then the smaller
file; the recommendation says which builds tied and what broke the tie.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.errors import run_cli
from workflow_scripts.memory_fit import fits

# Standard deviations of the difference between two speeds that still count as noise.
TIE_STDDEVS = 2.0
# benchmark.tie_floor_pct's default in the schema (a test keeps the two equal).
DEFAULT_TIE_FLOOR_PCT = 3.0
TIE_BREAK = "lower mean KLD, then smaller file"


def tier_figures(bench: dict, reference: dict, tier: dict) -> dict[str, Any]:
    """One build on one tier: measured speeds, speed-ups over the reference, memory fit and latency."""
    fit, why = fits(bench["memory"], tier)
    row: dict[str, Any] = {"measured": bench["measured"], "fits": fit, "memory": why,
                           "predicted_ram_bytes": bench["memory"]["ram_bytes"], "predicted_vram_bytes": bench["memory"]["vram_bytes"]}
    if not bench["measured"]:
        return {**row, "reason": bench["reason"]}
    # The reference measured in the same llama-bench run where there is one (a quant's job), else its own job.
    lb, ref = bench["llama_bench"], bench.get("reference_llama_bench", reference["llama_bench"])
    spread, ref_spread = lb["tg"]["stddev"] or 0.0, ref["tg"]["stddev"] or 0.0  # None: not given, taken as 0
    return {**row, "threads": bench["threads"], "notes": bench["notes"],
            "pp_tps": lb["pp"]["tokens_per_s"], "pp_stddev": lb["pp"]["stddev"],
            "tg_tps": lb["tg"]["tokens_per_s"], "tg_stddev": lb["tg"]["stddev"],
            "reference_tg_tps": ref["tg"]["tokens_per_s"],
            "speedup_against": "reference_in_same_run" if "reference_llama_bench" in bench else "reference_job",
            "pp_speedup": round(lb["pp"]["tokens_per_s"] / ref["pp"]["tokens_per_s"], 3),
            "tg_speedup": round(lb["tg"]["tokens_per_s"] / ref["tg"]["tokens_per_s"], 3),
            # The most the speed-up could be within one standard deviation of both measurements.
            "tg_speedup_high": round((lb["tg"]["tokens_per_s"] + spread) / max(ref["tg"]["tokens_per_s"] - ref_spread, 1e-9), 3),
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


def speed_tolerance(a: dict, b: dict, floor_pct: float) -> float:
    """The largest difference in generation tokens/s between two tier rows that is still noise."""
    spread = TIE_STDDEVS * math.hypot(a.get("tg_stddev") or 0.0, b.get("tg_stddev") or 0.0)
    return max(spread, floor_pct / 100 * max(a["tg_tps"], b["tg_tps"]))


def same_speed(a: dict, b: dict, floor_pct: float) -> bool:
    """Whether two tier rows generate equally fast within the measurement noise."""
    return abs(a["tg_tps"] - b["tg_tps"]) <= speed_tolerance(a, b, floor_pct)


def _tie_record(tied: list[str], fastest: str, rows: dict, builds: dict, quality: dict, floor_pct: float) -> dict:
    """Which builds tied with the nominally fastest, and which of the tie-break's keys decided."""
    winner, second = tied[0], tied[1]
    if quality[winner]["kld_mean"] != quality[second]["kld_mean"]:
        decided = "lower mean KLD"
    elif builds[winner]["file_bytes"] != builds[second]["file_bytes"]:
        decided = "smaller file (equal mean KLD)"
    else:
        decided = "name (equal mean KLD and file size)"
    return {"builds": {name: {"tg_tps": rows[name]["tg_tps"], "tg_stddev": rows[name]["tg_stddev"],
                              "kld_mean": quality[name]["kld_mean"], "file_bytes": builds[name]["file_bytes"]}
                       for name in tied},
            "nominally_fastest": fastest, "tie_break": TIE_BREAK, "decided_by": decided,
            "rule": f"|a - b| <= max({TIE_STDDEVS:g} x sqrt(sa^2 + sb^2), {floor_pct:g} % of the faster)"}


def _by_speed(names: list[str], rows: dict, builds: dict, quality: dict, floor_pct: float) -> tuple[list[str], dict | None]:
    """Fastest first, where the difference is real: each place goes to the best by the tie-break among
    the builds left that tie with the fastest of them; the tie that decided the first place, or None."""
    def tie_break(name: str):
        return (quality[name]["kld_mean"], builds[name]["file_bytes"], name)

    left = sorted(names, key=lambda name: (-rows[name]["tg_tps"], name))
    ordered, first_tie = [], None
    while left:
        tied = sorted((name for name in left if same_speed(rows[left[0]], rows[name], floor_pct)), key=tie_break)
        if not ordered and len(tied) > 1:
            first_tie = _tie_record(tied, left[0], rows, builds, quality, floor_pct)
        ordered.append(tied[0])
        left.remove(tied[0])
    return ordered, first_tie


def _order(candidates: list[str], builds: dict, quality: dict, tier: dict, measured: bool,
           floor_pct: float) -> tuple[list[str], str, dict | None]:
    """Candidates best first by the tier's priority, the rule that ordered them, and the speed tie
    that decided the first place (None when no tie did)."""
    def by_quality(name: str):
        return (quality[name]["kld_mean"], builds[name]["file_bytes"])

    def by_speed(names: list[str]) -> tuple[list[str], dict | None]:
        if not measured:
            return sorted(names, key=lambda name: builds[name]["file_bytes"]), None
        rows = {name: builds[name]["tiers"][tier["name"]] for name in names}
        return _by_speed(names, rows, builds, quality, floor_pct)

    speed_rule = "fastest generation" if measured else "smallest file (tier not measured)"
    if tier["priority"] == "quality":
        return sorted(candidates, key=by_quality), "lowest mean KLD", None
    if tier["priority"] == "speed":
        fastest, tie = by_speed(candidates)
        return fastest, speed_rule, tie
    band = [n for n in candidates if quality[n]["kld_mean"] <= tier["max_kld"]]
    if not band:
        return sorted(candidates, key=by_quality), f"lowest mean KLD (none within the balanced band KLD ≤ {tier['max_kld']})", None
    rest = sorted((n for n in candidates if n not in band), key=by_quality)
    fastest, tie = by_speed(band)
    return fastest + rest, f"{speed_rule} with mean KLD ≤ {tier['max_kld']}", tie


def _tie_words(tie: dict) -> str:
    tied = ", ".join(f"{name} {row['tg_tps']:.1f} ± {row['tg_stddev'] or 0:.1f}" for name, row in tie["builds"].items())
    return f"; tied on generation speed within noise ({tied} tokens/s), so the {tie['decided_by']} decided"


def recommend(tier: dict, shipped: list[str], builds: dict, quality: dict,
              tie_floor_pct: float = DEFAULT_TIE_FLOOR_PCT) -> dict[str, Any]:
    """The build to run on ``tier``, the runner-up, why every other one was left out, and the speed
    tie that decided the choice (``speed_tie``, None when none did)."""
    rows = {name: builds[name]["tiers"][tier["name"]] for name in shipped}
    measured = all(row["measured"] for row in rows.values()) and bool(rows)
    excluded = {}
    for name, row in rows.items():
        if not row["fits"]:
            excluded[name] = f"does not fit: {row['memory']}"
        elif measured and not row["within_latency_budget"]:
            excluded[name] = f"reference task took {row['latency_s']:.2f} s > budget {tier['latency_budget_s']} s"
    candidates = [name for name in shipped if name not in excluded]
    ordered, rule, tie = _order(candidates, builds, quality, tier, measured, tie_floor_pct)
    choice = ordered[0] if ordered else None
    why = (f"{rule} among {len(candidates)} shipped file(s) that fit {tier['name']}"
           + (f" and meet its {tier['latency_budget_s']} s budget" if measured else "")
           + (_tie_words(tie) if tie else "")) if choice else \
        "no shipped file fits this tier" + (" within its latency budget" if measured else "")
    return {"measured": measured, "priority": tier["priority"], "choice": choice,
            "runner_up": ordered[1] if len(ordered) > 1 else None, "why": why, "speed_tie": tie, "excluded": excluded}


def speed_report(model: str, validation: dict, benches: dict[tuple[str, str], dict], reference: str,
                 tiers: list[dict], tie_floor_pct: float = DEFAULT_TIE_FLOOR_PCT) -> dict[str, Any]:
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
        "recommendations": {t["name"]: recommend(t, shipped, builds, quality, tie_floor_pct) for t in tiers},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--validation", type=Path, required=True)
    parser.add_argument("--speeds", type=Path, nargs="+", required=True,
                        help="results/{model}/speed/{tier}/{build}.json files")
    parser.add_argument("--reference", required=True, help="the reference's name among the benchmarked files (e.g. F16)")
    parser.add_argument("--tiers-json", required=True)
    parser.add_argument("--tie-floor-pct", type=float, default=DEFAULT_TIE_FLOOR_PCT,
                        help="benchmark.tie_floor_pct: generation speeds closer than this many percent tie")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    benches = {(p.stem, p.parent.name): json.loads(p.read_text()) for p in ns.speeds}
    result = speed_report(ns.model, json.loads(ns.validation.read_text()), benches, ns.reference, json.loads(ns.tiers_json),
                          ns.tie_floor_pct)
    atomic_write_text(ns.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
