"""The HF path end to end: a tiny Llama in HF format → convert → parity → imatrix → quants."""

import json
import subprocess

import pytest

from workflow_run import job_timeline, snakemake, write_config
from conftest import CALIBRATION

pytestmark = pytest.mark.toolchain


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_hf, toolchain_root):
    workdir = tmp_path_factory.mktemp("tiny-run")
    config = write_config(workdir, {
        "calibration": {"text": str(CALIBRATION), "chunks": 4, "ctx": 128},
        "quants": ["Q8_0", "Q4_K_M", "IQ4_XS"],
        "quant_options": {"Q4_K_M": {"tensor_types": {"attn_v": "Q8_0"}, "token_embedding_type": "Q8_0"}},
        "models": [{"name": "tiny", "source": {"type": "local", "path": str(tiny_hf)}}],
    })
    snakemake(workdir, config)
    return workdir, config


def test_local_source_is_converted_with_the_pinned_script_and_checked(tiny_run, tiny_hf):
    workdir, _ = tiny_run
    model = workdir / "results" / "tiny"
    record = json.loads((model / "reference" / "tiny-F16.convert.json").read_text())
    assert record["method"] == "convert_hf_to_gguf" and len(record["llama_cpp_commit"]) == 40
    source = json.loads((model / "source" / "source.json").read_text())
    assert {e["path"].rsplit("/", 1)[1] for e in source["files"]} >= {"config.json", "model.safetensors", "tokenizer.model"}
    parity = json.loads((model / "checks" / "tokenizer_parity.json").read_text())
    assert parity["verdict"] == "identical" and parity["tokens_compared"] > 10000
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=model, capture_output=True).returncode == 0


def test_per_quant_overrides_reach_the_file(tiny_run):
    workdir, _ = tiny_run
    census = json.loads((workdir / "results/tiny/quant/tiny-Q4_K_M.census.json").read_text())
    assert census["tensor_types"]["blk.0.attn_v.weight"] == "Q8_0"
    assert census["tensor_types"]["token_embd.weight"] == "Q8_0"
    assert {o["tensor"] for o in census["overrides"]} == {"blk.0.attn_v.weight", "blk.1.attn_v.weight", "token_embd.weight"}


def test_a_changed_source_file_is_noticed(tiny_run, tiny_hf, tmp_path):
    """Editing a source weight file re-runs the source step and everything after it."""
    from dag import planned_jobs

    workdir, config = tiny_run
    weights = tiny_hf / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one weight bit flipped
        jobs = planned_jobs(workdir, config)
        assert jobs["source_local"] == 1 and jobs["convert"] == 1 and jobs["quantize"] == 3
    finally:
        weights.write_bytes(original)


def test_a_tampered_quant_is_refused_by_its_consumers(tiny_run):
    """One byte of a finished quant changed in place: the next job reading it stops, naming it."""
    workdir, config = tiny_run
    quant = workdir / "results/tiny/quant/tiny-Q8_0.gguf"
    original = quant.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    quant.write_bytes(bytes(data))
    try:
        proc = snakemake(workdir, config, check=False)
        assert proc.returncode != 0
        assert "tiny-Q8_0.gguf: checksum mismatch" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert not list((workdir / "results").rglob("*.partial"))
    finally:
        quant.write_bytes(original)


def test_a_tampered_reference_is_refused_by_its_consumer(tiny_run):
    from workflow_scripts.checksums import sha256_file

    workdir, config = tiny_run
    quants = sorted((workdir / "results/tiny/quant").glob("*.gguf"))
    before = {q: sha256_file(q) for q in quants}
    ref = workdir / "results/tiny/reference/tiny-F16.gguf"
    data = bytearray(ref.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ref.write_bytes(bytes(data))
    proc = snakemake(workdir, config, check=False)
    assert proc.returncode != 0
    assert "tiny-F16.gguf: checksum mismatch" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing half-written, and the quants made earlier from the good reference are untouched.
    assert not list((workdir / "results").rglob("*.partial"))
    assert {q: sha256_file(q) for q in quants} == before


def test_same_inputs_give_the_same_bytes_in_another_directory(tiny_run, tmp_path):
    """Paths llama.cpp writes into the files are relative: a second checkout makes identical GGUFs."""
    workdir, config = tiny_run
    other = tmp_path / "elsewhere" / "deeper"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(config.read_text())
    snakemake(other, other / "config.yaml")
    assert (other / "results/tiny/SHA256SUMS").read_text() == (workdir / "results/tiny/SHA256SUMS").read_text()


def test_bf16_reference_and_an_existing_build_directory(tiny_hf, toolchain_root, tmp_path):
    """reference_type BF16, and toolchain.build_dir pointing at a llama.cpp build made elsewhere."""
    from gguf import GGUFReader

    config = write_config(tmp_path, {
        "toolchain": {"build_dir": str(toolchain_root / "build")},
        "reference_type": "BF16",
        "imatrix": False,
        "quants": ["Q8_0"],
        "models": [{"name": "tiny", "source": {"type": "local", "path": str(tiny_hf)}}],
    })
    snakemake(tmp_path, config)
    stamp = json.loads((tmp_path / "results/toolchain/llama.cpp.json").read_text())
    assert stamp["source"] == "existing build directory" and stamp["convert_script"].endswith("convert_hf_to_gguf.py")
    ref = GGUFReader(tmp_path / "results/tiny/reference/tiny-BF16.gguf")
    assert {t.tensor_type.name for t in ref.tensors} == {"BF16", "F32"}
    quant = GGUFReader(tmp_path / "results/tiny/quant/tiny-Q8_0.gguf")
    assert "quantize.imatrix.file" not in quant.fields
    assert not list((tmp_path / "results/tiny").rglob("*.imatrix.gguf"))


def test_jobs_share_the_cores_without_oversubscribing(tiny_hf, toolchain_root, tmp_path):
    """--cores 2 with one-thread quantize/validate jobs: two run side by side, the threads of the
    running jobs never add up to more than 2, each tool gets its job's threads, and a benchmark
    job always runs alone."""
    laptop = {"name": "laptop-8gb", "threads": 2, "ram_gb": 8, "latency_budget_s": 10}
    config = write_config(tmp_path, {
        "calibration": {"text": str(CALIBRATION), "chunks": 4, "ctx": 128},
        "quants": ["Q8_0", "Q6_K", "Q5_0", "Q4_0"], "tiers": [laptop],
        "models": [{"name": "tiny", "source": {"type": "local", "path": str(tiny_hf)}}],
    })
    proc = snakemake(tmp_path, config, "--cores", "2", "--set-threads", "quantize=1", "validate_quant=1")
    running, most_side_by_side, alone = {}, 0, []
    for kind, job, rule, threads in job_timeline(proc.stderr):
        if kind == "end":
            del running[job]
            continue
        running[job] = (rule, threads)
        assert sum(t for _, t in running.values()) <= 2, running
        most_side_by_side = max(most_side_by_side, sum(r in ("quantize", "validate_quant") for r, _ in running.values()))
        if rule == "benchmark" or any(r == "benchmark" for r, _ in running.values()):
            alone.append(len(running) == 1)
    assert most_side_by_side == 2
    assert alone and all(alone)
    # The tools' own logs say how many threads they ran with: the job's, not the machine's.
    for quant in ("Q8_0", "Q6_K", "Q5_0", "Q4_0"):
        assert f"as {quant} using 1 threads" in (tmp_path / f"results/logs/quantize/tiny-{quant}.log").read_text()
        assert "system_info: n_threads = 1 " in (tmp_path / f"results/logs/validate/tiny-{quant}.log").read_text()
