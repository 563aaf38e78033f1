"""The reference of a GGUF source: copied when already F16/BF16, else dequantized keeping every key."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.stub_sources import small_gguf
from workflow_scripts.checksums import sha256_file
from workflow_scripts.convert import gguf_to_reference


def _kv(path: Path) -> dict:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def _tensors(path: Path) -> dict:
    from gguf import GGUFReader

    return {t.name: t for t in GGUFReader(path).tensors}


# ---------------------------------------------------------------- fast tests


def test_quantized_gguf_becomes_an_f16_reference_with_every_key(tmp_path):
    from gguf.quants import dequantize

    src = small_gguf(tmp_path / "small-Q8_0.gguf")
    out = tmp_path / "small-F16.gguf"
    record = gguf_to_reference(src, out, "f16")
    assert record["method"] == "dequantize"
    assert record["source_types"] == {"F32": 2, "Q8_0": 1}
    assert "dequantized Q8_0" in record["note"] and "not against the original" in record["note"]
    before, after = _kv(src), _kv(out)
    assert list(before) == list(after)  # same keys, same order
    assert before.pop("general.file_type") == 7 and after.pop("general.file_type") == 1
    assert before == after
    s, d = _tensors(src), _tensors(out)
    assert list(s) == list(d) and all(list(s[n].shape) == list(d[n].shape) for n in s)
    assert {n: t.tensor_type.name for n, t in d.items()} == {
        "blk.0.attn_q.weight": "F16", "token_embd.weight": "F32", "blk.0.attn_norm.weight": "F32"}
    q = s["blk.0.attn_q.weight"]
    expected = dequantize(q.data, q.tensor_type).astype(np.float16)
    assert np.array_equal(np.asarray(d["blk.0.attn_q.weight"].data).reshape(expected.shape), expected)
    for name in ("token_embd.weight", "blk.0.attn_norm.weight"):  # F32 stays bit-identical
        assert np.asarray(d[name].data).tobytes() == np.asarray(s[name].data).tobytes()


def test_bf16_reference(tmp_path):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    src = small_gguf(tmp_path / "small-Q8_0.gguf")
    out = tmp_path / "small-BF16.gguf"
    record = gguf_to_reference(src, out, "bf16")
    assert record["method"] == "dequantize" and record["outtype"] == "BF16"
    assert _kv(out)["general.file_type"] == 32
    q, d = _tensors(src)["blk.0.attn_q.weight"], _tensors(out)["blk.0.attn_q.weight"]
    assert d.tensor_type == GGMLQuantizationType.BF16
    expected = quantize(dequantize(q.data, q.tensor_type), GGMLQuantizationType.BF16)
    assert np.asarray(d.data).tobytes() == expected.tobytes()
    assert not list(tmp_path.glob(".*partial"))


def test_an_f16_source_is_copied_unchanged(tmp_path):
    src = small_gguf(tmp_path / "small-F16.gguf", weight_type="F16")
    out = tmp_path / "ref.gguf"
    record = gguf_to_reference(src, out, "f16")
    assert record["method"] == "copy" and sha256_file(out) == sha256_file(src)
    # Asked for BF16, the same file is rounded, not copied, and says so.
    record = gguf_to_reference(src, tmp_path / "ref-bf16.gguf", "bf16")
    assert record["method"] == "dequantize" and "F16 weights rounded to BF16" in record["note"]


# ---------------------------------------------------------------- the real demo model


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("f16") / "smol-F16.gguf"
    start = time.perf_counter()
    record = gguf_to_reference(smollm2_gguf, out, "f16")
    print(f"\nSmolLM2 Q4_1 -> F16: {time.perf_counter() - start:.1f} s")
    return out, record


@pytest.mark.real_model
def test_dequantized_reference_keeps_every_metadata_key(smollm2_gguf, smollm2_f16):
    out, record = smollm2_f16
    assert record["method"] == "dequantize" and "dequantized Q4_1" in record["note"]
    assert record["source_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    src, dst = _kv(smollm2_gguf), _kv(out)
    assert list(src) == list(dst)
    assert src.pop("general.file_type") == 3 and dst.pop("general.file_type") == 1
    assert src == dst
    tokenizer = [k for k in src if k.startswith("tokenizer.")]
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"} <= set(tokenizer)
    assert len(src) == 32 and len(dst["tokenizer.ggml.merges"]) == 48900


@pytest.mark.real_model
def test_dequantized_values_are_gguf_py_dequantization_rounded_to_f16(smollm2_gguf, smollm2_f16):
    from gguf.quants import dequantize

    out, _ = smollm2_f16
    src, dst = _tensors(smollm2_gguf), _tensors(out)
    assert list(src) == list(dst)
    for name, s in src.items():
        d = dst[name]
        assert list(d.shape) == list(s.shape), name
        assert d.tensor_type.name == ("F32" if len(s.shape) == 1 or s.tensor_type.name == "F32" else "F16"), name
        expected = dequantize(s.data, s.tensor_type)
        if d.tensor_type.name == "F16":
            expected = expected.astype(np.float16)
        assert np.array_equal(np.asarray(d.data).reshape(expected.shape), expected), name


@pytest.mark.real_model
@pytest.mark.toolchain
def test_reference_loads_and_generates_with_llama_cpp(smollm2_gguf, smollm2_f16, toolchain_bin):
    out, _ = smollm2_f16
    code = """
import json, sys
from llama_cpp import Llama
result = {}
for path in sys.argv[1:]:
    llm = Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False, seed=1)
    text = "The capital of France is Paris. 12345 tokens, naïve café!"
    ids = llm.tokenize(text.encode())
    out = llm("The capital of France is", max_tokens=8, temperature=0.0)
    result[path] = {"ids": ids, "text": out["choices"][0]["text"], "n": out["usage"]["completion_tokens"]}
print(json.dumps(result))
"""
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(toolchain_bin)}
    proc = subprocess.run([sys.executable, "-c", code, str(smollm2_gguf), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    q4, f16 = result[str(smollm2_gguf)], result[str(out)]
    print(f"\nQ4_1: {q4['text']!r}\nF16:  {f16['text']!r}")
    assert f16["n"] == 8 and f16["text"].strip()
    assert f16["ids"] == q4["ids"]  # the copied tokenizer tokenizes as the source does
