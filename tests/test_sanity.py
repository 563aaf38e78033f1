"""Sanity generation judged against the reference: a loop or an empty output the reference has too
is the model's, not the quant's; prompts where the reference itself loops or is empty are named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.workflow_run import ROOT
from workflow_scripts.errors import UserError
from workflow_scripts.model_card import _sanity as card_sanity
from workflow_scripts.sanity import check, common_prefix, describe_reference, repetition_rate
from workflow_scripts.validate import model_report

LIMIT, MARGIN = 0.5, 0.3  # the schema's defaults of sanity.max_repetition and sanity.repetition_margin


def _looping(start: int, period: int, length: int = 32) -> list[int]:
    """``start`` distinct tokens, then a loop of ``period`` tokens, ``length`` tokens in all."""
    return (list(range(100, 100 + start)) + list(range(200, 200 + period)) * length)[:length]


def _out(tokens: list[int], prompt: str = "p", text: str | None = None) -> dict:
    return {"prompt": prompt, "tokens": tokens, "text": "w " * len(tokens) if text is None else text}


GEMMA_LIKE = _looping(11, 3)  # 15 of 29 4-grams repeat: 0.5172, the Gemma-3-270M F16's rate on its looping prompt
FINE = list(range(32))


def test_repetition_and_agreement_measures():
    assert repetition_rate(FINE) == 0.0 and repetition_rate([7, 8] * 20) > 0.9
    assert round(repetition_rate(GEMMA_LIKE), 4) == 0.5172 and round(repetition_rate(_looping(0, 1)), 4) == 0.9655
    assert common_prefix([1, 2, 3, 9], [1, 2, 3, 4, 5]) == 3
    result = check([_out(FINE), _out([5, 6] * 16)], [_out(FINE), _out(FINE)], LIMIT, MARGIN)
    assert [p["same_first_tokens"] for p in result["prompts"]] == [32, 0] and result["mean_same_first_tokens"] == 16


def test_a_loop_the_reference_has_too_passes():
    """Reference and quant loop alike (the quant's loop starts two tokens sooner): no failure, and
    the prompt is named as one that could not discriminate."""
    result = check([_out(_looping(9, 4))], [_out(GEMMA_LIKE)], LIMIT, MARGIN)
    assert result["passed"] and result["problems"] == [] and result["not_discriminating"] == [1]
    row = result["prompts"][0]
    assert (row["repetition_rate"], row["loops"], row["reference_repetition_rate"], row["repetition_limit"]) == \
        (0.5517, True, 0.5172, 0.8172)


def test_a_loop_the_reference_does_not_have_fails():
    result = check([_out(FINE), _out(_looping(0, 2))], [_out(FINE), _out(FINE)], LIMIT, MARGIN)
    assert not result["passed"] and result["not_discriminating"] == []
    assert result["problems"] == ["repetition loop for prompt 2: rate 0.931 > 0.5 (the reference's 0.0)"]


def test_looping_clearly_more_than_a_looping_reference_fails():
    result = check([_out(_looping(0, 1))], [_out(GEMMA_LIKE)], LIMIT, MARGIN)
    assert result["problems"] == ["repetition loop for prompt 1: rate 0.9655 > the reference's 0.5172 + 0.3"]
    assert result["not_discriminating"] == [1]  # named all the same: only a gross loop can fail there


def test_a_threshold_between_reference_and_quant_is_not_a_failure():
    """Reference just under max_repetition (0.4483), quant just over (0.5172): the same text quality
    on two sides of a line; the quant fails only above the reference's rate + the margin."""
    result = check([_out(GEMMA_LIKE)], [_out(_looping(13, 3))], LIMIT, MARGIN)
    assert result["passed"] and result["prompts"][0]["repetition_limit"] == 0.7483
    assert result["not_discriminating"] == []  # the reference does not loop: the prompt discriminates


def test_an_empty_reference_cannot_discriminate_an_empty_quant():
    empty, blank = _out([], text=""), _out([5], text=" \n")  # whitespace only counts as empty
    result = check([empty, blank, _out([])], [empty, empty, _out(FINE)], LIMIT, MARGIN)
    assert result["problems"] == ["empty output for prompt 3 (the reference wrote 32 tokens)"]
    assert result["not_discriminating"] == [1, 2]
    # where the reference is empty, a loop still fails: the reference does not loop
    assert check([_out(_looping(0, 2))], [empty], LIMIT, MARGIN)["problems"] == [
        "repetition loop for prompt 1: rate 0.931 > 0.5 (the reference's 0.0)"]


def test_a_reference_made_from_other_prompts_is_refused():
    with pytest.raises(UserError, match="other prompts"):
        check([_out(FINE, prompt="a")], [_out(FINE, prompt="b")], LIMIT, MARGIN)


def test_the_reference_record_the_report_and_the_card_name_what_could_not_discriminate():
    record = describe_reference([_out(GEMMA_LIKE, "def f(n):"), _out(FINE, "Water"), _out([], "Hi", "")], LIMIT, MARGIN)
    assert [row["loops"] for row in record["prompts"]] == [True, False, False]
    assert [row["empty"] for row in record["prompts"]] == [False, False, True]
    assert record["not_discriminating"] == [
        {"prompt": 1, "text": "def f(n):", "reason": "the reference loops (repetition 0.5172 > 0.5)"},
        {"prompt": 3, "text": "Hi", "reason": "the reference's output is empty"}]
    assert record["warning"] is None
    report = model_report("m", {"ppl": 9.4}, {}, {}, record)
    assert report["sanity"]["not_discriminating"] == record["not_discriminating"]
    assert [row["repetition_rate"] for row in report["sanity"]["reference"]] == [0.5172, 0.0, 0.0]
    assert card_sanity({"sanity": report["sanity"]}) == [
        "- Sanity: greedy continuations of 3 fixed prompts, judged against the reference's: a file fails a prompt "
        "where its output is empty and the reference's is not, or where its share of repeated 4-token sequences is "
        "above both 0.5 and the reference's + 0.3. Could not discriminate: prompt 1 (\"def f(n):\"), the reference "
        "loops (repetition 0.5172 > 0.5); prompt 3 (\"Hi\"), the reference's output is empty."]
    assert card_sanity({"sanity": None}) == []


def test_when_no_prompt_can_discriminate_the_report_warns():
    record = describe_reference([_out(GEMMA_LIKE, "a"), _out([], "b", "")], LIMIT, MARGIN)
    assert record["warning"] == ("no sanity prompt could discriminate: the reference itself is empty or loops on all 2, "
                                 "so the sanity check proves little for this model")
    card = card_sanity({"sanity": model_report("m", {}, {}, {}, record)["sanity"]})[0]
    assert card.endswith(" **Warning**: no sanity prompt could discriminate: the reference itself is empty or loops "
                         "on all 2, so the sanity check proves little for this model.")


def _sanity_run(stamp, gguf, settings: dict, out, reference=None, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "workflow_scripts.sanity", "--stamp", str(stamp), "--gguf", str(gguf),
           "--settings-json", json.dumps(settings), "--threads", "2", *extra, "--out", str(out)]
    subprocess.run(cmd + (["--reference", str(reference)] if reference else []), cwd=ROOT, check=True)
    return json.loads(out.read_text())


@pytest.mark.toolchain
def test_a_real_looping_reference_and_its_quant_are_judged_by_comparison(tiny_run, tmp_path):
    """The tiny random model through llama-cpp-python on the toolchain's library. At the default 32
    tokens its reference does not loop: every prompt discriminates and the quants pass on their own
    (repetition under max_repetition). Continued for 480 tokens its greedy text loops (here on every
    prompt: 0.69, 0.51, 0.58), and so does its Q8_0's, above max_repetition: the reference-blind test
    would withhold this near-lossless quant; judged against the reference it passes, and the
    looping prompts are named."""
    model = tiny_run.workdir / "results" / "tiny"
    today = json.loads((model / "validate" / "reference.sanity.json").read_text())
    assert today["not_discriminating"] == [] and today["warning"] is None
    assert not any(row["loops"] or row["empty"] for row in today["prompts"])
    report = json.loads((model / "validation_report.json").read_text())
    assert report["sanity"]["not_discriminating"] == [] and report["sanity"]["repetition_margin"] == MARGIN
    for name, entry in report["quants"].items():
        quant = json.loads((model / "validate" / f"{name}.sanity.json").read_text())
        assert entry["sanity"]["passed"] and all(row["repetition_rate"] <= LIMIT for row in quant["prompts"]), name
    assert "- Sanity: greedy continuations of 3 fixed prompts" in (tiny_run.workdir / "results/package/tiny/README.md").read_text()

    stamp = tiny_run.workdir / "results" / "toolchain" / "llama.cpp.json"
    settings = {"prompts": [out["prompt"] for out in today["outputs"]], "max_tokens": 480,
                "max_repetition": today["max_repetition"], "repetition_margin": today["repetition_margin"]}
    reference = _sanity_run(stamp, model / "reference" / "tiny-F16.gguf", settings, tmp_path / "reference.sanity.json")
    looping = [number for number, row in enumerate(reference["prompts"], 1) if row["loops"]]
    assert looping and [item["prompt"] for item in reference["not_discriminating"]] == looping
    assert (reference["warning"] is not None) == (len(looping) == len(settings["prompts"]))
    quant = _sanity_run(stamp, model / "quant" / "tiny-Q8_0.gguf", settings, tmp_path / "Q8_0.sanity.json",
                        tmp_path / "reference.sanity.json")
    assert any(row["loops"] for row in quant["prompts"]), quant["prompts"]  # over max_repetition somewhere
    assert quant["passed"] and quant["not_discriminating"] == looping, quant["problems"]
    for row, ref in zip(quant["prompts"], reference["prompts"]):
        assert row["reference_repetition_rate"] == ref["repetition_rate"]
        assert row["repetition_limit"] == max(LIMIT, round(ref["repetition_rate"] + MARGIN, 4))


@pytest.mark.toolchain
def test_gpu_layers_on_a_cpu_toolchain_generate_the_same_text(tiny_run, tmp_path):
    """A CUDA toolchain's sanity jobs pass --gpu-layers to llama-cpp-python (test_gpu checks the
    command lines); the option reaches the library, which on a CPU build has no GPU to put layers
    on and generates exactly what the workflow's own run generated."""
    model = tiny_run.workdir / "results" / "tiny"
    today = json.loads((model / "validate" / "reference.sanity.json").read_text())
    settings = {"prompts": [out["prompt"] for out in today["outputs"]], "max_tokens": max(row["tokens"] for row in today["prompts"]),
                "max_repetition": today["max_repetition"], "repetition_margin": today["repetition_margin"]}
    stamp = tiny_run.workdir / "results" / "toolchain" / "llama.cpp.json"
    again = _sanity_run(stamp, model / "reference" / "tiny-F16.gguf", settings, tmp_path / "reference.sanity.json",
                        None, "--gpu-layers", "999")
    assert [out["tokens"] for out in again["outputs"]] == [out["tokens"] for out in today["outputs"]]


def test_random_weight_benchmark_runs_ship_a_chance_loop_but_not_an_empty_output(tmp_path):
    """The benchmarks' config for random weights (gpu_measure.unjudged, used by the 8B/MoE runs and
    cost_scale) is one the schema accepts, and under its sanity settings the random Mixtral's
    Q4_K_M on the H200 (repetition 0.93 where the reference had 0.28) passes, while an empty
    output still fails."""
    from benchmarks.gpu_measure import workflow_config
    from workflow_scripts.config import fill_defaults, load_schema, schema_error_message

    config = workflow_config("cuda", tmp_path, "moe")
    assert schema_error_message(config, load_schema(), "gpu_measure") is None
    fill_defaults(config)
    limit, margin = config["sanity"]["max_repetition"], config["sanity"]["repetition_margin"]
    reference = _out(_looping(1, 20))
    assert (repetition_rate(reference["tokens"]), repetition_rate(_looping(0, 2))) == (8 / 29, 27 / 29)  # 0.28, 0.93
    assert check([_out(_looping(0, 2))], [reference], LIMIT, MARGIN)["passed"] is False  # the default withholds it
    assert check([_out(_looping(0, 2))], [reference], limit, margin)["passed"] is True
    assert check([_out([])], [reference], limit, margin)["problems"] == [
        "empty output for prompt 1 (the reference wrote 32 tokens)"]
