"""Validation: parsers on captured llama-perplexity output, gates, invariants, overlap refusal."""

from pathlib import Path

import pytest

from tests.stub_sources import EMPTY_GGUF
from workflow_scripts.calibration import overlap_fraction
from workflow_scripts.config import build_plan
from workflow_scripts.errors import UserError
from workflow_scripts.llama_tools import parse_kl_divergence, parse_perplexity_base
from workflow_scripts.validate import imatrix_violations, judge, kld_order_violations, model_report, quality_csv, verdict

FIXTURES = Path(__file__).parent / "fixtures" / "perplexity"
ROOT = Path(__file__).resolve().parent.parent


def test_parse_reference_perplexity():
    assert parse_perplexity_base((FIXTURES / "smollm2-135m-F16-base.log").read_text()) == {
        "ppl": 9.4031, "ppl_error": 0.50138, "chunks": 10, "ctx": 512}


def test_parse_kl_divergence_statistics():
    kld = parse_kl_divergence((FIXTURES / "smollm2-135m-Q4_K_M-kld.log").read_text())
    assert kld["ppl"] == 9.806012 and kld["ppl_error"] == 0.527039 and kld["ppl_base"] == 9.403121
    assert kld["delta_ppl_pct"] == pytest.approx(4.2847)
    assert (kld["kld_mean"], kld["kld_mean_error"], kld["kld_median"]) == (0.038882, 0.001478, 0.022095)
    assert (kld["kld_p99"], kld["kld_p99_9"], kld["kld_max"]) == (0.313974, 0.940213, 1.45657)
    assert (kld["same_top_pct"], kld["rms_dp_pct"], kld["chunks"]) == (91.882, 5.571, 10)


def test_parse_kl_divergence_per_chunk_means_from_the_running_table():
    """The table's figures are running means over chunks 1..k of 255 tokens each (n_ctx 512): chunk k's
    own mean is m_k·k - m_(k-1)·(k-1). Expectations worked out by hand from the printed lines."""
    kld = parse_kl_divergence((FIXTURES / "smollm2-135m-Q4_K_M-kld.log").read_text())
    # KLD column: chunk 1 0.13164; chunk 2: 2 × 0.08023 - 0.13164 = 0.02882; chunk 3: 3 × 0.06330 - 0.16046 = 0.02944;
    # ... chunk 10: 10 × 0.03888 - 9 × 0.03993 = 0.38880 - 0.35937 = 0.02943
    assert kld["chunk_kld_mean"] == [0.13164, 0.02882, 0.02944, 0.0295, 0.0285, 0.03176, 0.02561, 0.02849, 0.02561, 0.02943]
    # ln(PPL(Q)/PPL(base)) column: 0.04581; 2 × 0.05417 - 0.04581 = 0.06253; ... 10 × 0.04195 - 9 × 0.04310 = 0.0316
    assert kld["chunk_ln_ppl_ratio"] == [0.04581, 0.06253, 0.03173, 0.06561, 0.01722, 0.0402, 0.04203, 0.02855, 0.05422, 0.0316]
    # Same top p: running counts 86.275 % × 255 = 220, 90.196 % × 510 = 460, 90.065 % × 765 = 689, ...,
    # 91.895 % × 2295 = 2109, 91.882 % × 2550 = 2343: per chunk 220, 240, 229, ..., 234 of 255 tokens
    counts = [220, 240, 229, 234, 235, 236, 239, 228, 248, 234]
    assert kld["chunk_same_top_pct"] == pytest.approx([100 * c / 255 for c in counts], abs=1e-12)
    # the chunks' average is the final figure: the errors of the running means telescope
    assert sum(kld["chunk_kld_mean"]) / 10 == pytest.approx(0.03888, abs=1e-12)


def test_kl_divergence_output_without_its_chunk_table_is_an_error():
    text = (FIXTURES / "smollm2-135m-Q4_K_M-kld.log").read_text()
    with pytest.raises(ValueError, match="per-chunk lines .*chunks 1 to 10, found 9"):
        parse_kl_divergence("\n".join(line for line in text.splitlines() if not line.startswith("   7 ")))


def test_truncated_tool_output_is_an_error():
    text = (FIXTURES / "smollm2-135m-Q4_K_M-kld.log").read_text()
    with pytest.raises(ValueError, match="lacks .*Same top p"):
        parse_kl_divergence(text.split("Same top p")[0])
    with pytest.raises(ValueError, match="Final estimate"):
        parse_perplexity_base("perplexity: calculating perplexity over 10 chunks, n_ctx=512\n")


GOOD = {"delta_ppl_pct": 0.2, "kld_mean": 0.004, "same_top_pct": 96.8, "bits_per_weight": 8.5}


def test_gates():
    gate = {"max_delta_ppl_pct": 1, "max_mean_kld": 0.01, "min_same_top_pct": 95}
    assert judge(GOOD, gate) == ("passed", [])
    verdict, reasons = judge({**GOOD, "kld_mean": 0.02, "same_top_pct": 90.0}, gate)
    assert verdict == "failed" and reasons == ["mean KLD 0.0200 > 0.01", "same top token 90.00 % < 95 %"]
    assert judge({**GOOD, "delta_ppl_pct": 1.5}, {"max_mean_kld": 1})[0] == "passed"  # only the gate's keys count


def test_kld_must_fall_as_bits_rise():
    quants = {"Q8_0": {"bits_per_weight": 8.5, "kld_mean": 0.004}, "Q6_K": {"bits_per_weight": 8.1, "kld_mean": 0.009},
              "Q5_K_M": {"bits_per_weight": 6.6, "kld_mean": 0.008}, "Q4_K_M": {"bits_per_weight": 6.2, "kld_mean": 0.04}}
    assert kld_order_violations(quants) == {
        "checked": 3, "violations": ["Q6_K (8.1 bpw) has mean KLD 0.009 > Q5_K_M (6.6 bpw, 0.008)"]}


SANE = {"passed": True, "problems": [], "not_discriminating": [], "mean_same_first_tokens": 20}


def _entry(name, type_, imatrix, gate, sanity=SANE, recipe=(), **metrics):
    build = {"type": type_, "imatrix": imatrix, "recipe": list(recipe), "requested_as": name, "remedy": False, "gate": gate}
    return verdict({**GOOD, "quant": name, **metrics}, sanity, build)


def test_imatrix_build_must_not_be_worse_than_its_static_twin():
    builds = {"Q4_K_M": _entry("Q4_K_M", "Q4_K_M", True, {}, kld_mean=0.05),
              "Q4_K_M-static": _entry("Q4_K_M-static", "Q4_K_M", False, {}, kld_mean=0.04),
              "Q4_K_L": _entry("Q4_K_L", "Q4_K_M", True, {}, recipe=["--output-tensor-type", "Q8_0"], kld_mean=0.06)}
    found = imatrix_violations(builds)
    assert found == {"checked": 1, "violations": ["Q4_K_M (imatrix) has mean KLD 0.05 > Q4_K_M-static (static, 0.04)"]}
    builds["Q4_K_M"]["kld_mean"] = 0.03
    assert imatrix_violations(builds)["violations"] == []


def test_report_ships_the_passing_try_and_withholds_a_quant_whose_tries_all_failed():
    builds = {"Q8_0": _entry("Q8_0", "Q8_0", True, {"max_mean_kld": 0.01}),
              "Q2_K": _entry("Q2_K", "Q2_K", True, {"max_mean_kld": 0.8}, kld_mean=0.9, bits_per_weight=3.0),
              "Q2_K-sensitive": _entry("Q2_K", "Q2_K", True, {"max_mean_kld": 0.8}, kld_mean=0.85, bits_per_weight=3.4),
              "IQ4_XS": _entry("IQ4_XS", "IQ4_XS", True, {"max_mean_kld": 0.09}, kld_mean=0.11, bits_per_weight=5.3),
              "IQ4_XS-sensitive": _entry("IQ4_XS", "IQ4_XS", True, {"max_mean_kld": 0.09}, kld_mean=0.07, bits_per_weight=5.9)}
    attempts = {"Q8_0": ["Q8_0"], "Q2_K": ["Q2_K", "Q2_K-sensitive"], "IQ4_XS": ["IQ4_XS", "IQ4_XS-sensitive"]}
    report = model_report("m", {"ppl": 9.4}, builds, attempts)
    assert report["ships"] == {"Q8_0": "Q8_0", "Q2_K": None, "IQ4_XS": "IQ4_XS-sensitive"}
    assert report["withheld"] == ["Q2_K"] and report["failed"] == ["Q2_K", "Q2_K-sensitive", "IQ4_XS"]
    assert report["quants"]["Q2_K"]["reasons"] == ["mean KLD 0.9000 > 0.8"]
    assert [name for name, entry in report["quants"].items() if entry["shipped"]] == ["Q8_0", "IQ4_XS-sensitive"]
    rows = quality_csv([report]).splitlines()
    assert rows[0].startswith("model,quant,verdict,shipped,type,imatrix")
    assert rows[2].startswith("m,Q2_K,failed,False,Q2_K,True,") and rows[5].startswith("m,IQ4_XS-sensitive,passed,True,")


def test_overlapping_evaluation_text_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calibration = (ROOT / "config/data/calibration.txt").read_text()
    evaluation = (ROOT / "config/data/evaluation.txt").read_text()
    # the shipped texts are disjoint
    assert overlap_fraction(ROOT / "config/data/calibration.txt", ROOT / "config/data/evaluation.txt") < 0.02
    (tmp_path / "m.gguf").write_bytes(EMPTY_GGUF)
    (tmp_path / "eval.txt").write_text(evaluation[:20000] + calibration[:20000])
    config = {"evaluation": {"text": "eval.txt"}, "models": [{"name": "m", "source": {"type": "gguf", "path": "m.gguf"}}]}
    with pytest.raises(UserError, match=r"calibration.text: \d+\.\d% of the evaluation text 'eval.txt' also occurs"):
        build_plan(config, "c.yaml")


def test_gates_merge_default_builtin_and_user_entries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(EMPTY_GGUF)
    config = {"quants": ["Q8_0", "Q4_K_M", "Q4_0"],
              "gates": {"default": {"max_delta_ppl_pct": 12, "max_mean_kld": 0.2, "min_same_top_pct": 70},
                        "per_quant": {"Q4_K_M": {"max_mean_kld": 0.05}}},
              "models": [{"name": "m", "source": {"type": "gguf", "path": "m.gguf"}}]}
    gates = build_plan(config, "c.yaml").models["m"].gates
    assert gates["Q8_0"] == {"max_delta_ppl_pct": 1, "max_mean_kld": 0.01, "min_same_top_pct": 95}
    assert gates["Q4_K_M"] == {"max_delta_ppl_pct": 8, "max_mean_kld": 0.05, "min_same_top_pct": 88}
    assert gates["Q4_0"] == {"max_delta_ppl_pct": 12, "max_mean_kld": 0.2, "min_same_top_pct": 70}


@pytest.mark.toolchain
def test_kl_divergence_output_is_complete_every_time(tiny_f16, toolchain_bin, toolchain_stamp, tmp_path):
    """The KLD statistics are the last lines the tool logs; they must never be lost at exit.

    Upstream's logger loses them under CPU load (10 of 30 runs of the unpatched build here, with
    three busy loops beside it); the toolchain's patch flushes it at exit.
    """
    import subprocess
    import sys

    from workflow_scripts.checksums import write_sidecar
    from workflow_scripts.validate import measure_quant

    logits, quant = tmp_path / "ref.logits", tmp_path / "q8.gguf"
    subprocess.run([str(toolchain_bin / "llama-perplexity"), "-m", str(tiny_f16), "-f",
                    str(ROOT / "config/data/evaluation.txt"), "-c", "128", "--chunks", "4", "-t", "2",
                    "--kl-divergence-base", str(logits)], check=True, capture_output=True)
    subprocess.run([str(toolchain_bin / "llama-quantize"), str(tiny_f16), str(quant), "Q8_0", "2"],
                   check=True, capture_output=True)
    write_sidecar(logits)
    write_sidecar(quant)
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        results = [measure_quant(toolchain_stamp, quant, logits, 2, tmp_path / f"kld-{i}.log", []) for i in range(30)]
    finally:
        for proc in load:
            proc.kill()
    assert all(r["chunks"] == 4 and r["same_top_pct"] > 50 for r in results)
    assert len({r["kld_mean"] for r in results}) == 1  # same inputs, same figures


def test_failed_sanity_fails_the_quant():
    entry = _entry("Q8_0", "Q8_0", True, {"max_mean_kld": 0.01},
                   sanity={**SANE, "passed": False, "problems": ["empty output for prompt 1"], "mean_same_first_tokens": 0})
    assert entry["verdict"] == "failed" and entry["reasons"] == ["sanity: empty output for prompt 1"]
