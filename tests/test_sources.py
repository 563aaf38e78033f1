"""Sources: GGUF files (checked, copied or dequantized keeping every key), HF dirs, Hub rules."""

import json
import shutil

import numpy as np
import pytest

from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError
from workflow_scripts.sources import (
    check_gguf_file, check_hf_dir, check_hub_listing, gguf_to_reference, hub_allow_patterns, source_manifest,
)


def test_not_a_gguf_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(UserError, match=r"model.gguf: not a GGUF file"):
        check_gguf_file(bad)


@pytest.mark.real_model
def test_truncated_gguf_is_refused(smollm2_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src:
        cut.write_bytes(src.read(50_000_000))
    with pytest.raises(UserError, match=r"cut.gguf: (damaged or )?truncated GGUF"):
        check_gguf_file(cut)


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("f16") / "smol-F16.gguf"
    record = gguf_to_reference(smollm2_gguf, out, "f16")
    return out, record


@pytest.mark.real_model
def test_dequantized_reference_keeps_every_metadata_key(smollm2_gguf, smollm2_f16):
    from gguf import GGUFReader

    out, record = smollm2_f16
    assert record["method"] == "dequantize" and "dequantized Q4_1" in record["note"]
    src, dst = GGUFReader(smollm2_gguf), GGUFReader(out)
    keys = [k for k in src.fields if not k.startswith("GGUF.")]
    assert keys == [k for k in dst.fields if not k.startswith("GGUF.")]
    for key in keys:
        if key != "general.file_type":
            assert src.fields[key].contents() == dst.fields[key].contents(), key
    assert dst.fields["general.file_type"].contents() == 1
    assert len(keys) == 33 and len(src.fields["tokenizer.ggml.merges"].contents()) == 48900


@pytest.mark.real_model
def test_dequantized_values_are_gguf_py_dequantization_rounded_to_f16(smollm2_gguf, smollm2_f16):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out, _ = smollm2_f16
    src = {t.name: t for t in GGUFReader(smollm2_gguf).tensors}
    dst = {t.name: t for t in GGUFReader(out).tensors}
    assert [t for t in src] == [t for t in dst]
    for name in ("blk.0.attn_q.weight", "token_embd.weight", "blk.7.ffn_down.weight", "output_norm.weight"):
        expected = dequantize(src[name].data, src[name].tensor_type)
        if dst[name].tensor_type.name == "F16":
            expected = expected.astype(np.float16)
        assert np.array_equal(np.asarray(dst[name].data).reshape(expected.shape), expected), name
    assert {t.tensor_type.name for t in dst.values()} == {"F16", "F32"}
    assert all(len(t.shape) == 1 for t in dst.values() if t.tensor_type.name == "F32")


@pytest.mark.real_model
def test_a_reference_source_is_copied_unchanged(smollm2_f16, tmp_path):
    f16, _ = smollm2_f16
    out = tmp_path / "copy.gguf"
    record = gguf_to_reference(f16, out, "f16")
    assert record["method"] == "copy" and sha256_file(out) == sha256_file(f16)


def _hf_dir(tmp_path, *files):
    d = tmp_path / "m"
    d.mkdir()
    for name in files:
        (d / name).write_text("{}" if name.endswith(".json") else "x")
    return d


@pytest.mark.parametrize("files,allow_pickle,message", [
    (("model.safetensors",), False, "no config.json"),
    (("config.json",), False, "no weights"),
    (("config.json", "pytorch_model.bin"), False, "only pickle weights"),
])
def test_incomplete_hf_dirs_are_refused(tmp_path, files, allow_pickle, message):
    with pytest.raises(UserError, match=message):
        check_hf_dir(_hf_dir(tmp_path, *files), allow_pickle)


def test_hf_dir_files_and_shards(tmp_path):
    d = _hf_dir(tmp_path, "config.json", "pytorch_model.bin", "tokenizer.model")
    assert [p.name for p in check_hf_dir(d, allow_pickle=True)] == ["config.json", "pytorch_model.bin", "tokenizer.model"]
    (d / "model-00001-of-00002.safetensors").write_text("x")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(UserError, match="names shard model-00002-of-00002.safetensors which is missing"):
        check_hf_dir(d)
    # Pickles are left out of what is used when safetensors exist and pickles are not allowed.
    (d / "model.safetensors.index.json").unlink()
    assert "pytorch_model.bin" not in [p.name for p in check_hf_dir(d)]


def test_hub_patterns_and_pickle_refusal():
    assert "*.safetensors" in hub_allow_patterns(False) and "*.bin" not in hub_allow_patterns(False)
    assert "*.bin" in hub_allow_patterns(True)
    check_hub_listing("o/m", ["config.json", "model.safetensors", "pytorch_model.bin"], False)
    with pytest.raises(UserError, match="o/m: only pickle weights"):
        check_hub_listing("o/m", ["config.json", "pytorch_model.bin"], False)
    check_hub_listing("o/m", ["config.json", "pytorch_model.bin"], True)
    with pytest.raises(UserError, match="no \\*.safetensors"):
        check_hub_listing("o/m", ["config.json"], True)


def test_local_manifest_records_every_file_digest(tmp_path):
    d = _hf_dir(tmp_path, "config.json", "model.safetensors")
    manifest = source_manifest({"type": "local", "path": str(d)})
    assert [(e["path"].rsplit("/", 1)[1], e["sha256"]) for e in manifest["files"]] == [
        ("config.json", sha256_file(d / "config.json")), ("model.safetensors", sha256_file(d / "model.safetensors"))]
