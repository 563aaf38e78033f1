"""HF-format directories: incomplete ones are refused; the files a conversion uses are listed."""

import json

import pytest

from tests.stub_sources import hf_dir_of
from workflow_scripts.errors import UserError
from workflow_scripts.hf_dir import architecture_named, check_hf_dir


@pytest.mark.parametrize("files,allow_pickle,message", [
    (("model.safetensors",), False, "m: no config.json"),
    (("config.json",), False, "m: no weights"),
    (("config.json",), True, "m: no weights"),
    (("config.json", "pytorch_model.bin"), False, "m: only pickle weights"),
])
def test_incomplete_hf_dirs_are_refused(tmp_path, files, allow_pickle, message):
    with pytest.raises(UserError, match=message):
        check_hf_dir(hf_dir_of(tmp_path, *files), allow_pickle)


def test_missing_hf_dir_is_refused(tmp_path):
    with pytest.raises(UserError, match="nowhere: model directory does not exist"):
        check_hf_dir(tmp_path / "nowhere")


def test_hf_dir_files_and_shards(tmp_path):
    d = hf_dir_of(tmp_path, "config.json", "pytorch_model.bin", "tokenizer.model")
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


@pytest.mark.parametrize(("config", "named"), [
    ({"architectures": ["LlamaForCausalLM"]}, True),
    ({"text_config": {"architectures": ["Gemma3ForCausalLM"]}}, True),
    ({"ssm_cfg": {"layer": "Mamba2"}}, True),
    ({}, False),
    ({"architectures": []}, False),
    ({"architectures": "LlamaForCausalLM"}, False),
    ({"architectures": [None]}, False),
    ({"model_type": "llama"}, False),
])
def test_a_config_must_name_what_the_converter_picks_its_class_by(config, named):
    assert architecture_named(config) is named
