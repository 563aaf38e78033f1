"""Paired comparison of builds on the same evaluation tokens, the auto builds' table, and where it shows."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from workflow_scripts.compare import auto_build_names, comparison_md, comparison_table, paired
from workflow_scripts.errors import UserError
from workflow_scripts.llama_tools import parse_kl_divergence
from workflow_scripts.validate import model_report, verdict

FIXTURES = Path(__file__).parent / "fixtures" / "perplexity"
MIB = 2**20


def _record(name, kld, ln_ratio, same, file_mib=100, auto=None, ppl_base=9.403121):
    """A validation record as validate writes it, with only what the comparison reads."""
    return {"quant": name, "build": {"type": "Q4_K_M", **({"auto": auto} if auto else {})}, "ppl_base": ppl_base,
            "file_bytes": file_mib * MIB, "bits_per_weight": file_mib / 20, "kld_mean": statistics.fmean(kld),
            "kld_p99": 0.3, "same_top_pct": statistics.fmean(same), "delta_ppl_pct": 4.0,
            "chunk_kld_mean": kld, "chunk_ln_ppl_ratio": ln_ratio, "chunk_same_top_pct": same}


# Four chunks. b - a per chunk: KLD -0.01, -0.03, -0.01, -0.03 (mean -0.02, deviations ±0.01: sample
# variance 4 × 1e-4 / 3, standard error √(4e-4/3) / √4 = 0.01/√3); ln ratio -0.02, -0.04, ... (mean -0.03,
# same error); same top +2, +4, +2, +4 points (mean +3, error 1/√3).
A = _record("Q4_K_M", [0.10, 0.20, 0.30, 0.40], [0.05] * 4, [90.0] * 4)
B = _record("Q4_auto", [0.09, 0.17, 0.29, 0.37], [0.03, 0.01, 0.03, 0.01], [92.0, 94.0, 92.0, 94.0], auto={"bytes_of": "Q4_K_M"})


def test_paired_difference_and_its_standard_error_over_the_chunks():
    result = paired(A, B)
    assert (result["a"], result["b"], result["chunks"]) == ("Q4_K_M", "Q4_auto", 4)
    kld = result["kld"]
    assert kld["a"] == pytest.approx(0.25) and kld["b"] == pytest.approx(0.23)
    assert kld["diff"] == pytest.approx(-0.02) and kld["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert kld["ratio"] == pytest.approx(0.23 / 0.25)  # 0.92
    ln = result["ln_ppl_ratio"]
    assert ln["diff"] == pytest.approx(-0.03) and ln["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert ln["ppl_ratio"] == pytest.approx(math.exp(-0.03))  # PPL(b) / PPL(a)
    same = result["same_top_pct"]
    assert same["diff"] == pytest.approx(3.0) and same["se"] == pytest.approx(1 / math.sqrt(3))
    assert same["miss_ratio"] == pytest.approx(7 / 10)  # 7 % of tokens differ from the reference's top vs 10 %
    # the standard error of either build alone is much larger: the pairing removes the chunks' shared difficulty
    assert statistics.stdev(A["chunk_kld_mean"]) / 2 > 5 * kld["se"]


def test_one_chunk_has_no_standard_error():
    one_a, one_b = _record("a", [0.1], [0.0], [90.0]), _record("b", [0.05], [0.0], [95.0])
    result = paired(one_a, one_b)
    assert result["kld"]["diff"] == pytest.approx(-0.05) and result["kld"]["se"] is None


def test_builds_not_measured_on_the_same_tokens_are_refused():
    with pytest.raises(UserError, match=r"Q4_K_M \(4 chunks\) and short \(3 chunks\) were not measured on the same"):
        paired(A, _record("short", [0.1, 0.2, 0.3], [0.0] * 3, [90.0] * 3))
    with pytest.raises(UserError, match="different reference logits .*9.403121 vs 9.5"):
        paired(A, _record("other", [0.1] * 4, [0.0] * 4, [90.0] * 4, ppl_base=9.5))
    old = {key: value for key, value in B.items() if key != "chunk_same_top_pct"}
    with pytest.raises(UserError, match="build Q4_auto: its validation record has no 'chunk_same_top_pct'"):
        paired(A, old)


def test_paired_on_real_logs_of_two_builds():
    """Q4_K_M and Q5_K_M of SmolLM2-135M against the same reference logits (10 chunks of 255 tokens)."""
    q4 = {**parse_kl_divergence((FIXTURES / "smollm2-135m-Q4_K_M-kld.log").read_text()), "quant": "Q4_K_M"}
    q5 = {**parse_kl_divergence((FIXTURES / "smollm2-135m-Q5_K_M-kld.log").read_text()), "quant": "Q5_K_M"}
    result = paired(q4, q5)
    # per-chunk KLD worked out from the printed running means (m_k·k - m_(k-1)·(k-1)), e.g. Q5_K_M chunk 2:
    # 2 × 0.01511 - 0.02279 = 0.00743
    q4_chunks = [0.13164, 0.02882, 0.02944, 0.02950, 0.02850, 0.03176, 0.02561, 0.02849, 0.02561, 0.02943]
    q5_chunks = [0.02279, 0.00743, 0.00629, 0.00629, 0.00680, 0.00680, 0.00569, 0.00639, 0.00505, 0.00607]
    diffs = [b - a for a, b in zip(q4_chunks, q5_chunks)]
    assert result["kld"]["diff"] == pytest.approx(0.00796 - 0.03888)  # the last running means: the sum telescopes
    assert result["kld"]["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(10))
    assert result["kld"]["ratio"] == pytest.approx(0.00796 / 0.03888)
    # same top: per-chunk counts 242, 246, ... of Q5_K_M against 220, 240, ... of Q4_K_M; totals 2462 and 2343 of 2550
    assert result["same_top_pct"]["diff"] == pytest.approx(100 * (2462 - 2343) / 2550)
    assert result["ln_ppl_ratio"]["ppl_ratio"] == pytest.approx(9.422439 / 9.806012, rel=1e-5)


def _records():
    def rec(name, mib, kld, auto=None):
        return _record(name, kld, [0.01] * 4, [90.0] * 4, file_mib=mib, auto=auto)
    return {"Q2_K": rec("Q2_K", 79, [0.5] * 4), "Q3_K_M": rec("Q3_K_M", 81, [0.2] * 4), "Q4_K_M": A | {"file_bytes": 104 * MIB},
            "Q4_auto": B, "Q5_K_M": rec("Q5_K_M", 119, [0.05] * 4), "Q6_K": rec("Q6_K", 121, [0.01] * 4),
            "Q5_auto": rec("Q5_auto", 118, [0.04] * 4, auto={"target_bpw": 5.9})}


def test_comparison_table_rows_within_a_fifth_of_each_auto_builds_size():
    records = _records()
    assert auto_build_names(records) == ["Q4_auto", "Q5_auto"]
    rows = comparison_table(records, ["Q4_auto", "Q5_auto"])
    # Q4_auto is 100 MiB: 81 (-19 %), 104, 118 and 119 (+19 %) are in; 79 (-21 %) and 121 (+21 %) are not.
    # Q5_auto is 118 MiB: 100 (-15.3 %) ... 121 (+2.5 %) are in; 81 (-31 %) is not.
    assert [(r["auto"], r["build"]) for r in rows] == [
        ("Q4_auto", "Q4_auto"), ("Q4_auto", "Q3_K_M"), ("Q4_auto", "Q4_K_M"), ("Q4_auto", "Q5_auto"), ("Q4_auto", "Q5_K_M"),
        ("Q5_auto", "Q5_auto"), ("Q5_auto", "Q4_auto"), ("Q5_auto", "Q4_K_M"), ("Q5_auto", "Q5_K_M"), ("Q5_auto", "Q6_K")]
    own, q4 = rows[0], rows[2]
    assert "delta_kld" not in own and own["size_vs_auto_pct"] == 0
    assert q4["size_vs_auto_pct"] == 4.0 and q4["kld_mean"] == pytest.approx(0.25)
    # auto against the stock build: auto - Q4_K_M per chunk, as in the paired test
    assert q4["delta_kld"] == pytest.approx(-0.02) and q4["delta_kld_se"] == pytest.approx(0.01 / math.sqrt(3))
    assert q4["kld_ratio"] == pytest.approx(0.92) and q4["paired"]["b"] == "Q4_auto"
    # against a build of constant per-chunk KLD the differences vary as the auto build's own chunks do:
    # 0.09, 0.17, 0.29, 0.37 around 0.23, squared deviations 0.0464 in all
    assert rows[1]["delta_kld"] == pytest.approx(0.23 - 0.2) and rows[1]["delta_kld_se"] == pytest.approx(math.sqrt(0.0464 / 3) / 2)
    md = comparison_md("m", rows)
    assert "## m: auto builds against builds within ±20% of their size" in md
    assert "| Q4_auto | Q4_auto | 100.0 | +0.0 % | 5.00 | 0.2300 | 0.3000 | 93.0 | +4.00 | – | – |" in md
    assert "| Q4_auto | Q4_K_M | 104.0 | +4.0 % | 5.00 | 0.2500 | 0.3000 | 90.0 | +4.00 | -0.02000 ± 0.00577 | 0.920 |" in md


def test_the_validation_report_carries_the_comparison_only_with_auto_builds():
    sanity = {"passed": True, "problems": [], "not_discriminating": [], "mean_same_first_tokens": 20}

    def judged(record):
        build = {**record["build"], "imatrix": True, "recipe": [], "requested_as": record["quant"], "remedy": False, "gate": {}}
        return verdict({key: value for key, value in record.items() if key != "build"}, sanity, build)

    records = {name: judged(r) for name, r in _records().items()}
    report = model_report("m", {}, records, {name: [name] for name in records})
    assert [(r["auto"], r["build"]) for r in report["auto_comparison"]][:3] == [
        ("Q4_auto", "Q4_auto"), ("Q4_auto", "Q3_K_M"), ("Q4_auto", "Q4_K_M")]
    stock = {name: judged(r) for name, r in _records().items() if "auto" not in name}
    assert "auto_comparison" not in model_report("m", {}, stock, {name: [name] for name in stock})
    json.dumps(report)  # the report is written as JSON


def test_a_build_validated_before_per_chunk_figures_is_shown_unpaired():
    old = {k: v for k, v in A.items() if not k.startswith("chunk_")}
    rows = comparison_table({"Q4_K_M": old, "Q4_auto": B}, ["Q4_auto"])
    assert [r["build"] for r in rows] == ["Q4_auto", "Q4_K_M"]
    assert (rows[1]["delta_kld"], rows[1]["kld_ratio"], rows[1]["paired"]) == (None, None, None)
    assert "| Q4_auto | Q4_K_M | 100.0 | +0.0 % | 5.00 | 0.2500 | 0.3000 | 90.0 | +4.00 | not paired: validated before" \
        in comparison_md("m", rows)
