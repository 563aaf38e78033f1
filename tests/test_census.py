"""Recipe check: parsers on captured llama-quantize output, and the census on real quants."""

import subprocess
from pathlib import Path

import pytest

from workflow_scripts.errors import UserError
from workflow_scripts.gguf_census import Recipe, census, preflight
from workflow_scripts.llama_tools import parse_quantize_fallbacks, parse_quantize_overrides, parse_quantize_tensors

FIXTURES = Path(__file__).parent / "fixtures" / "quantize"


def test_parse_tensor_lines_of_a_real_q4_k_m_log():
    lines = parse_quantize_tensors((FIXTURES / "smollm2-135m-Q4_K_M.log").read_text())
    assert len(lines) == 272
    by_name = {line.name: line for line in lines}
    assert by_name["blk.0.attn_v.weight"].shape == (576, 192, 1, 1)
    assert by_name["blk.0.attn_v.weight"].target_type == "Q8_0"
    assert by_name["blk.0.ffn_down.weight"].target_type == "Q6_K"
    assert by_name["output_norm.weight"].target_type is None  # copied, not quantized
    # token_embd's "converting to" comes after an imatrix message on the next line.
    assert by_name["token_embd.weight"].target_type == "Q8_0"


def test_parse_fallbacks_with_their_reason():
    fallbacks = parse_quantize_fallbacks((FIXTURES / "smollm2-135m-Q4_K_M.log").read_text())
    assert len(fallbacks) == 180
    fb = fallbacks["blk.0.attn_v.weight"]
    assert (fb.ncols, fb.block, fb.wanted, fb.actual) == (576, 256, "Q6_K", "Q8_0")
    assert fb.reason == "576 columns not divisible by 256 (Q6_K block) -> Q8_0"


def test_parse_manual_overrides():
    overrides = parse_quantize_overrides((FIXTURES / "tiny-Q4_K_M-overrides.log").read_text())
    assert overrides == {"blk.0.attn_v.weight": "Q8_0", "blk.1.attn_v.weight": "Q8_0", "blk.1.ffn_down.weight": "Q5_0"}


def test_override_precedence_follows_llama_cpp():
    recipe = Recipe("Q4_K_M", [("ATTN_V", "Q8_0"), ("attn", "Q6_K")], output_tensor_type="Q8_0")
    assert recipe.override_for("blk.3.attn_v.weight") == ("--tensor-type ATTN_V=Q8_0", "Q8_0")  # lower-cased, first wins
    assert recipe.override_for("blk.3.attn_q.weight")[1] == "Q6_K"
    assert recipe.override_for("output.weight") == ("--output-tensor-type", "Q8_0")
    assert recipe.override_for("blk.3.ffn_up.weight") is None


@pytest.fixture(scope="module")
def tiny_overridden(tiny_f16, toolchain_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("ovr") / "tiny-Q4_K_M.gguf"
    proc = subprocess.run([str(toolchain_bin / "llama-quantize"), "--tensor-type", "attn_v=q8_0",
                           "--tensor-type", r"blk\.1\.ffn_down=q5_0", "--output-tensor-type", "q8_0",
                           "--token-embedding-type", "q8_0", str(tiny_f16), str(out), "Q4_K_M", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    return out, proc.stdout + proc.stderr


@pytest.mark.toolchain
def test_honored_overrides_pass_and_are_recorded(tiny_overridden):
    gguf, log = tiny_overridden
    recipe = Recipe("Q4_K_M", [("attn_v", "Q8_0"), (r"blk\.1\.ffn_down", "Q5_0")], "Q8_0", "Q8_0")
    result = census(gguf, recipe, log)
    assert result["classes"]["override"] == 5 and result["classes"]["override_ignored"] == 0
    assert {o["tensor"] for o in result["overrides"]} == {
        "blk.0.attn_v.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight", "output.weight", "token_embd.weight"}
    # 64 and 128 columns are not multiples of 256: the other Q4_K tensors fell back, with the reason.
    assert result["classes"]["fallback"] == 11
    assert all("not divisible by 256" in f["reason"] for f in result["fallbacks"])


@pytest.mark.toolchain
def test_an_override_that_did_not_take_effect_fails_naming_the_tensor(tiny_overridden):
    gguf, log = tiny_overridden
    # The file has attn_v in Q8_0; a recipe that asked Q6_K for it was not honored.
    with pytest.raises(UserError, match=r"ignored 2 type override\(s\): blk.0.attn_v.weight \(asked Q6_K .* got Q8_0\)"):
        census(gguf, Recipe("Q4_K_M", [("attn_v", "Q6_K")]), log)


@pytest.mark.toolchain
def test_bits_per_weight_from_tensor_sizes(tiny_f16, toolchain_bin, tmp_path):
    results = {}
    for quant in ("Q8_0", "Q4_K_M"):
        out = tmp_path / f"{quant}.gguf"
        proc = subprocess.run([str(toolchain_bin / "llama-quantize"), str(tiny_f16), str(out), quant, "2"],
                              capture_output=True, text=True)
        results[quant] = census(out, Recipe(quant), proc.stdout + proc.stderr)
    f16 = census(tiny_f16, Recipe("F16"), "")
    assert 15.9 < f16["bits_per_weight"] <= 32
    assert 8.5 <= results["Q8_0"]["bits_per_weight"] < 9.5  # norms stay F32 in this tiny model
    assert results["Q4_K_M"]["bits_per_weight"] < results["Q8_0"]["bits_per_weight"]


@pytest.mark.toolchain
def test_preflight_refuses_an_output_type_llama_quantize_would_abort_on(tiny_f16):
    # The tiny model's rows are 64 values: Q6_K (block 256) cannot hold them, and llama-quantize
    # applies --output-tensor-type without its fallback (it aborted with "double free" here).
    with pytest.raises(UserError, match=r"quant_options.Q4_K_M.output_tensor_type: Q6_K needs rows that are a "
                                        r"multiple of 256 values, but output.weight of tiny-F16.gguf has 64"):
        preflight(tiny_f16, Recipe("Q4_K_M", output_tensor_type="Q6_K"))
    with pytest.raises(UserError, match="token_embedding_type"):
        preflight(tiny_f16, Recipe("Q4_K_M", token_embedding_type="IQ4_XS"))
    preflight(tiny_f16, Recipe("Q4_K_M", [("attn_v", "Q6_K")], "Q8_0", "Q8_0"))  # overrides fall back: fine


@pytest.mark.toolchain
def test_preflight_refuses_a_type_llama_quantize_has_no_row_fallback_for(tiny_f16):
    # Q1_0 (blocks of 128) has no fallback type in the pinned llama.cpp: on the tiny model's rows of
    # 64 values llama-quantize aborted ("no tensor type fallback is defined for type q1_0").
    with pytest.raises(UserError, match=r"^quants: Q1_0 needs rows that are a multiple of 128 values and llama.cpp "
                                        r"has no fallback type for it, but token_embd.weight of tiny-F16.gguf has 64 "
                                        r"\(13 tensor\(s\) in all\)"):  # ffn_down (128 wide) fits
        preflight(tiny_f16, Recipe("Q1_0"))
    preflight(tiny_f16, Recipe("Q1_0", [(".", "Q8_0")], token_embedding_type="Q8_0"))  # every matrix overridden
    preflight(tiny_f16, Recipe("Q2_K"))  # falls back per tensor: fine


def test_a_matrix_copied_in_the_file_types_own_type_is_requested():
    """llama-quantize prints no "converting to" for a tensor already of the type asked: an F16 file
    of an F16 reference is all copies, and its matrices are what was requested."""
    from workflow_scripts.gguf_census import TensorInfo, classify
    from workflow_scripts.llama_tools import TensorLine

    copied = {"blk.0.attn_q.weight": TensorLine("blk.0.attn_q.weight", (64, 64), "F16", None),
              "blk.0.attn_norm.weight": TensorLine("blk.0.attn_norm.weight", (64,), "F32", None)}
    matrix, norm = TensorInfo("F16", (64, 64), 8192, 4096), TensorInfo("F32", (64,), 256, 64)
    assert classify("blk.0.attn_q.weight", matrix, Recipe("F16"), "F16", {}, copied) == ("requested", {})
    assert classify("blk.0.attn_norm.weight", norm, Recipe("F16"), "F16", {}, copied) == ("not_quantized", {})
    assert classify("blk.0.attn_q.weight", matrix, Recipe("Q8_0"), "Q8_0", {}, copied) == ("not_quantized", {})
