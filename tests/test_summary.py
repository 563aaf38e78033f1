"""Summary tables and plots across models."""

from __future__ import annotations

import json
import re
from pathlib import Path

from workflow_scripts.summary import main, plot_frontier, plot_speed, recommendations_md, rows, summary_csv, summary_md

TIERS = ["cpu", "gpu"]


def _validation() -> dict:
    def entry(name, kld, size, verdict="passed"):
        return {"build": {"type": name.split("-")[0]}, "verdict": verdict, "file_bytes": size, "bits_per_weight": size / 1e6,
                "delta_ppl_pct": kld * 100, "kld_mean": kld, "same_top_pct": 90.0}
    return {"model": "m", "quants": {"Q8_0": entry("Q8_0", 0.004, 8_000_000), "Q4_K_M": entry("Q4_K_M", 0.04, 5_000_000),
                                     "Q2_K": entry("Q2_K", 0.9, 3_000_000, "failed")}}


def _speed() -> dict:
    def timing(tg):
        return {"verdict": "passed", "tiers": {"cpu": {"measured": True, "tg_tps": tg}, "gpu": {"measured": False}}}
    rec = {"measured": True, "choice": "Q8_0", "runner_up": "Q4_K_M", "why": "lowest mean KLD"}
    return {"model": "m", "ships": {"Q8_0": "Q8_0", "Q4_K_M": "Q4_K_M", "Q2_K": None},
            "builds": {"Q8_0": timing(50.0), "Q4_K_M": timing(80.0)},
            "recommendations": {"cpu": rec, "gpu": {**rec, "measured": False, "runner_up": None}}}


def test_tables_have_a_row_per_build_and_mark_unmeasured_tiers():
    table = rows(_validation(), _speed(), TIERS)
    assert [(r["quant"], r["shipped"], r["tg_tps_cpu"], r["tg_tps_gpu"]) for r in table] == [
        ("Q8_0", True, 50.0, ""), ("Q4_K_M", True, 80.0, ""), ("Q2_K", False, "", "")]
    csv_text = summary_csv(table, TIERS)
    assert csv_text.splitlines()[0].endswith("same_top_pct,tg_tps_cpu,tg_tps_gpu")
    assert csv_text.splitlines()[3].startswith("m,Q2_K,Q2_K,False,False,failed,,")  # not auto, not shipped
    assert "| m | Q2_K | no | 2.9 |" in summary_md(table, TIERS)
    recs = recommendations_md([_speed()], TIERS)
    assert "| m | Q8_0 (Q4_K_M) | Q8_0 * |" in recs


def test_plots_are_svg_and_byte_stable(tmp_path: Path):
    table = rows(_validation(), _speed(), TIERS)
    for name in ("a", "b"):
        plot_frontier(table, "m", tmp_path / name / "frontier.svg")
        plot_speed(table, "gpu", tmp_path / name / "gpu.svg")
    assert (tmp_path / "a" / "frontier.svg").read_bytes() == (tmp_path / "b" / "frontier.svg").read_bytes()
    assert (tmp_path / "a" / "frontier.svg").read_text().lstrip().startswith("<?xml")
    assert "not measured on the benchmark host" in (tmp_path / "a" / "gpu.svg").read_text()


def _with_auto() -> dict:
    """The validation above plus an auto build (4 MB, KLD 0.5) and a dominated stock build (Q4_0: larger
    than Q4_K_M and worse), with the auto build's comparison row."""
    validation = _validation()
    quants = validation["quants"]
    quants["Q4_0"] = {**quants["Q4_K_M"], "build": {"type": "Q4_0"}, "file_bytes": 5_500_000, "kld_mean": 0.06}
    quants["Q3_auto"] = {**quants["Q4_K_M"], "build": {"type": "Q3_K_M", "auto": {"target_bpw": 3.5}},
                         "file_bytes": 4_000_000, "kld_mean": 0.5}
    validation["auto_comparison"] = [{"auto": "Q3_auto", "build": "Q3_auto", "file_bytes": 4_000_000, "size_vs_auto_pct": 0.0,
                                      "bits_per_weight": 4.0, "kld_mean": 0.5, "kld_p99": 2.0, "same_top_pct": 70.0,
                                      "delta_ppl_pct": 30.0}]
    return validation


def test_frontier_joins_only_the_stock_builds_and_marks_the_auto_builds(tmp_path: Path):
    table = rows(_with_auto(), _speed(), TIERS)
    assert [r["quant"] for r in table if r["auto"]] == ["Q3_auto"]
    plot_frontier(table, "m", tmp_path / "frontier.svg")
    svg = (tmp_path / "frontier.svg").read_text()
    path = re.search(r'<g id="stock-frontier">\s*<path d="([^"]*)"', svg)[1]
    # stock frontier: Q2_K (2.9 MiB), Q4_K_M (4.8), Q8_0 (7.6): Q4_0 is dominated by Q4_K_M, and the auto
    # build (3.8 MiB, between Q2_K and Q4_K_M on both axes) would be a fourth point if it counted
    xs = [float(x) for x in re.findall(r"[ML] ([\d.]+) [\d.]+", path)]
    assert len(xs) == 3 and xs == sorted(xs)
    assert 'id="auto-Q3_auto"' in svg and "<!-- Q3_auto -->" in svg


def test_summary_md_carries_the_auto_builds_comparison(tmp_path: Path):
    (tmp_path / "validation.json").write_text(json.dumps(_with_auto()))
    (tmp_path / "speed.json").write_text(json.dumps(_speed()))
    main(["--validation", str(tmp_path / "validation.json"), "--speed", str(tmp_path / "speed.json"), "--tiers", *TIERS,
          "--out-dir", str(tmp_path / "out")])
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## m: auto builds against builds within ±20% of their size" in summary
    assert "| Q3_auto | Q3_auto | 3.8 | +0.0 % | 4.00 | 0.5000 | 2.0000 | 70.0 | +30.00 | – | – |" in summary
    assert "<!-- Q3_auto -->" in (tmp_path / "out" / "plots" / "m-size-vs-kld.svg").read_text()
    (tmp_path / "validation.json").write_text(json.dumps(_validation()))  # no auto build: no such section
    main(["--validation", str(tmp_path / "validation.json"), "--speed", str(tmp_path / "speed.json"), "--tiers", *TIERS,
          "--out-dir", str(tmp_path / "out")])
    assert "auto builds" not in (tmp_path / "out" / "summary.md").read_text()
