"""Every quant type the schema allows works: one run makes, checks and validates all of them at once
on a tiny model (scenario ``every-quant-type``), and a type the workflow cannot make is refused
when the workflow is planned, with its reason.

The model is the tiny random Llama made 256 wide (FFN 512), so that every row fits every type's
block and each type is really exercised: on the shared tiny model (64 wide) the 256-block types all
fall back to 32-block ones, and Q1_0, which has no fallback, is refused (tests/test_census.py).
Random weights make the quality gates judge noise, so a verdict may be either; what is checked is
what a user relies on: the file and its checksum, the census's base type, the figures of
llama-perplexity, the sanity generation and the per-tensor error. 45 s on an idle 2-core machine
(90 s of CPU time; 3 minutes while other jobs loaded it to a load average of 6-8).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from types import SimpleNamespace

import pytest
import yaml

from tests.workflow_run import CALIBRATION, scenario, snakemake, write_config
from workflow_scripts.quant_types import (
    IMATRIX_REQUIRED_QUANTS, QUANT_TYPES, bits_per_weight, expected_base_type, remedy_floor, supported_quant_types,
    unsupported_reason,
)

pytestmark = [pytest.mark.toolchain, pytest.mark.slow]

TYPES = supported_quant_types()
WIDE = {"hidden_size": 256, "intermediate_size": 512}
MATRICES = 16  # token_embd, output, 7 per layer × 2 layers
# One thread per job, two jobs side by side: the tiny model's jobs are mostly start-up.
ONE_THREAD = ("--set-threads", "quantize=1", "validate_quant=1", "reference_logits=1", "sanity_quant=1",
              "sanity_reference=1", "imatrix=2")


@pytest.fixture(scope="module")
def every_run(tmp_path_factory, toolchain_root) -> SimpleNamespace:
    """Scenario ``every-quant-type`` with every supported type, asked for each build's verdict only
    (quantize, census, perplexity/KLD, sanity, per-tensor error): no speed, no package."""
    from tests.tiny_model import make_tiny_llama

    root = tmp_path_factory.mktemp("every-quant-type")
    model = make_tiny_llama(root / "wide-llama", CALIBRATION.read_text(), shape=WIDE)
    workdir = root / "run"
    config = scenario("every-quant-type", workdir, model)
    settings = yaml.safe_load(config.read_text())
    write_config(workdir, {**settings, "quants": list(TYPES)})
    targets = [f"results/tiny/validate/{quant}.verdict.json" for quant in TYPES]
    start = time.monotonic()
    proc = snakemake(workdir, config, *targets, "--cores", "2", *ONE_THREAD)
    print(f"every quant type ({len(TYPES)}): {time.monotonic() - start:.0f} s")
    return SimpleNamespace(workdir=workdir, config=config, settings=settings, model=workdir / "results" / "tiny",
                           proc=proc)


@pytest.mark.parametrize("quant", TYPES)
def test_the_type_is_made_with_its_base_type(every_run, quant):
    from workflow_scripts.checksums import verify

    gguf = every_run.model / "quant" / f"tiny-{quant}.gguf"
    verify(gguf)
    census = json.loads(gguf.with_suffix(".census.json").read_text())
    base = expected_base_type(quant)
    assert census["base_type"] == base
    # Every row fits: nothing fell back, and what is not the base type is the type's own mixture.
    assert census["classes"]["fallback"] == census["classes"]["override_ignored"] == 0, census["classes"]
    assert census["classes"]["requested"] == census["types"].get(base, 0)
    if quant == "MXFP4_MOE":  # MXFP4 only for MoE expert tensors: a dense model's file is all Q8_0
        assert census["types"] == {"F32": 5, "Q8_0": MATRICES}
    else:
        assert 2 * census["classes"]["requested"] >= MATRICES, census["types"]
    assert census["bits_per_weight"] >= bits_per_weight(remedy_floor(quant))


@pytest.mark.parametrize("quant", TYPES)
def test_the_type_loads_and_is_validated(every_run, quant):
    metrics = json.loads((every_run.model / "validate" / f"{quant}.json").read_text())
    census = json.loads((every_run.model / "quant" / f"tiny-{quant}.census.json").read_text())
    assert metrics["chunks"] == every_run.settings["evaluation"]["chunks"] and metrics["types"] == census["types"]
    assert math.isfinite(metrics["ppl"]) and 0 <= metrics["kld_mean"] < 1 and 0 <= metrics["same_top_pct"] <= 100
    verdict = json.loads((every_run.model / "validate" / f"{quant}.verdict.json").read_text())
    assert verdict["verdict"] in ("passed", "failed") and verdict["sanity"]
    # The per-tensor error covers every type the file stores other than the reference's (Q1_0 too,
    # which gguf-py cannot dequantize).
    changed = set(census["types"]) - {"F32", "F16"}
    assert set(verdict["tensor_error"]["by_type"]) == changed
    assert all(0 < row["rel_rms"] < 1 for row in verdict["tensor_error"]["by_type"].values()), verdict["tensor_error"]


def test_the_types_that_need_an_imatrix_are_those_llama_quantize_refuses_without_one(every_run, toolchain_bin,
                                                                                      tmp_path):
    """The config check refuses IMATRIX_REQUIRED_QUANTS without an imatrix: the same set the pinned
    llama-quantize refuses on this model, where no tensor falls back to a type that needs none."""
    reference = every_run.model / "reference" / "tiny-F16.gguf"
    refused = {}
    for quant in TYPES:
        proc = subprocess.run([str(toolchain_bin / "llama-quantize"), str(reference), str(tmp_path / "q.gguf"), quant,
                               "1"], capture_output=True, text=True)
        if proc.returncode:
            refused[quant] = "requires an imatrix" in proc.stdout + proc.stderr
    assert all(refused.values()), refused
    assert set(refused) == IMATRIX_REQUIRED_QUANTS


@pytest.mark.parametrize("quant", [q for q in QUANT_TYPES if unsupported_reason(q)] or [None])
def test_a_type_the_workflow_cannot_make_is_refused_at_plan_time(every_run, quant):
    if quant is None:
        pytest.skip("every quant type of the schema is supported")
    config = write_config(every_run.workdir, {**every_run.settings, "quants": [quant]}, f"{quant}.yaml")
    proc = snakemake(every_run.workdir, config, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"quants[0]: {quant!r} cannot be made by this workflow" in output, output[-2000:]
    assert "Traceback" not in output and "KeyError" not in output
