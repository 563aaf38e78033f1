"""The HF path end to end: a tiny Llama in HF format → convert → parity → imatrix → quants, on the
shared tiny run (scenario ``tiny``)."""

import json
import subprocess

import pytest

from tests.workflow_run import copy_run, job_timeline, scenario, snakemake, write_config

pytestmark = pytest.mark.toolchain


def test_local_source_is_converted_with_the_pinned_script_and_checked(tiny_run):
    workdir = tiny_run.workdir
    model = workdir / "results" / "tiny"
    record = json.loads((model / "reference" / "tiny-F16.convert.json").read_text())
    assert record["method"] == "convert_hf_to_gguf" and len(record["llama_cpp_commit"]) == 40
    source = json.loads((model / "source" / "source.json").read_text())
    assert {e["path"].rsplit("/", 1)[1] for e in source["files"]} >= {"config.json", "model.safetensors", "tokenizer.model"}
    parity = json.loads((model / "checks" / "tokenizer_parity.json").read_text())
    assert parity["verdict"] == "identical" and parity["tokens_compared"] > 10000
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=model, capture_output=True).returncode == 0


def test_a_source_without_a_chat_template_is_not_applicable(tiny_run):
    model = tiny_run.workdir / "results" / "tiny"
    record = json.loads((model / "checks" / "chat_template.json").read_text())
    assert record == {"verdict": "not applicable", "reasons": [], "why": "the source has no chat template",
                      "seconds": record["seconds"]}
    assert json.loads((model / "validation_report.json").read_text())["chat_template"]["verdict"] == "not applicable"


def test_per_quant_overrides_reach_the_file(tiny_run):
    workdir = tiny_run.workdir
    census = json.loads((workdir / "results/tiny/quant/tiny-Q4_K_M.census.json").read_text())
    assert census["tensor_types"]["blk.0.attn_v.weight"] == "Q8_0"
    assert census["tensor_types"]["token_embd.weight"] == "Q8_0"
    assert {o["tensor"] for o in census["overrides"]} == {"blk.0.attn_v.weight", "blk.1.attn_v.weight", "token_embd.weight"}


def test_a_quants_speed_up_is_taken_against_the_reference_measured_in_the_same_run(tiny_run):
    model = tiny_run.workdir / "results" / "tiny"
    report = json.loads((model / "speed_report.json").read_text())
    rows = [(build, tier, row) for build, figures in report["builds"].items() for tier, row in figures["tiers"].items()
            if row["measured"]]
    assert rows
    for build, tier, row in rows:
        record = json.loads((model / "speed" / tier / f"{build}.json").read_text())
        paired, own = record["reference_llama_bench"], record["llama_bench"]
        assert paired["file"] == "tiny-F16.gguf" and paired["model_size"] > own["model_size"]
        assert (paired["threads"], paired["tg"]["tokens"]) == (own["threads"], own["tg"]["tokens"])
        assert row["speedup_against"] == "reference_in_same_run" and row["reference_tg_tps"] == paired["tg"]["tokens_per_s"]
        assert row["tg_speedup"] == round(own["tg"]["tokens_per_s"] / paired["tg"]["tokens_per_s"], 3)
        assert "reference_llama_bench" not in json.loads((model / "speed" / tier / "F16.json").read_text())


def test_a_changed_source_file_is_noticed(tiny_run, tmp_path):
    """Editing a source weight file re-runs the source step and everything after it."""
    from tests.dag import planned_jobs

    workdir = copy_run(tiny_run.workdir, tmp_path / "run")
    weights = workdir / "tiny-llama" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one weight bit flipped
    jobs = planned_jobs(workdir, workdir / "config.yaml")
    assert jobs["source_local"] == 1 and jobs["convert"] == 1 and jobs["quantize"] == 3


@pytest.mark.parametrize("tampered", ["quant/tiny-Q8_0.gguf", "reference/tiny-F16.gguf"])
def test_a_tampered_gguf_is_refused_by_its_consumers(tiny_run, tmp_path, tampered):
    """One byte of a finished GGUF changed in place: the next job reading it stops, naming it, and
    nothing else is touched: no half-written file, the other quants are the bytes they were."""
    from workflow_scripts.checksums import sha256_file

    workdir = copy_run(tiny_run.workdir, tmp_path / "run")
    path = workdir / "results/tiny" / tampered
    others = sorted(set((workdir / "results/tiny/quant").glob("*.gguf")) - {path})
    before = {q: sha256_file(q) for q in others}
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = snakemake(workdir, workdir / "config.yaml", check=False)
    assert proc.returncode != 0
    assert f"{path.name}: checksum mismatch" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((workdir / "results").rglob("*.partial"))
    assert {q: sha256_file(q) for q in others} == before


@pytest.mark.slow
def test_bf16_reference_and_an_existing_build_directory(tiny_hf, toolchain_root, tmp_path):
    """reference_type BF16, and toolchain.build_dir pointing at a llama.cpp build made elsewhere."""
    from gguf import GGUFReader

    config = scenario("bf16", tmp_path, tiny_hf)
    build_dir = write_config(tmp_path, {"toolchain": {"build_dir": str(toolchain_root / "build")}}, "build-dir.yaml")
    snakemake(tmp_path, None, "--configfile", str(config), str(build_dir))
    stamp = json.loads((tmp_path / "results/toolchain/llama.cpp.json").read_text())
    assert stamp["source"] == "existing build directory" and stamp["convert_script"].endswith("convert_hf_to_gguf.py")
    ref = GGUFReader(tmp_path / "results/tiny/reference/tiny-BF16.gguf")
    assert {t.tensor_type.name for t in ref.tensors} == {"BF16", "F32"}
    quant = GGUFReader(tmp_path / "results/tiny/quant/tiny-Q8_0.gguf")
    assert "quantize.imatrix.file" not in quant.fields
    assert not list((tmp_path / "results/tiny").rglob("*.imatrix.gguf"))


def test_jobs_share_the_cores_without_oversubscribing(tiny_run):
    """The shared run, on --cores 2 with one-thread quantize/validate jobs: two run side by side,
    the threads of the running jobs never add up to more than 2, each tool gets its job's threads,
    and a speed job always runs alone."""
    running, most_side_by_side, alone = {}, 0, []
    for kind, job, rule, threads in job_timeline(tiny_run.proc.stderr):
        if kind == "end":
            del running[job]
            continue
        running[job] = (rule, threads)
        assert sum(t for _, t in running.values()) <= 2, running
        most_side_by_side = max(most_side_by_side, sum(r in ("quantize", "validate_quant") for r, _ in running.values()))
        if rule == "speed" or any(r == "speed" for r, _ in running.values()):
            alone.append(len(running) == 1)
    assert most_side_by_side == 2
    assert alone and all(alone)
    # The tools' own logs say how many threads they ran with: the job's, not the machine's.
    logs = tiny_run.workdir / "results/logs"
    for quant in ("Q8_0", "Q4_K_M", "IQ4_XS"):
        assert f"as {quant} using 1 threads" in (logs / f"quantize/tiny-{quant}.log").read_text()
        assert "system_info: n_threads = 1 " in (logs / f"validate/tiny-{quant}.log").read_text()
