"""The disk predicted at plan time (workflow_scripts/disk_plan.py): the refusal through build_plan
with a free-space figure given to it, what already exists counting nothing, the reference logits'
exact layout, a full disk as a one-line error with nothing left behind, and the prediction
against the tiny run's real files."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from workflow_scripts.atomic import atomic_output, partial_path
from workflow_scripts.config import build_plan
from workflow_scripts.disk_plan import check_logits_file, logits_bytes
from workflow_scripts.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(tmp_path) -> tuple[dict, Path]:
    """The default config (SmolLM2 from its PyPI package) with its texts under a fresh base."""
    shutil.copytree(ROOT / "config" / "data", tmp_path / "config" / "data")
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), tmp_path


def test_refused_when_it_does_not_fit(demo):
    config, base = demo
    with pytest.raises(UserError) as err:
        build_plan(config, "c.yaml", base=base, free_bytes=100 << 20)
    message = str(err.value)
    assert message.startswith("c.yaml: not enough disk: the models still need 1.")
    assert "smollm2-135m: 1." in message and "the file system has 100.0 MiB free" in message
    assert "disk_check: false" in message


def test_switch_and_existing_outputs(demo):
    config, base = demo
    plan = build_plan(dict(config, disk_check=False), "c.yaml", base=base, free_bytes=0)
    need = plan.disk["smollm2-135m"]
    # SmolLM2-135M: the reference is 2 bytes per matrix weight (+ F32 norms + the source's header) and
    # the logits 20 chunks × 512 tokens × 49152-token vocabulary, exactly as llama-perplexity writes them.
    assert need.files["results/smollm2-135m/reference/smollm2-135m-F16.gguf"] == 270_885_952
    assert need.files["results/smollm2-135m/validate/smollm2-135m-reference.logits"] == 250_716_100
    for path in need.files:  # a finished run: nothing more is needed
        made = base / path.split("#")[0]
        made.parent.mkdir(parents=True, exist_ok=True)
        made.touch()
    build_plan(config, "c.yaml", base=base, free_bytes=0)


def test_logits_layout(tmp_path):
    # "_logits_", ctx, n_vocab, n_chunk, the tokens (int32), then ctx - 1 - ctx/2 rows of nv uint16 per chunk
    assert logits_bytes(5, 2, 8) == 20 + 2 * 8 * 4 + 2 * 3 * (6 + 4) * 2
    path = tmp_path / "r.logits"
    head = b"_logits_" + (8).to_bytes(4, "little") + (5).to_bytes(4, "little") + (2).to_bytes(4, "little")
    path.write_bytes(head + bytes(logits_bytes(5, 2, 8) - 20))
    check_logits_file(path)
    path.write_bytes(head + bytes(100))
    with pytest.raises(UserError, match="says 204; expected the complete file"):
        check_logits_file(path)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    final = tmp_path / "out.json"
    with pytest.raises(UserError) as err:
        with atomic_output(final) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value).startswith(f"{final}: disk full (no space left on device)")
    assert "\n" not in str(err.value)
    assert not final.exists() and not partial_path(final).exists()


KINDS = {"reference": "reference/tiny-F16.gguf", "imatrix": "imatrix/tiny.imatrix.gguf",
         "logits": "validate/tiny-reference.logits", "Q8_0": "quant/tiny-Q8_0.gguf",
         "Q4_K_M": "quant/tiny-Q4_K_M.gguf", "IQ4_XS": "quant/tiny-IQ4_XS.gguf"}


@pytest.mark.toolchain
@pytest.mark.parametrize("kind", KINDS)
def test_prediction_against_the_tiny_run(tiny_run, kind):
    """Never under the real size; at most 2× it plus 128 KiB (the rounding up is coarse on a model
    whose 64-wide rows make every K type fall back, and its files are mostly metadata)."""
    report = json.loads((tiny_run.workdir / "results" / "tiny" / "disk.json").read_text())
    row = report["files"][f"results/tiny/{KINDS[kind]}"]
    actual = (tiny_run.workdir / "results" / "tiny" / KINDS[kind]).stat().st_size
    assert row["used"] == actual
    assert actual <= row["predicted"] <= 2 * actual + (128 << 10), (kind, row)


@pytest.mark.toolchain
@pytest.mark.slow
def test_full_disk_fails_cleanly_and_resumes(tiny_run, tiny_hf, tmp_path):
    """results/ on a 3 MiB tmpfs (the tiny run writes about 4 MB there), the disk check off: a job
    fails saying the disk is full, leaves no partial file, and after the file system grows the run
    resumes to the shared tiny run's bytes."""
    from tests.small_fs import small_tmpfs
    from tests.workflow_run import scenario, snakemake

    config = scenario("tiny", tmp_path, tiny_hf)
    config.write_text(config.read_text() + "\ndisk_check: false\n")
    with small_tmpfs(tmp_path / "results", "3m") as results:
        proc = snakemake(tmp_path, config, "--show-failed-logs", check=False)
        assert proc.returncode != 0
        assert "disk full (no space left on device)" in proc.stderr, proc.stderr[-4000:]
        print(*(line for line in proc.stderr.splitlines() if "disk full" in line or "Error in rule" in line), sep="\n")
        assert not list(results.rglob("*.partial"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(results)], check=True)
        snakemake(tmp_path, config)
        assert (results / "tiny" / "SHA256SUMS").read_text() == tiny_run.sha256sums
        assert not list(results.rglob("*.partial"))


def test_summary_line():
    from workflow_scripts.summary import disk_md

    line = disk_md([{"model": "m", "predicted_bytes": 3 << 20, "used_bytes": 1 << 20, "unknown": []}])
    assert "- m: predicted 3.0 MiB, used 1.0 MiB\n" in line and disk_md([]) == ""


def test_hub_source_not_downloaded_is_said_unknown(demo):
    config, base = demo
    hub = {"name": "h", "source": {"type": "hf", "repo_id": "o/m", "revision": "0" * 40}}
    config["models"] = [*config["models"], hub]
    with pytest.raises(UserError, match="not counted: the Hub downloads of h and what is made from them"):
        build_plan(config, "c.yaml", base=base, free_bytes=1 << 20)
    assert "not available offline" in build_plan(config, "c.yaml", base=base, free_bytes=1 << 40).disk["h"].unknown[0]


def test_auto_builds_are_predicted_by_their_objective(demo):
    config, base = demo
    config = dict(config, quants=["Q4_K_M", "A", "B"], variants={
        "A": {"type": "Q4_K_M", "auto": {"bytes_of": "Q4_K_M"}}, "B": {"type": "Q4_K_M", "auto": {"target_bpw": 4.0}}})
    files = build_plan(config, "c.yaml", base=base, free_bytes=10**13).disk["smollm2-135m"].files
    quant = "results/smollm2-135m/quant/smollm2-135m-{}.gguf"
    assert files[quant.format("A")] == files[quant.format("Q4_K_M")]  # within the stock build's bytes
    # 4 bits a weight against the F16 reference's 16 (its norms at 32 and the header weigh a little)
    assert 0.24 < files[quant.format("B")] / files["results/smollm2-135m/reference/smollm2-135m-F16.gguf"] < 0.26
    # the probes' logits on the calibration text: half the evaluation's chunks, 5 of 512 here:
    # 20 + 5 × 512 × 4 + 5 × 255 × 49,156 × 2 bytes
    assert files["results/smollm2-135m/auto/calibration.logits"] == 125_358_060
    assert "results/smollm2-135m/auto/sensitivity#temporary quant" in files
    # without an auto build, the measured fallback remedy's measurements are as conditional as the
    # fallback builds themselves: neither is counted
    plain = build_plan(dict(demo[0]), "c.yaml", base=base, free_bytes=10**13)
    assert plain.models["smollm2-135m"].auto_menu  # the default remedy is measured
    assert not [f for f in plain.disk["smollm2-135m"].files if "/auto/" in f]


def test_a_70b_checkpoint_is_refused_on_a_64_gib_disk_before_any_job(tmp_path, tiny_hf):
    """Llama-3.1-70B's shapes (sparse shards): the need is predicted from the shards' headers at plan
    time and the run refused on the single-GPU H200 host's 64 GiB, naming the model, the need and
    the free space; with 1 TB free it plans."""
    from benchmarks.cost_scale import SHAPE_70B
    from benchmarks.gpu_measure import VOCAB_8B, make_sparse_checkpoint

    weights = make_sparse_checkpoint(tmp_path / "llama-70b", tiny_hf, SHAPE_70B, VOCAB_8B)
    assert 141e9 < weights < 141.2e9 and sum(p.stat().st_blocks for p in (tmp_path / "llama-70b").iterdir()) * 512 < 1e7
    shutil.copytree(ROOT / "config" / "data", tmp_path / "config" / "data")
    config = {"models": [{"name": "llama70b", "source": {"type": "local", "path": "llama-70b"}}],
              "quants": ["Q8_0", "Q4_K_M", "IQ4_XS"]}
    with pytest.raises(UserError) as err:
        build_plan(json.loads(json.dumps(config)), "c.yaml", base=tmp_path, free_bytes=64 << 30)
    message = str(err.value)
    assert "llama70b: " in message and "the file system has 64.00 GiB free" in message, message
    need = build_plan(json.loads(json.dumps(config)), "c.yaml", base=tmp_path, free_bytes=10**12).disk["llama70b"]
    files = {path.rsplit("/", 1)[-1]: size for path, size in need.files.items()}
    # the F16 reference: 2 bytes a matrix weight, 4 a norm weight, plus the header (tokenizer files)
    assert weights < files["llama70b-F16.gguf"] < weights + 10**7
    assert sum(need.files.values()) > 290e9, {name: f"{size / 1e9:.1f} GB" for name, size in files.items()}
