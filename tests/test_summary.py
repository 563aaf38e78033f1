"""Summary tables and plots across models."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.summary import plot_frontier, plot_speed, recommendations_md, rows, summary_csv, summary_md

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
    assert csv_text.splitlines()[3].startswith("m,Q2_K,Q2_K,False,failed,,")
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
