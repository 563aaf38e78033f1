"""Per-tensor error: gguf-py's dequantization agrees with llama.cpp's own, and the error ranks tensors."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ggml_oracle import ggml_to_float
from workflow_scripts.checksums import write_sidecar
from workflow_scripts.tensor_error import role, summarize, tensor_errors

TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q2_K", "IQ4_XS")  # Q2_K files hold Q3_K tensors


@pytest.fixture(scope="module")
def quants(tmp_path_factory, smollm2_gguf, toolchain_bin) -> dict[str, Path]:
    """The demo model's F16 reference and a static quant of each type (no imatrix: faster, same code)."""
    from workflow_scripts.convert import gguf_to_reference

    directory = tmp_path_factory.mktemp("tensor-error")
    files = {"F16": directory / "F16.gguf"}
    gguf_to_reference([smollm2_gguf], files["F16"])
    for quant in TYPES:
        files[quant] = directory / f"{quant}.gguf"
        subprocess.run([str(toolchain_bin / "llama-quantize"), str(files["F16"]), str(files[quant]), quant, "2"],
                       check=True, capture_output=True)
    return files


@pytest.mark.toolchain
@pytest.mark.real_model
def test_gguf_dequantization_agrees_with_llama_cpp_on_real_tensors(quants, toolchain_bin):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    lib = ctypes.CDLL(str(toolchain_bin / "libggml-base.so"))
    checked = {}
    for quant in TYPES:
        for tensor in GGUFReader(quants[quant]).tensors:
            kind = tensor.tensor_type.name
            if kind in checked or kind in ("F32", "F16"):
                continue
            ours = dequantize(tensor.data, tensor.tensor_type).ravel()
            theirs = ggml_to_float(lib, tensor)
            checked[kind] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    assert {"Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "IQ4_XS", "Q5_0", "Q4_0"} <= set(checked), checked
    assert max(checked.values()) <= 1e-3, checked


@pytest.mark.toolchain
@pytest.mark.real_model
def test_error_ranks_quants_and_tensors(quants):
    q8 = summarize(tensor_errors(quants["Q8_0"], quants["F16"]), worst=5)
    q3 = summarize(tensor_errors(quants["Q2_K"], quants["F16"]), worst=5)
    assert 0 < q8["rel_rms"] < q3["rel_rms"] / 5
    assert len(q3["worst"]) == 5 and [w["rel_rms"] for w in q3["worst"]] == sorted((w["rel_rms"] for w in q3["worst"]), reverse=True)
    assert q3["worst"][0]["rel_rms"] >= q3["by_role"][role(q3["worst"][0]["name"])]["mean_rel_rms"]
    assert sum(t["tensors"] for t in q8["by_type"].values()) == 211  # 272 less the 61 F32 norms left as they were
    # Tensors compared several at a time: the same figures, in the same (file) order.
    assert tensor_errors(quants["Q4_K_M"], quants["F16"], threads=3) == tensor_errors(quants["Q4_K_M"], quants["F16"])


def _write(path: Path, name: str, data: np.ndarray, qtype) -> None:
    """One tensor: ``data`` in ``qtype`` (raw bytes, one row per matrix row, are stored as given)."""
    from gguf import GGUFWriter
    from gguf.quants import quantize

    writer = GGUFWriter(str(path), "llama")
    if data.dtype == np.uint8:
        stored = data
    else:
        stored = quantize(data, qtype) if qtype.name not in ("F32", "F16") else data.astype(np.float16)
    writer.add_tensor(name, stored, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_known_error_on_a_hand_made_tensor(tmp_path):
    """A 4 × 32 tensor whose Q8_0 bytes are written by hand (one block per row, scale d = 1): the
    reference's row 0 is 127, 0.25, -3.75, then -13 … 15; rows 1-3 are 127 and 31 zeros. The quant
    stores row 0 as 127, 0, -4, -13 … 15 and rows 1-3 exactly, so the only errors are two of 0.25 in
    row 0. Squared error 2 × 0.0625 = 0.125; reference energy: row 0 127² + 0.0625 + 14.0625 + 2059
    (the squares of -13 … 15) = 18202.125, rows 1-3 3 × 127² = 48387; relative RMS √(0.125 / 66589.125)."""
    from gguf import GGMLQuantizationType

    reference = np.zeros((4, 32), dtype=np.float32)
    reference[:, 0] = 127
    reference[0, 1:] = [0.25, -3.75, *range(-13, 16)]
    one = np.float16(1.0).tobytes()
    quants = [[127, 0, -4, *range(-13, 16)]] + [[127] + [0] * 31] * 3
    q8_0 = np.frombuffer(b"".join(one + np.array(q, dtype=np.int8).tobytes() for q in quants), dtype=np.uint8)
    _write(tmp_path / "ref.gguf", "blk.0.attn_v.weight", reference, GGMLQuantizationType.F16)
    _write(tmp_path / "q.gguf", "blk.0.attn_v.weight", q8_0.reshape(4, 34), GGMLQuantizationType.Q8_0)
    [row] = tensor_errors(tmp_path / "q.gguf", tmp_path / "ref.gguf")
    assert row["type"] == "Q8_0" and row["n_elements"] == 128
    assert row["max_abs"] == 0.25 and row["rel_rms"] == pytest.approx(0.00137010, rel=1e-5)
    assert 0.00137010 == pytest.approx((0.125 / 66589.125) ** 0.5, rel=1e-5)  # the constant, worked out above
    assert tensor_errors(tmp_path / "ref.gguf", tmp_path / "ref.gguf") == []  # same type: not quantized


def test_cli_refuses_a_changed_file_and_a_missing_tensor(tmp_path):
    from gguf import GGMLQuantizationType

    data = np.ones((4, 32), dtype=np.float32)
    _write(tmp_path / "ref.gguf", "a.weight", data, GGMLQuantizationType.F16)
    _write(tmp_path / "q.gguf", "b.weight", data, GGMLQuantizationType.Q8_0)
    write_sidecar(tmp_path / "q.gguf")
    run = [sys.executable, "-m", "workflow_scripts.tensor_error", "--gguf", str(tmp_path / "q.gguf"),
           "--reference", str(tmp_path / "ref.gguf"), "--out", str(tmp_path / "out.json")]
    proc = subprocess.run(run, capture_output=True, text=True)
    assert proc.returncode == 2 and "tensor b.weight is not in the reference" in proc.stderr and "Traceback" not in proc.stderr
    with open(tmp_path / "q.gguf", "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    proc = subprocess.run([*run, "--verify", str(tmp_path / "q.gguf")], capture_output=True, text=True)
    assert proc.returncode == 2 and "q.gguf: checksum mismatch" in proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_q1_0_is_dequantized_by_its_block_layout(tmp_path):
    """gguf 0.19.0 cannot dequantize Q1_0 (llama.cpp's 1-bit type): per block of 128, weight j is +d
    where bit j is set and -d where it is not (dequantize_row_q1_0; checked against the pinned
    libggml-base's to_float on a real Q1_0 file when written: identical)."""
    from gguf import GGMLQuantizationType

    from workflow_scripts.tensor_error import dequantize

    bits = np.zeros(16, dtype=np.uint8)
    bits[0], bits[1], bits[15] = 0b1, 0b10, 0b10000000  # weights 0, 9 and 127
    block = np.frombuffer(np.float16(0.5).tobytes() + bits.tobytes(), dtype=np.uint8).reshape(1, 18)
    expected = np.full((1, 128), -0.5, dtype=np.float32)
    expected[0, [0, 9, 127]] = 0.5
    assert np.array_equal(dequantize(block, GGMLQuantizationType.Q1_0), expected)
    reference = expected.copy()
    reference[0, 127] = 0.75
    _write(tmp_path / "ref.gguf", "blk.0.attn_q.weight", reference, GGMLQuantizationType.F16)
    _write(tmp_path / "q.gguf", "blk.0.attn_q.weight", block, GGMLQuantizationType.Q1_0)
    [row] = tensor_errors(tmp_path / "q.gguf", tmp_path / "ref.gguf")
    assert row["type"] == "Q1_0" and row["n_elements"] == 128 and row["max_abs"] == 0.25
