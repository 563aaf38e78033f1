"""Tokenizer parity: the converted GGUF tokenizes like its source, and a wrong tokenizer is caught."""


import pytest

from tests.workflow_run import CALIBRATION as CAL
from workflow_scripts.errors import UserError
from workflow_scripts.tokenizer_parity import first_difference, texts_to_compare

pytestmark = pytest.mark.toolchain


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert first_difference([], []) is None


def test_compared_texts_include_edge_cases_and_specials():
    texts = texts_to_compare("para one\n\npara two", ["<|im_start|>"])
    assert texts[:2] == ["para one", "para two"]
    assert any("1234567890" in t for t in texts) and "Before <|im_start|> after." in texts


@pytest.fixture
def lib(toolchain_bin, monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(toolchain_bin))


def test_converted_tiny_model_matches_its_hf_tokenizer(lib, tiny_hf, tiny_f16):
    from workflow_scripts.tokenizer_parity import check_against_hf

    report = check_against_hf(tiny_f16, tiny_hf, CAL.read_text())
    assert report["tokens_compared"] > 10000 and report["bos_id"] == 1 and report["adds_bos"] is True


def test_a_different_tokenizer_is_caught_with_the_first_differing_position(lib, tiny_f16, tmp_path):
    from tests.tiny_model import make_tiny_llama
    from workflow_scripts.tokenizer_parity import check_against_hf

    # Same architecture and vocabulary size, tokenizer trained on other text: ids differ.
    other = make_tiny_llama(tmp_path / "other", CAL.read_text().upper())
    with pytest.raises(UserError, match=r"tokenizer parity failed: text .* first difference at token \d+"):
        check_against_hf(tiny_f16, other, CAL.read_text())


@pytest.mark.real_model
def test_gguf_reference_metadata_must_match(lib, tiny_f16, smollm2_gguf):
    from workflow_scripts.tokenizer_parity import check_against_gguf

    with pytest.raises(UserError, match=r"differs from .* in tokenizer metadata .*tokenizer.ggml.merges"):
        check_against_gguf(tiny_f16, smollm2_gguf, CAL.read_text())


def test_cli_writes_no_report_on_mismatch(toolchain_stamp, tiny_f16, tmp_path):
    import subprocess
    import sys

    from tests.tiny_model import make_tiny_llama

    other = make_tiny_llama(tmp_path / "other", CAL.read_text().upper())
    out = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.tokenizer_parity", "--gguf", str(tiny_f16),
                           "--hf-dir", str(other), "--text", str(CAL), "--stamp", str(toolchain_stamp),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "gguf-forge error: tokenizer parity failed: text " in proc.stderr
    assert not out.exists()
