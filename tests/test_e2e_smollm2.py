"""The default job on the real demo model (SmolLM2-135M-Instruct), end to end, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from dag import planned_jobs
from workflow_run import ROOT, snakemake, write_config

pytestmark = [pytest.mark.toolchain, pytest.mark.real_model]

MODEL = "smollm2-135m"
QUANTS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M")
BASE = {"Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "IQ4_XS": "IQ4_XS", "Q3_K_M": "Q3_K"}
CALIBRATION = ROOT / "config" / "data" / "calibration.txt"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, toolchain_root):
    """A finished run of the default config (only the calibration path made absolute)."""
    workdir = tmp_path_factory.mktemp("demo")
    config = write_config(workdir, {"calibration": {"text": str(CALIBRATION)}})
    proc = snakemake(workdir, config)
    return workdir, config, proc


def _quant(workdir: Path, quant: str) -> Path:
    return workdir / "results" / MODEL / "quant" / f"{MODEL}-{quant}.gguf"


def test_every_quant_is_made_checksummed_and_listed(demo):
    workdir, _, _ = demo
    model_dir = workdir / "results" / MODEL
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=model_dir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split()[1] for line in (model_dir / "SHA256SUMS").read_text().splitlines()}
    assert listed == {f"quant/{MODEL}-{q}.gguf" for q in QUANTS} | {
        f"reference/{MODEL}-F16.gguf", f"imatrix/{MODEL}.imatrix.gguf"}
    for quant in QUANTS:
        sidecar = _quant(workdir, quant).with_name(_quant(workdir, quant).name + ".sha256")
        assert subprocess.run(["sha256sum", "-c", sidecar.name], cwd=sidecar.parent, capture_output=True).returncode == 0
    assert not list((workdir / "results").rglob("*.partial"))


def test_quants_have_the_requested_types_and_stable_relative_paths(demo):
    from gguf import GGUFReader

    workdir, _, _ = demo
    bpw = {}
    for quant in QUANTS:
        census = json.loads(_quant(workdir, quant).with_suffix(".census.json").read_text())
        reader = GGUFReader(_quant(workdir, quant))
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types == census["tensor_types"]
        assert census["classes"]["override_ignored"] == 0
        assert sum(census["classes"].values()) == census["tensors"] == 272
        # Every tensor of the file type's own type is "requested"; every other one is explained.
        assert census["classes"]["requested"] == census["types"].get(BASE[quant], 0), (quant, census)
        bpw[quant] = census["bits_per_weight"]
        fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("quantize.")}
        assert fields["quantize.imatrix.file"] == f"results/{MODEL}/imatrix/{MODEL}.imatrix.gguf"
        assert fields["quantize.imatrix.dataset"] == f"results/{MODEL}/imatrix/calibration.txt"
    # 576 columns are not a multiple of 256: most K-quant tensors fall back, and the census says so.
    q4 = json.loads(_quant(workdir, "Q4_K_M").with_suffix(".census.json").read_text())
    assert q4["classes"]["fallback"] == 180
    assert q4["fallbacks"][0]["reason"].startswith("576 columns not divisible by 256")
    assert 8.4 < bpw["Q8_0"] < 8.6
    assert bpw["Q8_0"] > bpw["Q5_K_M"] > bpw["Q4_K_M"] > bpw["IQ4_XS"]


def test_reference_is_declared_a_dequantized_q4_1(demo):
    workdir, _, _ = demo
    record = json.loads((workdir / "results" / MODEL / "reference" / f"{MODEL}-F16.convert.json").read_text())
    assert record["method"] == "dequantize" and record["source_types"]["Q4_1"] == 210
    assert "dequantized Q4_1" in record["note"]
    parity = json.loads((workdir / "results" / MODEL / "checks" / "tokenizer_parity.json").read_text())
    assert parity["verdict"] == "identical" and parity["tokens_compared"] > 10000


def test_quants_load_and_generate_with_llama_cpp_python(demo, toolchain_bin):
    workdir, _, _ = demo
    code = """
import sys
from llama_cpp import Llama
for path in sys.argv[1:]:
    llm = Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False, seed=1)
    out = llm("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert out.strip(), (path, out)
    print(path.rsplit("-", 1)[-1], repr(out))
"""
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(toolchain_bin)}
    proc = subprocess.run([str(Path(os.sys.executable)), "-c", code, *map(str, (_quant(workdir, q) for q in QUANTS))],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) == len(QUANTS)


def test_second_run_does_nothing(demo):
    workdir, config, _ = demo
    before = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*.gguf")}
    proc = snakemake(workdir, config)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*.gguf")}


def test_only_stale_jobs_re_run(demo):
    workdir, _, _ = demo
    def plan(**change):
        config = {"calibration": {"text": str(CALIBRATION)}, **change}
        path = workdir / "changed.yaml"
        path.write_text(yaml.safe_dump(config))
        return planned_jobs(workdir, path)

    per_model = {"sha256sums": 1, "validation_report": 1, "quality_table": 1}
    assert plan(quants=[*QUANTS, "Q4_0"]) == {"quantize": 1, "validate_quant": 1, "sanity_quant": 1, **per_model}
    new_text = workdir / "calibration-v2.txt"
    new_text.write_text(CALIBRATION.read_text() + "\nOne more paragraph for the importance matrix.\n")
    assert plan(calibration={"text": str(new_text)}) == {
        "calibration_text": 1, "tokenizer_parity": 1, "imatrix": 1, "quantize": len(QUANTS),
        "validate_quant": len(QUANTS), "sanity_quant": len(QUANTS), **per_model}
    everything = plan(toolchain={"llama_cpp_python_version": "0.3.35"})
    assert everything["toolchain"] == 1 and everything["convert"] == 1 and everything["quantize"] == len(QUANTS)


def test_every_quant_is_measured_and_judged(demo):
    workdir, _, _ = demo
    report = json.loads((workdir / "results" / MODEL / "validation_report.json").read_text())
    quants = report["quants"]
    assert set(quants) == set(QUANTS)
    assert quants["Q8_0"]["verdict"] == "passed" and quants["Q8_0"]["gate"]["max_mean_kld"] == 0.01
    assert quants["Q8_0"]["kld_mean"] < quants["Q4_K_M"]["kld_mean"] < quants["Q3_K_M"]["kld_mean"]
    assert 0 <= quants["Q8_0"]["delta_ppl_pct"] < quants["Q4_K_M"]["delta_ppl_pct"]
    assert report["reference"]["chunks"] == 10 and report["reference"]["ppl"] > 1
    for quant in QUANTS:
        assert (quants[quant]["verdict"] == "failed") == bool(quants[quant]["reasons"])
        assert quants[quant]["sanity"]["passed"], quants[quant]["sanity"]
    # Q8_0 continues the prompts almost exactly as the reference does; Q3_K_M drifts sooner.
    assert quants["Q8_0"]["sanity"]["mean_same_first_tokens"] >= quants["Q3_K_M"]["sanity"]["mean_same_first_tokens"]
    assert quants["Q8_0"]["sanity"]["mean_same_first_tokens"] >= 8
    table = (workdir / "results" / "quality.csv").read_text().splitlines()
    assert len(table) == 1 + len(QUANTS) and table[1].startswith(f"{MODEL},Q8_0,passed,")
    logits = workdir / "results" / MODEL / "validate" / f"{MODEL}-reference.logits"
    assert logits.stat().st_size > 100_000_000  # kept for later quants (keep_reference_logits)


def test_a_gate_change_rejudges_without_remeasuring(demo):
    workdir, _, _ = demo
    config = write_config(workdir, {"calibration": {"text": str(CALIBRATION)},
                                    "gates": {"per_quant": {"Q4_K_M": {"max_mean_kld": 0.001}}}}, "tight-gate.yaml")
    assert planned_jobs(workdir, config) == {"validation_report": 1, "quality_table": 1}
    snakemake(workdir, config)
    report = json.loads((workdir / "results" / MODEL / "validation_report.json").read_text())
    q4 = report["quants"]["Q4_K_M"]
    assert q4["verdict"] == "failed" and q4["reasons"][0].startswith("mean KLD 0.0") and q4["reasons"][0].endswith("> 0.001")
    assert "Q4_K_M" in report["failed"] and "Q8_0" in report["passed"]
    assert f"{MODEL},Q4_K_M,failed," in (workdir / "results" / "quality.csv").read_text()
