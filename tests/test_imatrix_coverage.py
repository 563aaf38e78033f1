"""The imatrix's expert coverage: counts read from a GGUF imatrix written here with known counts,
llama-imatrix's partial-data warnings parsed from its log, the gate, and where they show."""

from pathlib import Path

import numpy as np
import pytest

from workflow_scripts.errors import UserError
from workflow_scripts.gguf_header import read_gguf_header
from workflow_scripts.imatrix import coverage_reasons, expert_coverage, partial_warnings, read_counts, summary
from workflow_scripts.model_card import _expert_coverage
from workflow_scripts.validate import model_report, verdict

# Lines as the pinned llama-imatrix logs them (captured from the tiny Mixtral's run): a save after
# 10 chunks, then the final one, which saw more of the text.
LOG = """0.00.025.928 I compute_imatrix: computing over 20 chunks, n_ctx=128, batch_size=2048, n_seq=16

0.00.485.830 I 
0.00.485.832 W save_imatrix: entry '              blk.1.ffn_down_exps.weight' has partial data (25.00%)
0.00.485.836 W save_imatrix: entry '                blk.0.ffn_up_exps.weight' has partial data (50.00%)
0.00.962.118 I compute_imatrix: 0.46 seconds per pass - ETA 0.00 minutes

0.00.962.120 I 
0.00.962.125 W save_imatrix: entry '              blk.1.ffn_down_exps.weight' has partial data (75.00%)
"""


def _gguf(path: Path, tensors: dict[str, np.ndarray], metadata: dict) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        writer.add_uint32(key, value)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def moe_files(tmp_path):
    """A 2-layer reference with 4 experts (two expert tensors per layer, one shared expert and an
    attention weight each), and its imatrix: blk.0's experts all got tokens, blk.1.ffn_down_exps's
    only expert 2, blk.0.ffn_up_exps has no entry at all."""
    experts = np.zeros((4, 8, 16), dtype=np.float32)  # numpy order: expert, row, column
    reference = {}
    for block in (0, 1):
        reference[f"blk.{block}.attn_q.weight"] = np.zeros((16, 16), dtype=np.float32)
        reference[f"blk.{block}.ffn_up_exps.weight"] = experts
        reference[f"blk.{block}.ffn_down_exps.weight"] = experts
        reference[f"blk.{block}.ffn_down_shexp.weight"] = np.zeros((16, 8), dtype=np.float32)
    ref = _gguf(tmp_path / "ref.gguf", reference, {"llama.expert_count": 4, "llama.expert_used_count": 2})
    counts = {"blk.0.attn_q.weight": [512], "blk.0.ffn_down_exps.weight": [100, 3, 200, 209],
              "blk.1.attn_q.weight": [512], "blk.1.ffn_up_exps.weight": [0, 7, 0, 0],
              "blk.1.ffn_down_exps.weight": [0, 0, 512, 0]}
    imatrix = {}
    for name, values in counts.items():
        imatrix[f"{name}.in_sum2"] = np.ones((len(values), 16), dtype=np.float32)
        imatrix[f"{name}.counts"] = np.array(values, dtype=np.float32).reshape(len(values), 1)
    imx = _gguf(tmp_path / "ref.imatrix.gguf", imatrix, {"imatrix.chunk_count": 4, "imatrix.chunk_size": 128})
    return ref, imx


def test_counts_are_read_per_expert(moe_files):
    _, imx = moe_files
    counts = read_counts(read_gguf_header(imx))
    assert counts["blk.0.ffn_down_exps.weight"] == [100, 3, 200, 209]
    assert counts["blk.1.ffn_up_exps.weight"] == [0, 7, 0, 0]
    assert counts["blk.1.attn_q.weight"] == [512]


def test_coverage_per_expert_tensor_with_a_missing_entry(moe_files):
    ref, imx = moe_files
    log = ("save_imatrix: entry '      blk.1.ffn_up_exps.weight' has partial data (25.00%)\n"
           "save_imatrix: entry '    blk.1.ffn_down_exps.weight' has partial data (25.00%)\n")
    record = expert_coverage(ref, imx, log)
    assert (record["experts"], record["experts_used"], record["chunks"], record["chunk_size"]) == (4, 2, 4, 128)
    # The shared expert and the attention weights are not expert tensors.
    assert [(t["name"], t["experts_with_data"], t["without_data"]) for t in record["tensors"]] == [
        ("blk.0.ffn_up_exps.weight", 0, [0, 1, 2, 3]),
        ("blk.0.ffn_down_exps.weight", 4, []),
        ("blk.1.ffn_up_exps.weight", 1, [0, 2, 3]),
        ("blk.1.ffn_down_exps.weight", 1, [0, 1, 3]),
    ]
    assert record["missing"] == ["blk.0.ffn_up_exps.weight"]
    assert record["expert_tensors"] == 4 and record["fully_covered"] == 1 and record["min_coverage"] == 0.0
    assert record["log_agrees"] and record["log_disagreements"] == []


def test_a_log_that_disagrees_with_the_counts_is_recorded(moe_files):
    ref, imx = moe_files
    log = ("save_imatrix: entry '      blk.1.ffn_up_exps.weight' has partial data (50.00%)\n"
           "save_imatrix: entry '    blk.0.ffn_down_exps.weight' has partial data (75.00%)\n")
    record = expert_coverage(ref, imx, log)
    assert not record["log_agrees"]
    assert record["log_disagreements"] == [
        "blk.0.ffn_down_exps.weight: counts give 100.0 %, the log 75.0",
        "blk.1.ffn_down_exps.weight: counts give 25.0 %, the log no warning",
        "blk.1.ffn_up_exps.weight: counts give 25.0 %, the log 50.0",
    ]


def test_the_last_save_of_the_log_counts():
    assert partial_warnings(LOG) == {"blk.1.ffn_down_exps.weight": 75.0, "blk.0.ffn_up_exps.weight": 50.0}
    assert partial_warnings("save_imatrix: stored collected data after 20 chunks\n") == {}


def test_a_dense_model_has_no_coverage_to_judge(tmp_path):
    ref = _gguf(tmp_path / "dense.gguf", {"blk.0.ffn_down.weight": np.zeros((16, 8), dtype=np.float32)}, {})
    imx = _gguf(tmp_path / "dense.imatrix.gguf", {"blk.0.ffn_down.weight.in_sum2": np.ones((1, 8), dtype=np.float32),
                                                  "blk.0.ffn_down.weight.counts": np.full((1, 1), 64, dtype=np.float32)}, {})
    record = expert_coverage(ref, imx, "")
    assert record["expert_tensors"] == 0 and record["min_coverage"] is None and record["experts"] is None
    assert coverage_reasons(record, {"min_expert_coverage": 1.0}) == []
    assert summary(record)["worst"] is None


def test_files_that_are_not_what_is_expected_are_refused(moe_files, tmp_path):
    ref, imx = moe_files
    with pytest.raises(UserError, match=r"ref.gguf: no '<tensor>.counts' entries; expected an imatrix"):
        read_counts(read_gguf_header(ref))
    other = _gguf(tmp_path / "other.imatrix.gguf", {"blk.0.ffn_up_exps.weight.counts": np.ones((8, 1), dtype=np.float32)}, {})
    with pytest.raises(UserError, match=r"other.imatrix.gguf: entry blk.0.ffn_up_exps.weight has 8 counts; "
                                        r"expected one per expert \(4, as in .*ref.gguf\)"):
        expert_coverage(ref, other, "")


def test_the_gate_judges_imatrix_builds_only(moe_files):
    ref, imx = moe_files
    record = expert_coverage(*moe_files, "")
    assert coverage_reasons(record, {}) == []
    assert coverage_reasons(record, {"min_expert_coverage": 0.0}) == []
    assert coverage_reasons(record, {"min_expert_coverage": 0.3}) == [
        "imatrix expert coverage 0.000 < 0.3 (blk.0.ffn_up_exps.weight: 0 of 4 experts got calibration data; "
        "3 of 4 expert tensors below)"]
    good = {"quant": "Q4_K_M", "delta_ppl_pct": 1.0, "kld_mean": 0.01, "same_top_pct": 95.0, "bits_per_weight": 4.9}
    sane = {"passed": True, "problems": [], "not_discriminating": [], "mean_same_first_tokens": 20}
    gate = {"max_mean_kld": 0.08, "min_expert_coverage": 0.3}
    build = {"type": "Q4_K_M", "imatrix": True, "recipe": [], "requested_as": "Q4_K_M", "remedy": False, "gate": gate}
    judged = verdict(good, sane, build, coverage=record)
    assert judged["verdict"] == "failed" and judged["reasons"][0].startswith("imatrix expert coverage 0.000 < 0.3")
    static = verdict(good, sane, {**build, "imatrix": False}, coverage=record)
    assert static["verdict"] == "passed" and static["gate"] == {"max_mean_kld": 0.08}
    assert verdict(good, sane, build)["verdict"] == "passed"  # a model without an imatrix has no record


def test_the_report_and_the_card_show_the_coverage(moe_files):
    record = expert_coverage(*moe_files, "")
    report = model_report("m", {"ppl": 9.4}, {}, {}, coverage=record)
    shown = report["imatrix_coverage"]
    assert shown["worst"] == {"name": "blk.0.ffn_up_exps.weight", "experts_with_data": 0, "experts": 4}
    assert [t["name"] for t in shown["partial"]] == ["blk.0.ffn_up_exps.weight", "blk.1.ffn_up_exps.weight",
                                                     "blk.1.ffn_down_exps.weight"]
    assert "imatrix_coverage" not in model_report("m", {"ppl": 9.4}, {}, {})
    card = "\n".join(_expert_coverage({"imatrix": {"file": "m.imatrix.gguf", "expert_coverage": shown}}))
    assert ("1 of 4 expert tensors got calibration data for all 4 experts (top-2 routing); the least covered, "
            "`blk.0.ffn_up_exps.weight`, for 0 of 4.") in card
    assert "| `blk.1.ffn_down_exps.weight` | 1 of 4 | 0, 1, 3 |" in card
    assert "blk.0.ffn_down_exps" not in card  # fully covered: not listed
    dense = {**shown, "expert_tensors": 0, "partial": [], "worst": None}
    assert _expert_coverage({"imatrix": {"expert_coverage": dense}}) == _expert_coverage({"imatrix": None}) == []
