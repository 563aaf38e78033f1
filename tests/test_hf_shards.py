"""HF checkpoints as large models come: weights in ``model-0000k-of-0000n.safetensors`` shards with
an index, and BF16 weights. Through the source and convert steps as the rules call them, the
reference of the sharded checkpoint has the same tensors as that of the one-file checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.workflow_run import CALIBRATION, ROOT
from workflow_scripts.sources import source_manifest


def _reference(tmp: Path, stamp: Path, hf_dir: Path, outtype: str) -> tuple[dict, dict]:
    """source.json of the local directory, then the convert CLI: the reference's tensors (raw
    bytes by name) and its source manifest."""
    tmp.mkdir()
    manifest = source_manifest({"type": "local", "path": str(hf_dir)})
    (tmp / "source.json").write_text(json.dumps(manifest))
    out = tmp / f"tiny-{outtype}.gguf"
    subprocess.run([sys.executable, "-m", "workflow_scripts.convert", "--stamp", str(stamp), "--source-manifest",
                    str(tmp / "source.json"), "--outtype", outtype, "--out", str(out), "--record",
                    str(tmp / "record.json"), "--log", str(tmp / "convert.log")], check=True, cwd=ROOT)
    from gguf import GGUFReader

    tensors = {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes()) for t in GGUFReader(out).tensors}
    return tensors, manifest


@pytest.fixture(scope="module")
def sharded_bf16(tmp_path_factory) -> Path:
    """The tiny model (same seed, same tokenizer as ``tiny_hf``) in BF16, in shards of 100 KB."""
    from tests.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("sharded") / "tiny-llama", CALIBRATION.read_text(),
                           dtype="bfloat16", max_shard_size="100KB")


@pytest.mark.parametrize("outtype", ["BF16", "F16"])
def test_sharded_bf16_checkpoint_converts_like_the_one_file_checkpoint(tmp_path, tiny_hf, sharded_bf16,
                                                                        toolchain_stamp, outtype):
    shards = sorted(p.name for p in sharded_bf16.glob("model-*.safetensors"))
    assert len(shards) > 2 and (sharded_bf16 / "model.safetensors.index.json").is_file()
    assert not (sharded_bf16 / "model.safetensors").exists()
    got, manifest = _reference(tmp_path / "sharded", toolchain_stamp, sharded_bf16, outtype)
    assert set(shards) <= {Path(f["path"]).name for f in manifest["files"]}  # every shard is recorded
    want, _ = _reference(tmp_path / "whole", toolchain_stamp, tiny_hf, outtype)
    assert got.keys() == want.keys()
    if outtype == "BF16":
        # float32 weights rounded to BF16 by convert are the BF16 weights torch saved: same bytes.
        assert got == want
    else:
        # BF16 → F16 is exact for these small values, float32 → F16 rounds once more: within F16's step.
        for name, (ttype, data) in want.items():
            assert got[name][0] == ttype
            dtype = np.float32 if ttype == "F32" else np.float16
            a, b = np.frombuffer(got[name][1], dtype), np.frombuffer(data, dtype)
            assert np.allclose(a, b, rtol=2 ** -7, atol=1e-6), name
