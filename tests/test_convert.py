"""The reference of a GGUF source: copied when already F16/BF16, else dequantized keeping every key."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.ggml_oracle import bf16_reference, ggml_to_float, q4_1_reference, q8_0_reference
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
    src = small_gguf(tmp_path / "small-Q8_0.gguf")
    out = tmp_path / "small-F16.gguf"
    record = gguf_to_reference([src], out, "f16")
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
    # The values, from the Q8_0 block layout (tests/ggml_oracle.py), not from gguf-py, which convert uses.
    expected = q8_0_reference(s["blk.0.attn_q.weight"].data).astype(np.float16)
    assert np.array_equal(np.asarray(d["blk.0.attn_q.weight"].data).ravel(), expected)
    for name in ("token_embd.weight", "blk.0.attn_norm.weight"):  # F32 stays bit-identical
        assert np.asarray(d[name].data).tobytes() == np.asarray(s[name].data).tobytes()


def test_the_reference_is_laid_out_byte_for_byte_as_gguf_pys_writer_would(tmp_path):
    """Convert copies the metadata as bytes and writes the tensor infos itself: the file must be the
    one gguf-py's writer makes from the same keys and tensors (here with a 64-byte alignment, split
    keys to drop, no general.file_type to overwrite: it is added last), checked by writing that file
    with gguf-py from the reference's own tensor data and comparing every byte."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(3)
    keys = [("general.name", "aligned", GGUFValueType.STRING),
            ("general.alignment", 64, GGUFValueType.UINT32),
            ("split.no", 0, GGUFValueType.UINT16),
            ("llama.context_length", 64, GGUFValueType.UINT32),
            ("tokenizer.ggml.tokens", ["<s>", "é", "ab", ""], GGUFValueType.ARRAY),
            ("tokenizer.ggml.token_type", [3, 1, 1, 1], GGUFValueType.ARRAY),
            ("split.count", 1, GGUFValueType.UINT16)]
    weights = {"blk.0.attn_q.weight": rng.standard_normal((3, 32)).astype(np.float32),
               "blk.0.attn_norm.weight": rng.standard_normal(32).astype(np.float32)}

    def write(path, pairs, tensors):
        writer = GGUFWriter(path, "llama")
        for key, value, vtype in pairs:
            sub = (GGUFValueType.STRING if isinstance(value[0], str) else GGUFValueType.INT32) if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, value, vtype, sub_type=sub)
            if key == "general.alignment":
                writer.data_alignment = value
        for name, (data, raw_dtype) in tensors.items():
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    source = tmp_path / "aligned-Q8_0.gguf"
    write(source, keys, {"blk.0.attn_q.weight": (quantize(weights["blk.0.attn_q.weight"], GGMLQuantizationType.Q8_0),
                                                 GGMLQuantizationType.Q8_0),
                         "blk.0.attn_norm.weight": (weights["blk.0.attn_norm.weight"], None)})
    out = tmp_path / "aligned-F16.gguf"
    gguf_to_reference([source], out, "f16")
    made = {t.name: np.asarray(t.data).copy() for t in GGUFReader(out).tensors}
    expected = tmp_path / "expected.gguf"
    write(expected, [k for k in keys if not k[0].startswith("split.")] + [("general.file_type", 1, GGUFValueType.UINT32)],
          {name: (data, None) for name, data in made.items()})
    assert made["blk.0.attn_q.weight"].dtype == np.float16 and made["blk.0.attn_q.weight"].shape == (3, 32)
    assert out.read_bytes() == expected.read_bytes()


def test_bf16_reference(tmp_path):
    from gguf import GGMLQuantizationType

    src = small_gguf(tmp_path / "small-Q8_0.gguf")
    out = tmp_path / "small-BF16.gguf"
    record = gguf_to_reference([src], out, "bf16")
    assert record["method"] == "dequantize" and record["outtype"] == "BF16"
    assert _kv(out)["general.file_type"] == 32
    q, d = _tensors(src)["blk.0.attn_q.weight"], _tensors(out)["blk.0.attn_q.weight"]
    assert d.tensor_type == GGMLQuantizationType.BF16
    # Q8_0 from its block layout, rounded to bfloat16 by torch: neither step is gguf-py's.
    expected = bf16_reference(q8_0_reference(q.data))
    assert np.array_equal(np.asarray(d.data).view(np.uint16).ravel(), expected)
    assert not list(tmp_path.glob(".*partial"))


def test_an_f16_source_is_copied_unchanged(tmp_path):
    src = small_gguf(tmp_path / "small-F16.gguf", weight_type="F16")
    out = tmp_path / "ref.gguf"
    record = gguf_to_reference([src], out, "f16")
    assert record["method"] == "copy" and sha256_file(out) == sha256_file(src)
    # Asked for BF16, the same file is rounded, not copied, and says so.
    record = gguf_to_reference([src], tmp_path / "ref-bf16.gguf", "bf16")
    assert record["method"] == "dequantize" and "F16 weights rounded to BF16" in record["note"]


def _q4_1_gguf(path: Path, blocks: bytes, rows: int) -> Path:
    """A GGUF with one Q4_1 matrix of ``rows`` rows of 32 values, stored as the given block bytes."""
    from gguf import GGMLQuantizationType, GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_file_type(3)  # MOSTLY_Q4_1
    raw = np.frombuffer(blocks, dtype=np.uint8).reshape(rows, -1)
    writer.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=GGMLQuantizationType.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Two Q4_1 blocks written byte by byte (f16 d, f16 m, 16 bytes of nibbles), with values worked out
# by hand: block 0 has d 0.5, m -2 and byte j = j | (15 - j) << 4, so its low nibbles count up
# (elements 0..15: -2, -1.5, ... 5.5) and its high nibbles down (elements 16..31: 5.5 ... -2); a
# dequantizer that interleaved the nibbles or swapped their halves would give another order.
# Block 1 has d -0.25, m 1 and every byte 0xF0: 16 × 1.0 (low nibbles 0), then 16 × -2.75 (15 × -0.25 + 1).
Q4_1_BLOCKS = (np.float16(0.5).tobytes() + np.float16(-2.0).tobytes() + bytes(j | (15 - j) << 4 for j in range(16))
               + np.float16(-0.25).tobytes() + np.float16(1.0).tobytes() + bytes([0xF0] * 16))
Q4_1_VALUES = [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5,
               5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0,
               *[1.0] * 16, *[-2.75] * 16]


def test_a_q4_1_source_is_dequantized_as_the_block_layout_says(tmp_path):
    """The demo's source type on two blocks whose values are known by hand: the oracle and the
    project's reference both give them, in the same order."""
    src = _q4_1_gguf(tmp_path / "q4_1.gguf", Q4_1_BLOCKS, rows=2)
    assert q4_1_reference(np.frombuffer(Q4_1_BLOCKS, dtype=np.uint8)).tolist() == Q4_1_VALUES
    record = gguf_to_reference([src], tmp_path / "ref.gguf", "f16")
    assert record["source_types"] == {"Q4_1": 1} and "dequantized Q4_1" in record["note"]
    [tensor] = _tensors(tmp_path / "ref.gguf").values()
    assert tensor.tensor_type.name == "F16" and list(tensor.shape) == [32, 2]
    assert np.asarray(tensor.data).astype(np.float32).ravel().tolist() == Q4_1_VALUES


@pytest.mark.toolchain
def test_the_q4_1_oracle_agrees_with_llama_cpps_own_dequantization(tmp_path, toolchain_bin):
    """dequantize_row_q4_1 of the pinned build, on the hand-made blocks and on 4096 random ones
    (every nibble, scales and mins of both signs): bit for bit the oracle's values."""
    import ctypes

    from gguf import GGUFReader

    rng = np.random.default_rng(41)
    scales = rng.standard_normal((4096, 2)).astype(np.float16).tobytes()
    nibbles = rng.integers(0, 256, size=(4096, 16), dtype=np.uint8)
    blocks = b"".join(scales[4 * i:4 * i + 4] + nibbles[i].tobytes() for i in range(4096))
    lib = ctypes.CDLL(str(toolchain_bin / "libggml-base.so"))
    for name, data, rows in (("hand", Q4_1_BLOCKS, 2), ("random", blocks, 4096)):
        [tensor] = GGUFReader(_q4_1_gguf(tmp_path / f"{name}.gguf", data, rows)).tensors
        theirs, ours = ggml_to_float(lib, tensor), q4_1_reference(tensor.data)
        assert theirs.view(np.uint32).tolist() == ours.view(np.uint32).tolist(), name
    assert theirs.size == 4096 * 32 and np.unique(theirs).size > 10000


# ---------------------------------------------------------------- the real demo model


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("f16") / "smol-F16.gguf"
    start = time.perf_counter()
    record = gguf_to_reference([smollm2_gguf], out, "f16")
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
@pytest.mark.toolchain
def test_dequantized_values_are_llama_cpps_rounded_to_f16(smollm2_gguf, smollm2_f16, toolchain_bin):
    """Every tensor of the demo's reference against oracles that are not gguf-py (which convert
    uses): the Q4_1 and Q8_0 block layouts written out in numpy, and llama.cpp's own C
    dequantization; the 1-D F32 norms are the source's bytes."""
    import ctypes

    lib = ctypes.CDLL(str(toolchain_bin / "libggml-base.so"))
    out, _ = smollm2_f16
    src, dst = _tensors(smollm2_gguf), _tensors(out)
    assert list(src) == list(dst)
    oracles = {"Q4_1": q4_1_reference, "Q8_0": q8_0_reference}
    checked = {"Q4_1": 0, "Q8_0": 0, "F32": 0}
    for name, s in src.items():
        d = dst[name]
        assert list(d.shape) == list(s.shape), name
        kind = s.tensor_type.name
        got = np.asarray(d.data).ravel()
        if kind == "F32":
            assert len(s.shape) == 1 and d.tensor_type.name == "F32", name
            assert got.tobytes() == np.asarray(s.data).tobytes(), name
        else:
            assert d.tensor_type.name == "F16", name
            ours, theirs = oracles[kind](s.data), ggml_to_float(lib, s)
            assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), name  # the oracle is ggml's
            assert np.array_equal(got.view(np.uint16), ours.astype(np.float16).view(np.uint16)), name
        checked[kind] += 1
    assert checked == {"Q4_1": 210, "Q8_0": 1, "F32": 61}


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
