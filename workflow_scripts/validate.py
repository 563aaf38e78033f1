"""Measure every quant against its reference and decide, by the configured gates, whether it ships.

The reference's logits on the held-out evaluation text are computed once per model
(``llama-perplexity --kl-divergence-base``); each quant is then run with ``--kl-divergence``
against them, and the figures llama.cpp prints only as text are parsed into JSON. Measuring and
judging are separate steps, so changing a gate re-judges without re-measuring.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.llama_tools import parse_kl_divergence, parse_perplexity_base
from workflow_scripts.tool_step import run_logged, tool_path

GATE_CHECKS = (
    # (gate key, metric key, comparison, wording)
    ("max_delta_ppl_pct", "delta_ppl_pct", "max", "perplexity increase {value:.2f} % > {limit} %"),
    ("max_mean_kld", "kld_mean", "max", "mean KLD {value:.4f} > {limit}"),
    ("min_same_top_pct", "same_top_pct", "min", "same top token {value:.2f} % < {limit} %"),
)
QUALITY_COLUMNS = ("model", "quant", "verdict", "file_bytes", "bits_per_weight", "ppl", "ppl_error", "delta_ppl_pct",
                   "kld_mean", "kld_p99", "kld_max", "same_top_pct", "rms_dp_pct", "reasons")


def measure_quant(stamp: Path, gguf: Path, logits: Path, threads: int, log: Path) -> dict[str, Any]:
    """Run llama-perplexity --kl-divergence of ``gguf`` against the reference logits; parse it."""
    verify(gguf)
    verify(logits)
    cmd = [str(tool_path(stamp, "llama-perplexity")), "-m", str(gguf), "--kl-divergence-base", str(logits),
           "--kl-divergence", "-t", str(threads)]
    log.unlink(missing_ok=True)  # the log is parsed: only this run's output may be in it
    run_logged(cmd, log, "llama-perplexity", f"the KL divergence of {gguf}")
    try:
        return parse_kl_divergence(log.read_text(errors="replace"))
    except ValueError as err:
        raise UserError(f"{log}: {err}") from None


def quant_metrics(kld: dict, census: dict, stamp: dict) -> dict[str, Any]:
    """One quant's record: quality figures, size, bits per weight, tensor types, and the toolchain."""
    return {
        "quant": census["quant"],
        **kld,
        "file_bytes": census["file_bytes"],
        "bits_per_weight": census["bits_per_weight"],
        "types": census["types"],
        "fallbacks": len(census["fallbacks"]),
        "llama_cpp_commit": stamp.get("llama_cpp_commit"),
        "llama_quantize_sha256": stamp.get("llama_quantize_sha256"),
    }


def judge(metrics: dict, gate: dict) -> tuple[str, list[str]]:
    """``passed`` or ``failed`` and the reasons, by the gate's thresholds."""
    reasons = []
    for gate_key, metric_key, kind, wording in GATE_CHECKS:
        if gate_key not in gate:
            continue
        value, limit = metrics[metric_key], gate[gate_key]
        if (kind == "max" and value > limit) or (kind == "min" and value < limit):
            reasons.append(wording.format(value=value, limit=limit))
    return ("failed" if reasons else "passed"), reasons


def kld_order_violations(quants: dict[str, dict]) -> list[str]:
    """Pairs where more bits per weight gave a larger mean KLD (expected: KLD falls as bpw rises)."""
    ordered = sorted(quants.items(), key=lambda item: item[1]["bits_per_weight"])
    found = []
    for (low_q, low), (high_q, high) in zip(ordered, ordered[1:]):
        if high["bits_per_weight"] > low["bits_per_weight"] and high["kld_mean"] > low["kld_mean"]:
            found.append(f"{high_q} ({high['bits_per_weight']} bpw) has mean KLD {high['kld_mean']} > "
                         f"{low_q} ({low['bits_per_weight']} bpw, {low['kld_mean']})")
    return found


def model_report(model: str, reference: dict, metrics: dict[str, dict], gates: dict[str, dict],
                 sanity: dict[str, dict] | None = None) -> dict[str, Any]:
    """Every quant's figures, gate and verdict; a failed sanity generation fails the quant too."""
    quants = {}
    for quant, values in metrics.items():
        verdict, reasons = judge(values, gates[quant])
        entry = {**values, "gate": gates[quant]}
        if sanity is not None:
            check = sanity[quant]
            entry["sanity"] = {k: check[k] for k in ("passed", "problems", "mean_same_first_tokens")}
            reasons += [f"sanity: {p}" for p in check["problems"]]
        quants[quant] = {**entry, "verdict": "failed" if reasons else verdict, "reasons": reasons}
    return {
        "model": model,
        "reference": reference,
        "quants": quants,
        "passed": [q for q, v in quants.items() if v["verdict"] == "passed"],
        "failed": [q for q, v in quants.items() if v["verdict"] == "failed"],
        "invariants": {"kld_falls_as_bpw_rises": kld_order_violations(quants)},
    }


def quality_csv(reports: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=QUALITY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for report in reports:
        for quant, values in report["quants"].items():
            row = {key: values.get(key) for key in QUALITY_COLUMNS}
            writer.writerow({**row, "model": report["model"], "quant": quant, "reasons": "; ".join(values["reasons"])})
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("reference", help="parse the reference's perplexity run")
    base.add_argument("--log", type=Path, required=True)
    base.add_argument("--out", type=Path, required=True)
    quant = sub.add_parser("quant", help="measure one quant against the reference logits")
    for name in ("--stamp", "--gguf", "--logits", "--census", "--log", "--out"):
        quant.add_argument(name, type=Path, required=True)
    quant.add_argument("--threads", type=int, default=1)
    report = sub.add_parser("report", help="judge a model's quants by their gates")
    report.add_argument("--model", required=True)
    report.add_argument("--reference", type=Path, required=True)
    report.add_argument("--metrics", type=Path, nargs="+", required=True)
    report.add_argument("--sanity", type=Path, nargs="+", help="<quant>.sanity.json files, in --metrics order")
    report.add_argument("--gates-json", required=True)
    report.add_argument("--out", type=Path, required=True)
    table = sub.add_parser("quality-table", help="quality.csv across models")
    table.add_argument("reports", type=Path, nargs="+")
    table.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    if ns.command == "reference":
        result = parse_perplexity_base(ns.log.read_text(errors="replace"))
    elif ns.command == "quant":
        kld = measure_quant(ns.stamp, ns.gguf, ns.logits, ns.threads, ns.log)
        result = quant_metrics(kld, json.loads(ns.census.read_text()), json.loads(ns.stamp.read_text()))
    elif ns.command == "report":
        metrics = {json.loads(p.read_text())["quant"]: json.loads(p.read_text()) for p in ns.metrics}
        sanity = ({quant: json.loads(p.read_text()) for quant, p in zip(metrics, ns.sanity)} if ns.sanity else None)
        result = model_report(ns.model, json.loads(ns.reference.read_text()), metrics, json.loads(ns.gates_json), sanity)
    else:
        atomic_write_text(ns.out, quality_csv([json.loads(p.read_text()) for p in ns.reports]))
        return
    atomic_write_text(ns.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
