"""Switches and claims of the README against what the workflow does: verify_inputs,
keep_reference_logits, ``snakemake --report``, a toolchain change, and where a run writes."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.crash_points import job_starts
from tests.dag import planned_jobs, planned_reasons
from tests.workflow_run import ROOT, SCENARIOS, SNAKEMAKE, copy_run, scenario, snakemake, write_config

pytestmark = pytest.mark.toolchain


def _tiny_config(directory: Path, name: str, **change) -> Path:
    """The tiny scenario's config with top-level keys replaced, as ``directory/name``."""
    config = {**yaml.safe_load((SCENARIOS / "tiny" / "config.yaml").read_text()), **change}
    return write_config(directory, config, name)


# ---------------------------------------------------------------- verify_inputs


def _dry_run_jobs(workdir: Path, configfile: Path) -> list[dict]:
    """Each job of ``snakemake --dry-run --printshellcmds``: its rule, inputs and shell command."""
    proc = snakemake(workdir, configfile, "--dry-run", "--printshellcmds")
    jobs = []
    for line in proc.stdout.splitlines():
        if header := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append({"rule": header.group(1), "input": [], "command": ""})
        elif jobs and line.startswith("    input: "):
            jobs[-1]["input"] = line.removeprefix("    input: ").split(", ")
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["command"] = line.removeprefix("Shell command: ")
    return jobs


def test_every_consumer_checks_the_ggufs_it_reads_unless_verify_inputs_is_off(tiny_hf, tmp_path):
    """A fresh tiny run's plan (everything up to the verdicts): by default each job that reads a
    GGUF or the reference logits checks exactly those against their sidecars; with
    ``verify_inputs: false`` no job does, and the commands are otherwise the same. SHA256SUMS and
    the package hash what they publish either way (their own job, not an input check)."""
    workdir = tmp_path / "run"
    scenario("tiny", workdir, tiny_hf)
    on = _dry_run_jobs(workdir, workdir / "config.yaml")
    off = _dry_run_jobs(workdir, _tiny_config(tmp_path, "off.yaml", verify_inputs=False))
    checked = set()
    for job in on:
        reads = {path for path in job["input"] if path.endswith((".gguf", ".logits"))}
        verified = re.findall(r"--verify (\S+)", job["command"])
        if job["rule"] in ("sha256sums", "package"):
            assert reads and verified == [], job
            continue
        assert sorted(verified) == sorted(reads), job
        checked |= {job["rule"]} if reads else set()
    assert checked == {"tokenizer_parity", "chat_template", "imatrix", "quantize", "reference_logits", "validate_quant",
                       "sanity_reference", "sanity_quant", "tensor_error", "speed"}
    assert not [job for job in off if "--verify" in job["command"]]
    assert sorted((job["rule"], " ".join(re.sub(r"--verify \S+", "", job["command"]).split())) for job in on) == sorted(
        (job["rule"], " ".join(job["command"].split())) for job in off)


def test_with_verify_inputs_off_a_changed_gguf_is_read_as_it_is(tiny_run, tmp_path):
    """One byte of a finished quant flipped: its validation is refused by default, and runs on the
    changed bytes with the switch off (what the switch trades away)."""
    workdir = copy_run(tiny_run.workdir, tmp_path / "run")
    quant = workdir / "results/tiny/quant/tiny-Q8_0.gguf"
    data = bytearray(quant.read_bytes())
    data[len(data) // 2] ^= 0x01
    quant.write_bytes(bytes(data))
    target = "results/tiny/validate/Q8_0.json"
    refused = snakemake(workdir, workdir / "config.yaml", "--rerun-triggers=mtime", target, check=False)
    assert refused.returncode != 0 and "tiny-Q8_0.gguf: checksum mismatch" in refused.stderr
    assert not (workdir / target).exists()
    snakemake(workdir, _tiny_config(tmp_path, "off.yaml", verify_inputs=False), "--rerun-triggers=mtime", target)
    measured = json.loads((workdir / target).read_text())
    assert measured["quant"] == "Q8_0" and measured["chunks"] == 10
    assert "checksum" not in (workdir / "results/logs/validate/tiny-Q8_0.log").read_text()


# ---------------------------------------------------------------- keep_reference_logits


def test_without_keep_reference_logits_the_logits_go_and_the_results_stay(tiny_run, tmp_path):
    """Kept by default (a quant added later needs only its own jobs); with the switch off the logits
    are removed once every validation has read them, the results are complete, a second run has
    nothing to do, and a quant added later recomputes them (and so re-measures every build)."""
    logits = "results/tiny/validate/tiny-reference.logits"
    assert (tiny_run.workdir / logits).stat().st_size > 100_000
    more = _tiny_config(tmp_path, "more.yaml", quants=["Q8_0", "Q4_K_M", "IQ4_XS", "Q6_K"])
    kept = planned_jobs(tiny_run.workdir, more)
    assert kept["quantize"] == kept["validate_quant"] == 1 and kept["reference_logits"] == 0

    workdir = copy_run(tiny_run.workdir, tmp_path / "run")
    config = _tiny_config(tmp_path, "temporary.yaml", evaluation={"keep_reference_logits": False})
    proc = snakemake(workdir, config, "--forcerun", "reference_logits")
    assert f"Removing temporary output {logits}." in proc.stderr
    assert not (workdir / logits).exists()
    assert job_starts(proc.stderr)["validate_quant"] == 4  # every build was measured against the new logits
    report = json.loads((workdir / "results/tiny/validation_report.json").read_text())
    assert set(report["quants"]) == {"Q8_0", "Q4_K_M", "IQ4_XS", "IQ4_XS-measured"}
    assert all(entry["chunks"] == 10 and entry["kld_mean"] >= 0 for entry in report["quants"].values())
    assert len((workdir / "results/quality.csv").read_text().splitlines()) == 1 + 4
    package = workdir / "results/package/tiny"
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=package, capture_output=True).returncode == 0
    assert planned_jobs(workdir, config) == {}  # the missing temporary file is no reason to re-run
    more = _tiny_config(tmp_path, "more-temporary.yaml", quants=["Q8_0", "Q4_K_M", "IQ4_XS", "Q6_K"],
                        evaluation={"keep_reference_logits": False})
    again = planned_jobs(workdir, more)
    assert again["quantize"] == 1 and again["reference_logits"] == 1 and again["validate_quant"] == 4


# ---------------------------------------------------------------- snakemake --report


def _report_variable(page: str, name: str):
    """A JavaScript variable of Snakemake's HTML report, ``var name = <JSON>;``, read back."""
    start = page.rindex(f"var {name} = ") + len(f"var {name} = ")  # the data come after the libraries
    return json.JSONDecoder().raw_decode(page, start)[0]


def _words(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).replace("``", "").split())


def test_the_report_holds_every_report_file_with_its_caption(tiny_run, tmp_path):
    """``snakemake --report`` on a finished run: the workflow description and each file marked
    report() (tables, recommendations, plots), byte for byte, with its caption from report/."""
    out = tmp_path / "report.html"
    snakemake(tiny_run.workdir, tiny_run.config, "--report", str(out))
    page = out.read_text()
    assert _words(_report_variable(page, "workflow_desc")) == _words((ROOT / "report" / "workflow.rst").read_text())
    results = _report_variable(page, "results")
    captions = {"summary.csv": "summary.rst", "summary.md": "summary.rst", "recommendations.md": "recommendations.rst",
                "plots/tiny-size-vs-kld.svg": "frontier.rst", "plots/tokens-per-s-laptop-8gb.svg": "speed.rst"}
    assert set(results) == {f"results/summary/{name}" for name in captions}
    for name, caption in captions.items():
        path = f"results/summary/{name}"
        entry = results[path]
        assert _words(entry["caption"]) == _words((ROOT / "report" / caption).read_text()), name
        content = base64.b64decode(entry["data_uri"].split(";base64,", 1)[1])
        assert content == (tiny_run.workdir / path).read_bytes(), name
    categories = {category: {path for paths in sub.values() for path in paths}
                  for category, sub in _report_variable(page, "categories").items()}
    assert categories == {"Summary": {f"results/summary/{name}" for name in ("summary.csv", "summary.md", "recommendations.md")},
                          "Plots": {f"results/summary/{name}" for name in captions if name.startswith("plots/")}}


# ---------------------------------------------------------------- a toolchain change


@pytest.mark.parametrize("change, params", [
    ({"backend": "cuda"}, "--version 0.3.36 --backend cuda"),
    ({"cmake_args": ["-DGGML_NATIVE=OFF"]}, "--version 0.3.36 --backend cpu --cmake-arg=-DGGML_NATIVE=OFF")],
    ids=["backend", "cmake_args"])
def test_a_toolchain_change_makes_everything_built_with_it_stale(tiny_run, tmp_path, change, params):
    """After the finished tiny run, a new backend or new CMake flags: the toolchain job re-runs
    for its changed parameters and every job made with llama.cpp after it, for its updated input.
    Fetching the source and copying the calibration text use no llama.cpp and stay. A dry run
    sees as far as the verdicts (a checkpoint), so the IQ4_XS retry (with the measurements its
    measured remedy is chosen by) and the speed runs of the shipped builds, which follow from
    verdicts, come after them."""
    config = _tiny_config(tmp_path, "toolchain.yaml", toolchain=change)
    reasons = planned_reasons(tiny_run.workdir, config)
    assert {rule: len(why) for rule, why in reasons.items()} == {
        "toolchain": 1, "convert": 1, "tokenizer_parity": 1, "chat_template": 1, "imatrix": 1, "quantize": 3,
        "reference_logits": 1,
        "validate_quant": 3, "sanity_reference": 1, "sanity_quant": 3, "tensor_error": 3, "verdict": 3, "speed": 1,
        "validation_report": 1, "quality_table": 1, "sha256sums": 1, "speed_report": 1, "package": 1,
        "disk_report": 1, "summary": 1}
    [why] = reasons.pop("toolchain")
    assert "Params have changed since last execution" in why, why
    assert f"before: '--version 0.3.36 --backend cpu' now: '{params}'" in why, why
    assert all("Input files updated by another job" in why for whys in reasons.values() for why in whys), reasons
    ran = set(job_starts(tiny_run.proc.stderr)) - {"all"}
    retry = {"remedy_plan", "calibration_logits", "sensitivity", "sensitivity_probes", "auto_recipe"}
    assert ran - set(reasons) - {"toolchain"} - retry == {"source_local", "calibration_text"}
    assert retry <= ran


# ---------------------------------------------------------------- where a run writes


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and link under ``root`` (links not followed): relative path → (size, mtime)."""
    found = {}
    for directory, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if (Path(directory) / d).is_symlink()]:
            path = Path(directory) / name
            stat = path.lstat()
            found[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


def _outside_results(files) -> set[str]:
    return {path for path in files if not path.startswith(("results/", ".snakemake/"))}


def test_a_run_elsewhere_writes_nothing_in_its_directory_but_results(tiny_run):
    """README: everything under results/. The shared run's directory holds, besides results/ and
    Snakemake's .snakemake/, only what the scenario put there, unchanged."""
    assert _outside_results(_files(tiny_run.workdir)) == {"config.yaml", "tiny-llama"}
    assert (tiny_run.workdir / "config.yaml").read_bytes() == (SCENARIOS / "tiny" / "config.yaml").read_bytes()


@pytest.mark.slow
def test_a_run_in_the_checkout_writes_only_results_there(tiny_hf, toolchain_root, tmp_path):
    """The tiny scenario run as a user runs the workflow, in (a copy of) the checkout with a config
    file from elsewhere and Python allowed to write bytecode: outside results/ and .snakemake/,
    nothing in the checkout is new or changed but Python's __pycache__ of the project's modules."""
    checkout = tmp_path / "gguf-forge"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    config = yaml.safe_load((SCENARIOS / "tiny" / "config.yaml").read_text())
    config["models"][0]["source"]["path"] = str(tiny_hf)
    configfile = write_config(tmp_path, config, "tiny.yaml")
    before = _files(checkout)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([str(SNAKEMAKE), "--cores", "2", "--configfile", str(configfile)], cwd=checkout, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (checkout / "results/package/tiny/SHA256SUMS").is_file()
    after = _files(checkout)
    changed = _outside_results(path for path in after if before.get(path) != after[path])
    assert not _outside_results(set(before) - set(after))  # nothing removed either
    assert changed and all(re.fullmatch(r"workflow_scripts/__pycache__/\w+\.cpython-\d+\.pyc", path)
                           for path in changed), sorted(changed)
