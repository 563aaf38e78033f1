"""One quantize job (workflow_scripts.quantize): recipe checked first, then llama-quantize, then the
recipe check of the output, all as one command."""

import json
import subprocess
import sys

import pytest

from workflow_scripts.checksums import sha256_file, write_sidecar
from workflow_scripts.errors import UserError
from workflow_scripts.quantize import quantize

pytestmark = pytest.mark.toolchain


@pytest.fixture
def reference(tiny_f16, tmp_path):
    ref = tmp_path / "tiny-F16.gguf"
    ref.write_bytes(tiny_f16.read_bytes())
    write_sidecar(ref)
    return ref


def _build(reference, recipe, type_="Q4_K_M"):
    return {"type": type_, "recipe": recipe, "argv": [*recipe, str(reference), "{out}", type_]}


def test_the_file_its_checksum_and_its_census_come_from_one_call(toolchain_stamp, reference, tmp_path):
    out, census, log = tmp_path / "q" / "tiny-Q4_K_M.gguf", tmp_path / "q" / "tiny-Q4_K_M.census.json", tmp_path / "q.log"
    recipe = ["--tensor-type", "attn_v=Q8_0", "--token-embedding-type", "Q8_0"]
    quantize(toolchain_stamp, reference, _build(reference, recipe), 2, out, census, log, [reference])
    assert (tmp_path / "q" / "tiny-Q4_K_M.gguf.sha256").read_text().split()[0] == sha256_file(out)
    result = json.loads(census.read_text())
    assert result["tensor_types"]["blk.1.attn_v.weight"] == "Q8_0" and result["tensor_types"]["token_embd.weight"] == "Q8_0"
    assert result["classes"]["override"] == 3 and result["classes"]["override_ignored"] == 0
    text = log.read_text()
    assert "llama-quantize" in text.splitlines()[0] and " 2\n" in text.splitlines()[0] + "\n"  # the job's threads
    assert text.rstrip().endswith(f"{result['classes']}")


def test_a_recipe_llama_quantize_would_abort_on_is_refused_before_it_runs(toolchain_stamp, reference, tmp_path):
    out, log = tmp_path / "tiny-Q4_K_M.gguf", tmp_path / "q.log"
    build = _build(reference, ["--output-tensor-type", "Q6_K"])
    with pytest.raises(UserError, match="quant_options.Q4_K_M.output_tensor_type: Q6_K needs rows"):
        quantize(toolchain_stamp, reference, build, 1, out, tmp_path / "c.json", log, [reference])
    assert not log.exists() and list(tmp_path.glob("tiny-Q4_K_M*")) == []


def test_a_changed_reference_is_refused_naming_it(toolchain_stamp, reference, tmp_path):
    reference.write_bytes(reference.read_bytes()[:-1] + b"\0")
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.quantize", "--stamp", str(toolchain_stamp),
                           "--reference", str(reference), "--build-json", json.dumps(_build(reference, [], "Q8_0")),
                           "--verify", str(reference), "--out", str(tmp_path / "o.gguf"), "--census",
                           str(tmp_path / "o.json"), "--log", str(tmp_path / "o.log")], capture_output=True, text=True)
    assert proc.returncode == 2 and "tiny-F16.gguf: checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "o.log").exists()
