"""Tables and plots across models: what was built, how good and how fast, and what to run where.

``summary.csv`` has one row per build (quality, verdicts, speed per tier); ``summary.md`` and
``recommendations.md`` are the same figures for people (with, for a model that has auto builds, their
paired comparison with the builds of about their size); the plots show each model's size vs mean KLD
(the stock builds' frontier, the auto builds marked) and generation speed per tier. Plots are SVG
with fixed metadata, so the same figures give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_output, atomic_write_text
from workflow_scripts.compare import comparison_md
from workflow_scripts.errors import run_cli

MIB = 1024 * 1024
COLUMNS = ("model", "quant", "type", "auto", "shipped", "quality_verdict", "speed_verdict", "file_mib", "bits_per_weight",
           "delta_ppl_pct", "kld_mean", "same_top_pct")


def rows(validation: dict, speed: dict, tiers: list[str]) -> list[dict[str, Any]]:
    """One row per build the model made, with its tg tokens/s on every tier ('' where not measured)."""
    out = []
    shipped = {b for b in speed["ships"].values() if b}
    for name, entry in validation["quants"].items():
        timing = speed["builds"].get(name, {})
        row = {"model": validation["model"], "quant": name, "type": entry["build"]["type"],
               "auto": bool(entry["build"].get("auto")), "shipped": name in shipped,
               "quality_verdict": entry["verdict"], "speed_verdict": timing.get("verdict", ""),
               "file_mib": round(entry["file_bytes"] / MIB, 1), "bits_per_weight": entry["bits_per_weight"],
               "delta_ppl_pct": entry["delta_ppl_pct"], "kld_mean": entry["kld_mean"], "same_top_pct": entry["same_top_pct"]}
        for tier in tiers:
            figures = timing.get("tiers", {}).get(tier, {})
            row[f"tg_tps_{tier}"] = round(figures["tg_tps"], 2) if figures.get("measured") else ""
        out.append(row)
    return out


def summary_csv(table: list[dict], tiers: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *(f"tg_tps_{t}" for t in tiers)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def summary_md(table: list[dict], tiers: list[str]) -> str:
    head = ["Model", "Quant", "Shipped", "MiB", "bpw", "ΔPPL %", "Mean KLD", "Same top %", *(f"tg t/s {t}" for t in tiers)]
    lines = ["# Summary", "", "Every build of every model; a build ships when it passed its quality, size and speed gates.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        speeds = [str(r[f"tg_tps_{t}"]) if r[f"tg_tps_{t}"] != "" else "–" for t in tiers]
        lines.append(f"| {r['model']} | {r['quant']} | {'yes' if r['shipped'] else 'no'} | {r['file_mib']} | "
                     f"{r['bits_per_weight']:.2f} | {r['delta_ppl_pct']:+.2f} | {r['kld_mean']:.4f} | {r['same_top_pct']:.1f} | "
                     + " | ".join(speeds) + " |")
    return "\n".join(lines) + "\n"


def recommendations_md(speeds: list[dict], tiers: list[str]) -> str:
    lines = ["# Recommendations", "", "Which file to run, per model and hardware tier (runner-up in brackets; "
             "* = tier not measured on the benchmark host: chosen by quality, size and predicted memory only).", "",
             "| Model | " + " | ".join(tiers) + " |", "|---|" + "---|" * len(tiers)]
    for speed in speeds:
        cells = []
        for tier in tiers:
            rec = speed["recommendations"][tier]
            cell = f"{rec['choice'] or '–'}" + (f" ({rec['runner_up']})" if rec["runner_up"] else "")
            cells.append(cell + ("" if rec["measured"] else " *"))
        lines.append(f"| {speed['model']} | " + " | ".join(cells) + " |")
    lines += ["", "Why, per model and tier:", ""]
    for speed in speeds:
        lines += [f"- {speed['model']} / {tier}: {speed['recommendations'][tier]['why']}" for tier in tiers]
    return "\n".join(lines) + "\n"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "gguf-forge"  # stable element ids: same figures, same bytes
    return plt


def plot_frontier(table: list[dict], model: str, path: Path) -> None:
    """File size against mean KLD for one model's builds: the shipped ones filled, the stock builds'
    Pareto frontier (those no smaller-or-equal stock build beats) drawn as a line, auto builds as
    labelled stars, so an auto build below the line beats the stock mixtures at its size."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    builds = sorted((r for r in table if r["model"] == model), key=lambda r: (r["file_mib"], r["kld_mean"]))
    for r in builds:
        if r["auto"]:
            ax.scatter(r["file_mib"], r["kld_mean"], marker="*", s=120, color="C3", gid=f"auto-{r['quant']}")
        else:
            ax.scatter(r["file_mib"], r["kld_mean"], marker="o", facecolors="C0" if r["shipped"] else "none", edgecolors="C0")
        ax.annotate(r["quant"], (r["file_mib"], r["kld_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                    **({"color": "C3", "fontweight": "bold"} if r["auto"] else {}))
    frontier, best = [], float("inf")
    for r in builds:
        if not r["auto"] and r["kld_mean"] < best:
            frontier.append(r)
            best = r["kld_mean"]
    ax.plot([r["file_mib"] for r in frontier], [r["kld_mean"] for r in frontier], color="C1", linewidth=1,
            gid="stock-frontier")
    ax.set(xlabel="file size (MiB)", ylabel="mean KLD vs reference", yscale="log",
           title=f"{model}: size vs quality (filled: shipped; line: stock frontier; ★: auto)")
    _save(fig, plt, path)


def plot_speed(table: list[dict], tier: str, path: Path) -> None:
    """Generation tokens/s of every measured build on one tier."""
    plt = _figure()
    measured = [r for r in table if r[f"tg_tps_{tier}"] != ""]
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.3 * len(measured) + 1)))
    if measured:
        labels = [f"{r['model']} {r['quant']}" for r in measured]
        ax.barh(labels, [r[f"tg_tps_{tier}"] for r in measured], color="C0")
        ax.set(xlabel="generation tokens/s (llama-bench tg)")
    else:
        ax.text(0.5, 0.5, "not measured on the benchmark host", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"{tier}: generation speed")
    _save(fig, plt, path)


def disk_md(disks: list[dict]) -> str:
    """One line per model: the disk predicted at plan time against what its files use."""
    if not disks:
        return ""
    lines = ["", "Disk under results/ (predicted before the run, rounded up; used by the files made):", ""]
    for d in disks:
        lines.append(f"- {d['model']}: predicted {d['predicted_bytes'] / 2**20:.1f} MiB, used "
                     f"{d['used_bytes'] / 2**20:.1f} MiB" + (" (a Hub download not counted)" if d["unknown"] else ""))
    return "\n".join(lines) + "\n"


def published_md(records: list[dict]) -> str:
    """One line per published model: its repository and the commit (workflow_scripts.publish's records)."""
    if not records:
        return ""
    lines = ["", "Published to the Hugging Face Hub:", ""]
    for r in records:
        sent = f"{len(r['uploaded'])} file(s), {r['uploaded_bytes'] / 2**20:.1f} MiB uploaded" if r["uploaded"] else "unchanged"
        lines.append(f"- [{r['repo_id']}]({r['url']}) at commit [{r['commit'][:12]}]({r['commit_url']}) ({sent})")
    return "\n".join(lines) + "\n"


def _save(fig, plt, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", type=Path, nargs="+", required=True)
    parser.add_argument("--speed", type=Path, nargs="+", required=True, help="speed_report.json files, in --validation order")
    parser.add_argument("--tiers", nargs="+", required=True)
    parser.add_argument("--disk", type=Path, nargs="*", default=[], help="disk.json files (disk_plan)")
    parser.add_argument("--published", type=Path, nargs="*", default=[], help="published.json files (publish)")
    parser.add_argument("--out-dir", type=Path, required=True)
    ns = parser.parse_args(argv)
    validations = [json.loads(p.read_text()) for p in ns.validation]
    speeds = [json.loads(p.read_text()) for p in ns.speed]
    table = [row for v, s in zip(validations, speeds) for row in rows(v, s, ns.tiers)]
    atomic_write_text(ns.out_dir / "summary.csv", summary_csv(table, ns.tiers))
    disks = [json.loads(p.read_text()) for p in ns.disk]
    published = [json.loads(p.read_text()) for p in ns.published]
    comparisons = "".join(comparison_md(v["model"], v["auto_comparison"]) for v in validations if "auto_comparison" in v)
    atomic_write_text(ns.out_dir / "summary.md",
                      summary_md(table, ns.tiers) + comparisons + disk_md(disks) + published_md(published))
    atomic_write_text(ns.out_dir / "recommendations.md", recommendations_md(speeds, ns.tiers))
    for validation in validations:
        plot_frontier(table, validation["model"], ns.out_dir / "plots" / f"{validation['model']}-size-vs-kld.svg")
    for tier in ns.tiers:
        plot_speed(table, tier, ns.out_dir / "plots" / f"tokens-per-s-{tier}.svg")


if __name__ == "__main__":
    run_cli(main)
