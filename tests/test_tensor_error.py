"""Per-tensor error: gguf-py's dequantization agrees with llama.cpp's own, and the error ranks tensors."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workflow_scripts.checksums import write_sidecar
from workflow_scripts.tensor_error import role, summarize, tensor_errors

TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q2_K", "IQ4_XS")  # Q2_K files hold Q3_K tensors


class TypeTraits(ctypes.Structure):
    """``struct ggml_type_traits`` of the pinned ggml (ggml/include/ggml.h)."""

    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def ggml_to_float(lib: ctypes.CDLL, tensor) -> np.ndarray:
    """llama.cpp's own dequantization of a GGUF tensor, through ggml's type traits."""
    from gguf import GGML_QUANT_SIZES

    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    traits = lib.ggml_get_type_traits(int(tensor.tensor_type)).contents
    block, size = GGML_QUANT_SIZES[tensor.tensor_type]
    assert traits.type_name.decode().upper() == tensor.tensor_type.name and (traits.blck_size, traits.type_size) == (block, size)
    raw = np.ascontiguousarray(tensor.data).view(np.uint8)
    out = np.empty(int(tensor.n_elements), dtype=np.float32)
    TO_FLOAT(traits.to_float)(raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out


@pytest.fixture(scope="module")
def quants(tmp_path_factory, smollm2_gguf, toolchain_bin) -> dict[str, Path]:
    """The demo model's F16 reference and a static quant of each type (no imatrix: faster, same code)."""
    from workflow_scripts.convert import gguf_to_reference

    directory = tmp_path_factory.mktemp("tensor-error")
    files = {"F16": directory / "F16.gguf"}
    gguf_to_reference(smollm2_gguf, files["F16"])
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


def _write(path: Path, name: str, data: np.ndarray, qtype) -> None:
    from gguf import GGUFWriter
    from gguf.quants import quantize

    writer = GGUFWriter(str(path), "llama")
    stored = quantize(data, qtype) if qtype.name not in ("F32", "F16") else data.astype(np.float16)
    writer.add_tensor(name, stored, raw_shape=stored.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_known_error_on_a_hand_made_tensor(tmp_path):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    data = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    _write(tmp_path / "ref.gguf", "blk.0.attn_v.weight", data, GGMLQuantizationType.F16)
    _write(tmp_path / "q.gguf", "blk.0.attn_v.weight", data, GGMLQuantizationType.Q8_0)
    expected_deq = dequantize(quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    ref = data.astype(np.float16).astype(np.float64)
    expected = np.linalg.norm(expected_deq - ref) / np.linalg.norm(ref)
    [row] = tensor_errors(tmp_path / "q.gguf", tmp_path / "ref.gguf")
    assert row["type"] == "Q8_0" and row["n_elements"] == 512 and row["rel_rms"] == pytest.approx(expected, rel=1e-9)
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
