"""Packages: only passing builds go in, every file is listed and checked, tampering is caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_scripts.checksums import write_sidecar
from workflow_scripts.errors import UserError
from workflow_scripts.package import assemble
from workflow_scripts.verify_package import verify_package

MODEL = "m"


def _entry(build: str, requested: str, verdict: str, kld: float, bpw: float) -> dict:
    return {"quant": build, "build": {"type": requested, "imatrix": True, "recipe": [], "requested_as": requested, "remedy": build != requested},
            "gate": {"max_mean_kld": 0.1}, "verdict": verdict, "reasons": [] if verdict == "passed" else [f"mean KLD {kld} > 0.1"],
            "sanity": {"passed": True, "problems": [], "mean_same_first_tokens": 20}, "file_bytes": 1000,
            "bits_per_weight": bpw, "ppl": 10.0, "ppl_error": 0.5, "delta_ppl_pct": 1.0, "kld_mean": kld, "same_top_pct": 90.0}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A results tree as the workflow leaves it for one model: Q8_0 passed, Q2_K and its retry failed."""
    monkeypatch.chdir(tmp_path)
    base = Path("results") / MODEL
    for sub in ("quant", "reference", "imatrix", "source"):
        (base / sub).mkdir(parents=True)
    for name in ("Q8_0", "Q2_K", "Q2_K-sensitive"):
        path = base / "quant" / f"{MODEL}-{name}.gguf"
        path.write_bytes(b"GGUF" + name.encode() * 100)
        write_sidecar(path)
    for path in (base / "reference" / f"{MODEL}-F16.gguf", base / "imatrix" / f"{MODEL}.imatrix.gguf"):
        path.write_bytes(b"GGUF" + path.name.encode())
        write_sidecar(path)
    (base / "imatrix" / "calibration.txt").write_text("calibration")
    Path("evaluation.txt").write_text("evaluation")
    report = {"quants": {"Q8_0": _entry("Q8_0", "Q8_0", "passed", 0.004, 8.5),
                         "Q2_K": _entry("Q2_K", "Q2_K", "failed", 0.9, 3.0),
                         "Q2_K-sensitive": _entry("Q2_K-sensitive", "Q2_K", "failed", 0.5, 3.5)},
              "attempts": {"Q8_0": ["Q8_0"], "Q2_K": ["Q2_K", "Q2_K-sensitive"]},
              "ships": {"Q8_0": "Q8_0", "Q2_K": None}, "withheld": ["Q2_K"],
              "reference": {"ppl": 9.4, "ppl_error": 0.5}, "invariants": {}}
    (base / "validation_report.json").write_text(json.dumps(report))
    speed = {"ships": {"Q8_0": "Q8_0", "Q2_K": None}, "withheld": {"Q2_K": ["quality gate: see validation_report.json"]},
             "builds": {"Q8_0": {"file_bytes": 404, "size_reduction_pct": 50.0, "verdict": "passed", "reasons": [],
                                 "tiers": {"cpu": {"measured": False, "fits": True, "memory": "0.1 GB RAM of 6.4 GB usable",
                                                   "reason": "not measured here"}}}},
             "reference": {"name": "F16", "file_bytes": 808, "tiers": {"cpu": {"measured": False, "reason": "not measured here"}}},
             "hosts": [{"cpu": "x", "cpus": 2, "gpus": []}],
             "recommendations": {"cpu": {"measured": False, "priority": "quality", "choice": "Q8_0", "runner_up": None,
                                         "why": "lowest mean KLD among 1 shipped file(s) that fit cpu", "excluded": {}}}}
    (base / "speed_report.json").write_text(json.dumps(speed))
    (base / "source" / "source.json").write_text(json.dumps(
        {"type": "gguf", "identity": {"file": "x.gguf"}, "files": [{"path": "/abs/x.gguf", "sha256": "a" * 64, "size": 3}]}))
    (base / "reference" / "convert.json").write_text(json.dumps({"method": "dequantize", "note": "a dequantized Q4_1"}))
    Path("stamp.json").write_text(json.dumps({"llama_cpp_commit": "c" * 40, "llama_cpp_python_version": "0.3.36",
                                              "backend": "cpu", "binaries_sha256": {"llama-quantize": "b" * 64}}))
    return tmp_path


def _settings() -> dict:
    ref = f"results/{MODEL}/reference/{MODEL}-F16.gguf"
    imatrix = f"results/{MODEL}/imatrix/{MODEL}.imatrix.gguf"
    return {"model": MODEL, "base_model": "org/m", "license": "mit", "note": None, "reference_type": "F16",
            "reference_path": ref, "imatrix_path": imatrix, "calibration": {"chunks": 2, "ctx": 64},
            "evaluation": {"chunks": 1, "ctx": 64}, "toolchain": {"backend": "cpu"}, "split_max_mb": 50000,
            "commands": {b: ["llama-quantize", "--imatrix", imatrix, ref, "{out}", b.split("-")[0]]
                         for b in ("Q8_0", "Q2_K", "Q2_K-sensitive")}}


def _assemble(out: Path) -> dict:
    base = Path("results") / MODEL
    return assemble(_settings(), base / "validation_report.json", base / "speed_report.json", Path("stamp.json"), base / "quant",
                    {"source": base / "source" / "source.json", "convert": base / "reference" / "convert.json"},
                    {"evaluation": Path("evaluation.txt"), "calibration": base / "imatrix" / "calibration.txt"}, out)


def test_only_passing_builds_enter_and_the_rest_are_listed_as_withheld(workdir):
    out = Path("results/package") / MODEL
    manifest = _assemble(out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "SHA256SUMS", "m-Q8_0.gguf", "m.imatrix.gguf", "manifest.json"]
    assert [f["file"] for f in manifest["files"]] == ["m-Q8_0.gguf"]
    assert manifest["withheld"] == [{"quant": "Q2_K", "tried": ["Q2_K", "Q2_K-sensitive"],
                                     "reasons": {"Q2_K": ["mean KLD 0.9 > 0.1"], "Q2_K-sensitive": ["mean KLD 0.5 > 0.1"]}}]
    assert manifest["files"][0]["command"][-2:] == ["m-Q8_0.gguf", "Q8_0"]
    assert manifest["source"]["files"] == [{"name": "x.gguf", "sha256": "a" * 64, "size": 3}]  # no absolute paths
    assert os.stat(out / "m-Q8_0.gguf").st_ino == os.stat(f"results/{MODEL}/quant/m-Q8_0.gguf").st_ino
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert verify_package(out)["config_sha256"] == manifest["config_sha256"]
    card = (out / "README.md").read_text()
    assert "base_model: org/m" in card and "**Q2_K** (tried Q2_K, Q2_K-sensitive)" in card
    assert "| cpu | quality | Q8_0 | – | lowest mean KLD" in card and "**cpu**: not measured: not measured here." in card


def test_the_card_header_parses_and_its_table_matches_the_metrics(workdir):
    import yaml

    manifest = _assemble(Path("results/package") / MODEL)
    card = (Path("results/package") / MODEL / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["base_model"] == "org/m" and meta["license"] == "mit" and meta["quantized_by"] == "gguf-forge"
    assert {"gguf", "imatrix"} <= set(meta["tags"])
    metrics = manifest["files"][0]["metrics"]
    assert (metrics["bits_per_weight"], metrics["ppl"], metrics["ppl_error"], metrics["kld_mean"]) == (8.5, 10.0, 0.5, 0.004)
    row = next(line for line in body.splitlines() if line.startswith("| `m-Q8_0.gguf` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # The fixture's Q8_0 figures (8.5 bpw, PPL 10.0 ± 0.5, ΔPPL 1 %, mean KLD 0.004), as the card shows them.
    assert cells[1:7] == ["Q8_0", "0.0", "8.50", "10.000 ± 0.500", "+1.00", "0.0040"], cells
    assert manifest["toolchain"]["llama_cpp_commit"] == "c" * 40 and f"`{'c' * 40}`" in card


def test_the_config_digest_follows_inputs_not_locations(workdir):
    first = _assemble(Path("results/package") / MODEL)["config_sha256"]
    assert _assemble(Path("elsewhere") / MODEL)["config_sha256"] == first
    Path("evaluation.txt").write_text("other evaluation text")
    assert _assemble(Path("results/package") / MODEL)["config_sha256"] != first


@pytest.mark.parametrize("tamper,message", [
    (lambda d: (d / "m-Q8_0.gguf").open("r+b").write(b"X"), "m-Q8_0.gguf: sha256 does not match SHA256SUMS"),
    (lambda d: (d / "stray.bin").write_bytes(b"x"), "stray.bin not listed in SHA256SUMS"),
    (lambda d: (d / "m.imatrix.gguf").unlink(), "m.imatrix.gguf: listed in SHA256SUMS but missing"),
    (lambda d: (d / "SHA256SUMS").write_text("nonsense\n"), "SHA256SUMS: line 1: expected"),
])
def test_tampering_is_refused_naming_the_file(workdir, tamper, message):
    out = Path("results/package") / MODEL
    _assemble(out)
    tamper(out)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        verify_package(out)
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.verify_package", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr


def test_a_changed_quant_stops_packaging_and_keeps_the_earlier_package(workdir):
    out = Path("results/package") / MODEL
    _assemble(out)
    before = (out / "manifest.json").read_text()
    quant = Path(f"results/{MODEL}/quant/m-Q8_0.gguf")
    quant.unlink()
    quant.write_bytes(b"GGUF changed")  # a new inode: the package's link still holds the old bytes
    with pytest.raises(UserError, match="m-Q8_0.gguf: checksum mismatch"):
        _assemble(out)
    assert (out / "manifest.json").read_text() == before and verify_package(out)
    assert not list(out.parent.glob(".*partial"))
