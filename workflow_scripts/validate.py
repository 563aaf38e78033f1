"""Measure every quant against its reference and decide, by the configured gates, whether it ships.

The reference's logits on the held-out evaluation text are computed once per model
(``llama-perplexity --kl-divergence-base``); each quant is then run with ``--kl-divergence``
against them, and the figures llama.cpp prints only as text are parsed into JSON. Measuring and
judging are separate steps, so changing a gate re-judges without re-measuring. A build that fails
is followed by the configured remedies (new builds, see workflow_scripts/fallback.py); the report says
which build ships for each requested quant, and which quants ship none.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from workflow_scripts import chat_template, compare, fallback, imatrix
from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gpu import offload_args, offload_from_log
from workflow_scripts.llama_tools import parse_kl_divergence, parse_perplexity_base
from workflow_scripts.tool_step import run_logged, run_tool, tool_path

GATE_CHECKS = (
    # (gate key, metric key, comparison, wording)
    ("max_delta_ppl_pct", "delta_ppl_pct", "max", "perplexity increase {value:.2f} % > {limit} %"),
    ("max_mean_kld", "kld_mean", "max", "mean KLD {value:.4f} > {limit}"),
    ("min_same_top_pct", "same_top_pct", "min", "same top token {value:.2f} % < {limit} %"),
)
QUALITY_COLUMNS = ("model", "quant", "verdict", "shipped", "type", "imatrix", "file_bytes", "bits_per_weight", "ppl", "ppl_error", "delta_ppl_pct",
                   "kld_mean", "kld_p99", "kld_max", "same_top_pct", "rms_dp_pct", "reasons")


def measure_quant(stamp: Path, gguf: Path, logits: Path, threads: int, log: Path,
                  verify_paths: list[Path], gpu_layers: int = 0) -> dict[str, Any]:
    """Run llama-perplexity --kl-divergence of ``gguf`` against the reference logits; parse it."""
    for path in verify_paths:
        verify(path)
    cmd = [str(tool_path(stamp, "llama-perplexity")), "-m", str(gguf), "--kl-divergence-base", str(logits),
           "--kl-divergence", "-t", str(threads), *offload_args(gpu_layers)]
    log.unlink(missing_ok=True)  # the log is parsed: only this run's output may be in it
    run_logged(cmd, log, "llama-perplexity", f"the KL divergence of {gguf}")
    return figures_from_log(log, parse_kl_divergence)


def measure_reference(stamp: Path, gguf: Path, text: Path, ctx: int, chunks: int, threads: int, logits: Path,
                      log: Path, verify_paths: list[Path], gpu_layers: int = 0) -> dict[str, Any]:
    """Run llama-perplexity on the reference over ``chunks`` × ``ctx`` tokens of the evaluation text,
    keeping its logits (every quant's KL divergence is measured against them); parse its figures."""
    log.unlink(missing_ok=True)  # the log is parsed: only this run's output may be in it
    run_tool(stamp, "llama-perplexity", ["-m", str(gguf), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
                                         "-t", str(threads), *offload_args(gpu_layers), "--kl-divergence-base", "{out}"],
             logits, log, verify_paths)
    return figures_from_log(log, parse_perplexity_base)


def figures_from_log(log: Path, parse) -> dict:
    """What ``parse`` reads from a tool's log, plus the GPU that computed it when the log shows one
    (a CPU run's record stays as it was); UserError naming the log when the figures are not there."""
    text = log.read_text(errors="replace")
    try:
        figures = parse(text)
    except ValueError as err:
        raise UserError(f"{log}: {err}") from None
    offload = offload_from_log(text)
    return {**figures, "offload": offload} if offload else figures


def quant_metrics(name: str, kld: dict, census: dict, stamp: dict) -> dict[str, Any]:
    """One build's record: quality figures, size, bits per weight, tensor types, and the toolchain."""
    return {
        "quant": name,
        "type": census["quant"],
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


def verdict(metrics: dict, sanity: dict, build: dict, tensors: dict | None = None,
            coverage: dict | None = None) -> dict[str, Any]:
    """A build's figures with its gate, settings and verdict; a failed sanity generation fails it too,
    and so does, for a build made with the imatrix (``coverage``: its expert coverage record), an
    imatrix that covered fewer experts than the gate's min_expert_coverage (a static build is not
    judged on it, and its recorded gate leaves it out). The per-tensor error (informational: which
    tensors lost most) is carried along when given."""
    gate = build["gate"] if build["imatrix"] else {k: v for k, v in build["gate"].items() if k != "min_expert_coverage"}
    _, reasons = judge(metrics, gate)
    reasons += [f"sanity: {problem}" for problem in sanity["problems"]]
    if coverage is not None:  # a static build's gate has no min_expert_coverage: no reasons
        reasons += imatrix.coverage_reasons(coverage, gate)
    return {
        **metrics,
        "build": {key: value for key, value in build.items() if key != "gate"},
        "gate": gate,
        "sanity": {key: sanity[key] for key in ("passed", "problems", "not_discriminating", "mean_same_first_tokens")},
        "verdict": "failed" if reasons else "passed",
        "reasons": reasons,
        **({"tensor_error": {**tensors["summary"], "worst": tensors["summary"]["worst"][:5]}} if tensors else {}),
    }


def kld_order_violations(builds: dict[str, dict]) -> dict[str, Any]:
    """Neighbours (by bits per weight) where more bits gave a larger mean KLD; KLD should fall as bpw rises."""
    ordered = sorted(builds.items(), key=lambda item: item[1]["bits_per_weight"])
    pairs = [(low, high) for low, high in zip(ordered, ordered[1:])
             if high[1]["bits_per_weight"] > low[1]["bits_per_weight"]]
    found = [f"{high_q} ({high['bits_per_weight']} bpw) has mean KLD {high['kld_mean']} > "
             f"{low_q} ({low['bits_per_weight']} bpw, {low['kld_mean']})"
             for (low_q, low), (high_q, high) in pairs if high["kld_mean"] > low["kld_mean"]]
    return {"checked": len(pairs), "violations": found}


def imatrix_violations(builds: dict[str, dict]) -> dict[str, Any]:
    """Builds made with the importance matrix that came out worse (mean KLD) than their static twin:
    same type and recipe without it. Such a result points at calibration text unlike the evaluation text."""
    pairs = [(name, twin) for name, entry in builds.items() for twin, other in builds.items()
             if entry["build"]["imatrix"] and not other["build"]["imatrix"]
             and entry["build"]["type"] == other["build"]["type"] and entry["build"]["recipe"] == other["build"]["recipe"]]
    found = [f"{name} (imatrix) has mean KLD {builds[name]['kld_mean']} > {twin} (static, {builds[twin]['kld_mean']})"
             for name, twin in pairs if builds[name]["kld_mean"] > builds[twin]["kld_mean"]]
    return {"checked": len(pairs), "violations": found}


def reference_sanity(record: dict) -> dict[str, Any]:
    """The reference's own sanity result, for the report: per prompt its length, repetition rate,
    empty? loops?, the prompts that could not discriminate and why, and the warning when none could."""
    rows = [{key: row[key] for key in ("prompt", "text", "tokens", "repetition_rate", "empty", "loops")}
            for row in record["prompts"]]
    return {"max_repetition": record["max_repetition"], "repetition_margin": record["repetition_margin"],
            "reference": rows, "not_discriminating": record["not_discriminating"], "warning": record["warning"]}


def model_report(model: str, reference: dict, builds: dict[str, dict], attempts: dict[str, list[str]],
                 sanity: dict | None = None, coverage: dict | None = None,
                 skipped: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Every build's verdict, which build ships for each requested quant (the last try, if it
    passed), the remedies ``skipped`` as changing no tensor's type, the invariants across builds, (given the reference's sanity record) which sanity
    prompts could not discriminate, and (given the imatrix's coverage record) how many experts of
    each expert tensor the imatrix covered; with auto builds, each against the builds of about its size
    (workflow_scripts.compare)."""
    ships = fallback.ships(attempts, lambda build: builds[build]["verdict"])
    autos = compare.auto_build_names(builds)
    for quant, tried in attempts.items():
        for name in tried:
            builds[name]["shipped"] = name == ships[quant]
    return {
        "model": model,
        "reference": reference,
        "quants": builds,
        "attempts": attempts,
        "skipped": {quant: names for quant, names in (skipped or {}).items() if names},
        "ships": ships,
        "passed": [name for name, entry in builds.items() if entry["verdict"] == "passed"],
        "failed": [name for name, entry in builds.items() if entry["verdict"] == "failed"],
        "withheld": [quant for quant, name in ships.items() if name is None],
        "invariants": {"kld_falls_as_bpw_rises": kld_order_violations(builds),
                       "imatrix_not_worse_than_static": imatrix_violations(builds)},
        **({"sanity": reference_sanity(sanity)} if sanity is not None else {}),
        **({"imatrix_coverage": imatrix.summary(coverage)} if coverage is not None else {}),
        **({"auto_comparison": compare.comparison_table(builds, autos)} if autos else {}),
    }


def quality_csv(reports: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=QUALITY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for report in reports:
        for name, values in report["quants"].items():
            row = {key: values.get(key) for key in QUALITY_COLUMNS}
            writer.writerow({**row, "model": report["model"], "quant": name, "type": values["build"]["type"],
                             "imatrix": values["build"]["imatrix"],
                             "reasons": "; ".join(values["reasons"])})
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("reference", help="the reference's perplexity run, keeping its logits")
    for name in ("--stamp", "--gguf", "--text", "--logits", "--log", "--out"):
        base.add_argument(name, type=Path, required=True)
    base.add_argument("--ctx", type=int, required=True)
    base.add_argument("--chunks", type=int, required=True)
    base.add_argument("--threads", type=int, default=1)
    base.add_argument("--gpu-layers", type=int, default=0, help="layers llama-perplexity offloads to the GPU (-ngl)")
    base.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    quant = sub.add_parser("quant", help="measure one build against the reference logits")
    quant.add_argument("--name", required=True, help="the build's name (a quant type or a variant)")
    for name in ("--stamp", "--gguf", "--logits", "--census", "--log", "--out"):
        quant.add_argument(name, type=Path, required=True)
    quant.add_argument("--threads", type=int, default=1)
    quant.add_argument("--gpu-layers", type=int, default=0, help="layers llama-perplexity offloads to the GPU (-ngl)")
    quant.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    judged = sub.add_parser("verdict", help="judge one build by its gate and sanity generation")
    judged.add_argument("--metrics", type=Path, required=True)
    judged.add_argument("--sanity", type=Path, required=True)
    judged.add_argument("--build-json", required=True, help="the build's type, settings and gate")
    judged.add_argument("--tensors", type=Path, help="the build's per-tensor error (tensor_error output)")
    judged.add_argument("--coverage", type=Path, help="the imatrix's expert coverage (for a build made with it)")
    judged.add_argument("--out", type=Path, required=True)
    report = sub.add_parser("report", help="a model's verdicts, what ships, and the invariants")
    report.add_argument("--model", required=True)
    report.add_argument("--reference", type=Path, required=True)
    report.add_argument("--sanity", type=Path, required=True, help="the reference's sanity output")
    report.add_argument("--coverage", type=Path, help="the imatrix's expert coverage, if the model has an imatrix")
    report.add_argument("--chat-template", type=Path, help="the model's chat-template check (workflow_scripts/chat_template.py)")
    report.add_argument("--verdicts", type=Path, nargs="+", required=True)
    report.add_argument("--attempts-json", required=True,
                        help='{"tried": builds tried per requested quant, in order, "skipped": remedies not built}')
    report.add_argument("--out", type=Path, required=True)
    table = sub.add_parser("quality-table", help="quality.csv across models")
    table.add_argument("reports", type=Path, nargs="+")
    table.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    if ns.command == "reference":
        result = measure_reference(ns.stamp, ns.gguf, ns.text, ns.ctx, ns.chunks, ns.threads, ns.logits, ns.log,
                                   ns.verify, ns.gpu_layers)
    elif ns.command == "quant":
        kld = measure_quant(ns.stamp, ns.gguf, ns.logits, ns.threads, ns.log, ns.verify, ns.gpu_layers)
        result = quant_metrics(ns.name, kld, json.loads(ns.census.read_text()), json.loads(ns.stamp.read_text()))
    elif ns.command == "verdict":
        result = verdict(json.loads(ns.metrics.read_text()), json.loads(ns.sanity.read_text()), json.loads(ns.build_json),
                         json.loads(ns.tensors.read_text()) if ns.tensors else None,
                         json.loads(ns.coverage.read_text()) if ns.coverage else None)
    elif ns.command == "report":
        builds = {entry["quant"]: entry for entry in (json.loads(p.read_text()) for p in ns.verdicts)}
        chains = json.loads(ns.attempts_json)
        result = model_report(ns.model, json.loads(ns.reference.read_text()), builds, chains["tried"],
                              json.loads(ns.sanity.read_text()), json.loads(ns.coverage.read_text()) if ns.coverage else None,
                              chains["skipped"])
        for quant, names in result["skipped"].items():
            print(f"{quant}: not built, as they change no tensor's type against the build before: {', '.join(names)}")
        if result["sanity"]["warning"]:
            print(f"warning: {result['sanity']['warning']}")
        if ns.chat_template:  # the model's own check (its template): reported beside the builds' verdicts
            result["chat_template"] = json.loads(ns.chat_template.read_text())
            print(f"chat template: {chat_template.verdict_line(result['chat_template'])}")
    else:
        atomic_write_text(ns.out, quality_csv([json.loads(p.read_text()) for p in ns.reports]))
        return
    atomic_write_text(ns.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
