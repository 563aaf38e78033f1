"""What a user sees when something is wrong: one clear message, no traceback, nothing half-made."""

import sys
import subprocess
from pathlib import Path

import pytest

from workflow_run import snakemake, write_config
from workflow_scripts.errors import UserError
from workflow_scripts.tool_step import run_tool


@pytest.mark.parametrize("config,message", [
    ({"models": [{"name": "m", "source": {"type": "gguf", "path": "nope.gguf"}}]},
     "models[0].source.path: file 'nope.gguf' does not exist"),
    ({"quants": ["Q4_K_Z"]}, "quants[0]: 'Q4_K_Z' is not allowed"),
    ({"models": [{"name": "../escape", "source": {"type": "local", "path": "."}}]}, "models[0].name: '../escape' does not match"),
    ({"imatrix": False, "quants": ["IQ1_S"]}, "quant IQ1_S needs an importance matrix"),
])
def test_bad_config_through_the_cli(tmp_path, config, message):
    proc = snakemake(tmp_path, write_config(tmp_path, config), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_malformed_yaml_is_reported_with_the_file(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("models:\n  - name: [unclosed\n")
    proc = snakemake(tmp_path, bad, check=False)
    # Snakemake itself loads --configfile and words this error (without naming the file).
    assert proc.returncode != 0 and "not valid JSON or YAML" in proc.stderr and "Traceback" not in proc.stderr


def _stamp(tmp_path, tool_body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "fake-tool"
    tool.write_text("#!/bin/sh\n" + tool_body)
    tool.chmod(0o755)
    stamp = tmp_path / "stamp.json"
    stamp.write_text(f'{{"bin_dir": "{bin_dir}"}}')
    return stamp


def test_a_failing_tool_leaves_no_output_and_shows_its_last_lines(tmp_path):
    stamp = _stamp(tmp_path, 'echo "half" > "$1"\necho "loading model"\necho "error: out of memory"\nexit 3\n')
    out, log = tmp_path / "q.gguf", tmp_path / "q.log"
    with pytest.raises(UserError) as err:
        run_tool(stamp, "fake-tool", ["{out}"], out, log, [])
    assert "exited with status 3" in str(err.value) and "error: out of memory" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_a_successful_tool_output_is_renamed_and_checksummed(tmp_path):
    from workflow_scripts.checksums import verify

    stamp = _stamp(tmp_path, 'printf GGUFdata > "$1"\n')
    out = tmp_path / "q.gguf"
    run_tool(stamp, "fake-tool", ["{out}"], out, tmp_path / "q.log", [])
    assert out.read_bytes() == b"GGUFdata"
    verify(out)


def test_module_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.calibration", str(tmp_path / "none.txt"),
                           str(tmp_path / "out.txt")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"gguf-forge error: {tmp_path / 'none.txt'}: calibration text does not exist\n"
