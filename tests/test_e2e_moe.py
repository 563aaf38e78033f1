"""A mixture-of-experts model end to end (scenario ``moe``): a tiny random-weight Mixtral, 8 experts
per layer with top-2 routing, two of them never routed to, through convert → imatrix (with its
expert coverage) → three builds → validation → package."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.workflow_run import CALIBRATION, ROOT, scenario, snakemake

pytestmark = [pytest.mark.toolchain, pytest.mark.slow]

EXPERTS, USED, DEAD = 8, 2, 2


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory, toolchain_root):
    from tests.tiny_model import make_tiny_mixtral

    started = time.monotonic()
    model = make_tiny_mixtral(tmp_path_factory.mktemp("moe") / "tiny-mixtral", CALIBRATION.read_text(),
                              experts=EXPERTS, experts_used=USED, dead_experts=DEAD)
    workdir = tmp_path_factory.mktemp("moe-run")
    config = scenario("moe", workdir, model, model_dir="tiny-mixtral")
    snakemake(workdir, config, "--cores", "2")
    print(f"moe model + workflow: {time.monotonic() - started:.1f} s")
    return workdir


def test_the_moe_is_converted_and_quantized_with_its_experts(moe_run):
    from gguf import GGUFReader

    reference = GGUFReader(moe_run / "results/moe/reference/moe-F16.gguf")
    assert reference.fields["llama.expert_count"].contents() == EXPERTS
    assert reference.fields["llama.expert_used_count"].contents() == USED
    quant = GGUFReader(moe_run / "results/moe/quant/moe-Q8_0.gguf")
    experts = {t.name: [int(n) for n in t.shape] for t in quant.tensors if "_exps" in t.name}
    assert sorted(experts) == [f"blk.{b}.ffn_{k}_exps.weight" for b in (0, 1) for k in ("down", "gate", "up")]
    assert all(shape[2] == EXPERTS and t.tensor_type.name == "Q8_0"
               for t in quant.tensors if t.name in experts for shape in [experts[t.name]])


def test_the_imatrix_coverage_is_the_counts_llama_imatrix_stored(moe_run):
    """The record agrees with the imatrix's counts read by gguf-py's own reader, the never-routed
    experts are without data in every expert tensor, and llama-imatrix's warnings say the same."""
    from gguf import GGUFReader

    imatrix = GGUFReader(moe_run / "results/moe/imatrix/moe.imatrix.gguf")
    counts = {t.name.removesuffix(".counts"): np.asarray(t.data).ravel()
              for t in imatrix.tensors if t.name.endswith("_exps.weight.counts")}
    record = json.loads((moe_run / "results/moe/imatrix/moe.imatrix.coverage.json").read_text())
    assert record["experts"] == EXPERTS and record["experts_used"] == USED and record["expert_tensors"] == 6
    assert record["chunks"] == 4 and record["chunk_size"] == 128 and record["missing"] == []
    by_name = {t["name"]: t for t in record["tensors"]}
    assert set(by_name) == set(counts)
    for name, values in counts.items():
        assert by_name[name]["without_data"] == [e for e in range(EXPERTS) if values[e] == 0]
        assert {6, 7} <= set(by_name[name]["without_data"])
    # Measured: one more expert per layer got no token of the 4 × 128 (layer 0: expert 4, layer 1: 5).
    assert [by_name[n]["experts_with_data"] for n in sorted(by_name)] == [5] * 6
    assert record["min_coverage"] == 0.625 and record["fully_covered"] == 0
    assert record["log_partial"] == {name: 62.5 for name in counts} and record["log_agrees"]
    log = (moe_run / "results/logs/imatrix/moe.log").read_text()
    assert log.count("has partial data") == 6  # one save, at the end (--output-frequency above the chunks)
    assert "expert coverage: 0 of 6 expert tensors fully covered, lowest 0.625" in log


def test_the_coverage_gate_fails_only_the_imatrix_build_that_asks_for_more(moe_run):
    report = json.loads((moe_run / "results/moe/validation_report.json").read_text())
    quants = report["quants"]
    assert quants["Q4_K_M"]["gate"]["min_expert_coverage"] == 0.8
    assert quants["Q4_K_M"]["reasons"] == [
        "imatrix expert coverage 0.625 < 0.8 (blk.0.ffn_gate_exps.weight: 5 of 8 experts got calibration data; "
        "6 of 6 expert tensors below)"]
    # The static twin has the same gate but no imatrix: coverage is not its business, and it passes.
    assert quants["Q4_K_M_static"]["gate"] == {k: v for k, v in quants["Q4_K_M"]["gate"].items()
                                               if k != "min_expert_coverage"}
    assert quants["Q4_K_M_static"]["verdict"] == quants["Q8_0"]["verdict"] == "passed"
    assert report["ships"] == {"Q8_0": "Q8_0", "Q4_K_M": None, "Q4_K_M_static": "Q4_K_M_static"}
    coverage = report["imatrix_coverage"]
    assert coverage["min_coverage"] == 0.625 and len(coverage["partial"]) == 6 and coverage["log_agrees"]
    assert coverage["worst"] == {"name": "blk.0.ffn_gate_exps.weight", "experts_with_data": 5, "experts": 8}


def test_the_model_card_shows_the_expert_coverage(moe_run):
    card = (moe_run / "results/package/moe/README.md").read_text()
    assert "## Expert coverage of the importance matrix" in card
    assert ("0 of 6 expert tensors got calibration data for all 8 experts (top-2 routing); the least covered, "
            "`blk.0.ffn_gate_exps.weight`, for 5 of 8.") in card
    assert "| `blk.1.ffn_up_exps.weight` | 5 of 8 | 5, 6, 7 |" in card
    assert "imatrix expert coverage 0.625 < 0.8" in card  # why Q4_K_M is not published
    manifest = json.loads((moe_run / "results/package/moe/manifest.json").read_text())
    assert manifest["imatrix"]["expert_coverage"]["min_coverage"] == 0.625


def test_the_step_rewrites_its_log_and_gives_the_same_record_again(moe_run, tmp_path):
    """The imatrix step's CLI run again on the run's reference with the real llama-imatrix: a log
    left by an earlier run (with a warning of its own) is replaced, not read, and the same
    calibration gives the same coverage."""
    results = moe_run / "results"
    log = tmp_path / "imatrix.log"
    log.write_text("save_imatrix: entry 'blk.9.ffn_up_exps.weight' has partial data (12.50%)\n")
    out, coverage = tmp_path / "moe.imatrix.gguf", tmp_path / "moe.imatrix.coverage.json"
    reference = results / "moe/reference/moe-F16.gguf"
    subprocess.run([sys.executable, "-m", "workflow_scripts.imatrix", "--stamp", str(results / "toolchain/llama.cpp.json"),
                    "--output", str(out), "--log", str(log), "--reference", str(reference), "--coverage", str(coverage),
                    "--", "llama-imatrix", "-m", str(reference), "-f", str(results / "moe/imatrix/calibration.txt"),
                    "-o", "{out}", "--output-format", "gguf", "--chunks", "4", "-c", "128", "--output-frequency", "5",
                    "-t", "2", "--no-ppl"],
                   check=True, cwd=ROOT)
    again, first = json.loads(coverage.read_text()), json.loads((results / "moe/imatrix/moe.imatrix.coverage.json").read_text())
    assert "blk.9.ffn_up_exps.weight" not in log.read_text() and again["log_agrees"]
    assert {**again, "imatrix": None} == {**first, "imatrix": None}
