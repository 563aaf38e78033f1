"""Packages: only passing builds go in, every file is listed and checked, tampering is caught."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.hf_tag import candidates, select
from tests.stub_sources import small_gguf
from workflow_scripts.checksums import sha256_file, write_sidecar
from workflow_scripts.errors import UserError
from workflow_scripts.model_card import run_section
from workflow_scripts.package import assemble
from workflow_scripts.verify_package import verify_package

MODEL = "m"


TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
RAISED = ["--tensor-type", "attn_v=Q8_0", "--tensor-type", "ffn_down=Q6_K", "--output-tensor-type", "Q8_0",
          "--token-embedding-type", "Q8_0"]


def _entry(build: str, requested: str, verdict: str, kld: float, bpw: float, recipe: list[str] = ()) -> dict:
    return {"quant": build, "build": {"type": requested, "imatrix": True, "recipe": list(recipe), "requested_as": requested,
                                      "remedy": build != requested},
            "gate": {"max_mean_kld": 0.1}, "verdict": verdict, "reasons": [] if verdict == "passed" else [f"mean KLD {kld} > 0.1"],
            "sanity": {"passed": True, "problems": [], "mean_same_first_tokens": 20}, "file_bytes": 1000,
            "bits_per_weight": bpw, "ppl": 10.0, "ppl_error": 0.5, "delta_ppl_pct": 1.0, "kld_mean": kld, "same_top_pct": 90.0}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A results tree as the workflow leaves it for one model: Q8_0 passed, Q2_K and its retry failed,
    IQ4_XS failed and its retry IQ4_XS-sensitive passed (so it ships for IQ4_XS)."""
    monkeypatch.chdir(tmp_path)
    base = Path("results") / MODEL
    for sub in ("quant", "reference", "imatrix", "source"):
        (base / sub).mkdir(parents=True)
    for name in ("Q8_0", "Q2_K", "Q2_K-sensitive", "IQ4_XS", "IQ4_XS-sensitive"):
        write_sidecar(small_gguf(base / "quant" / f"{MODEL}-{name}.gguf", chat_template=TEMPLATE))
    write_sidecar(small_gguf(base / "reference" / f"{MODEL}-F16.gguf", "F16", chat_template=TEMPLATE))
    imatrix = base / "imatrix" / f"{MODEL}.imatrix.gguf"
    imatrix.write_bytes(b"GGUF" + imatrix.name.encode())
    write_sidecar(imatrix)
    (base / "imatrix" / "calibration.txt").write_text("calibration")
    Path("evaluation.txt").write_text("evaluation")
    report = {"quants": {"Q8_0": _entry("Q8_0", "Q8_0", "passed", 0.004, 8.5),
                         "Q2_K": _entry("Q2_K", "Q2_K", "failed", 0.9, 3.0),
                         "Q2_K-sensitive": _entry("Q2_K-sensitive", "Q2_K", "failed", 0.5, 3.5),
                         "IQ4_XS": _entry("IQ4_XS", "IQ4_XS", "failed", 0.2, 4.25),
                         "IQ4_XS-sensitive": _entry("IQ4_XS-sensitive", "IQ4_XS", "passed", 0.05, 4.6, RAISED)},
              "attempts": {"Q8_0": ["Q8_0"], "Q2_K": ["Q2_K", "Q2_K-sensitive"], "IQ4_XS": ["IQ4_XS", "IQ4_XS-sensitive"]},
              "ships": {"Q8_0": "Q8_0", "Q2_K": None, "IQ4_XS": "IQ4_XS-sensitive"}, "withheld": ["Q2_K"],
              "reference": {"ppl": 9.4, "ppl_error": 0.5}, "invariants": {}}
    (base / "validation_report.json").write_text(json.dumps(report))
    tiers = {"cpu": {"measured": False, "fits": True, "memory": "0.1 GB RAM of 6.4 GB usable", "reason": "not measured here"}}
    speed = {"ships": {"Q8_0": "Q8_0", "Q2_K": None, "IQ4_XS": "IQ4_XS-sensitive"},
             "withheld": {"Q2_K": ["quality gate: see validation_report.json"]},
             "builds": {build: {"file_bytes": 404, "size_reduction_pct": 50.0, "verdict": "passed", "reasons": [], "tiers": tiers}
                        for build in ("Q8_0", "IQ4_XS-sensitive")},
             "reference": {"name": "F16", "file_bytes": 808, "tiers": {"cpu": {"measured": False, "reason": "not measured here"}}},
             "hosts": [{"cpu": "x", "cpus": 2, "gpus": []}],
             "recommendations": {"cpu": {"measured": False, "priority": "quality", "choice": "Q8_0",
                                         "runner_up": "IQ4_XS-sensitive",
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
            "quantized_by": "someone", "repo_id": "someone/m-GGUF",
            "reference_path": ref, "imatrix_path": imatrix, "calibration": {"chunks": 2, "ctx": 64},
            "evaluation": {"chunks": 1, "ctx": 64}, "toolchain": {"backend": "cpu"}, "split_max_mb": 50000, "auto": {},
            "commands": {b: ["llama-quantize", "--imatrix", imatrix, ref, "{out}", b.split("-")[0]]
                         for b in ("Q8_0", "Q2_K", "Q2_K-sensitive", "IQ4_XS", "IQ4_XS-sensitive")}}


def _assemble(out: Path) -> dict:
    base = Path("results") / MODEL
    return assemble(_settings(), base / "validation_report.json", base / "speed_report.json", Path("stamp.json"), base / "quant",
                    {"source": base / "source" / "source.json", "convert": base / "reference" / "convert.json"},
                    {"evaluation": Path("evaluation.txt"), "calibration": base / "imatrix" / "calibration.txt"}, out)


def test_only_passing_builds_enter_and_the_rest_are_listed_as_withheld(workdir):
    out = Path("results/package") / MODEL
    manifest = _assemble(out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "SHA256SUMS", "m-IQ4_XS.gguf", "m-Q8_0.gguf",
                                                      "m.imatrix.gguf", "m.intoto.jsonl", "manifest.json"]
    assert [(f["file"], f["label"], f["build"]) for f in manifest["files"]] == [
        ("m-Q8_0.gguf", "Q8_0", "Q8_0"), ("m-IQ4_XS.gguf", "IQ4_XS", "IQ4_XS-sensitive")]
    # the fallback build ships under its quant's label: the package's IQ4_XS is the retry's file, not the failed one
    assert os.stat(out / "m-IQ4_XS.gguf").st_ino == os.stat(f"results/{MODEL}/quant/m-IQ4_XS-sensitive.gguf").st_ino
    assert manifest["files"][1]["recipe_text"] == "IQ4_XS with attn_v Q8_0, ffn_down Q6_K, output Q8_0, token_embd Q8_0"
    assert manifest["files"][1]["command"][-2:] == ["m-IQ4_XS.gguf", "IQ4_XS"]
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
    assert "| cpu | quality | Q8_0 | IQ4_XS | lowest mean KLD" in card and "**cpu**: not measured: not measured here." in card


def test_the_card_header_parses_and_its_table_matches_the_metrics(workdir):
    import yaml

    manifest = _assemble(Path("results/package") / MODEL)
    card = (Path("results/package") / MODEL / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta == {"base_model": "org/m", "base_model_relation": "quantized", "license": "mit", "library_name": "gguf",
                    "pipeline_tag": "text-generation", "quantized_by": "someone",
                    "tags": ["gguf", "llama-cpp", "quantized", "imatrix"]}
    metrics = manifest["files"][0]["metrics"]
    assert (metrics["bits_per_weight"], metrics["ppl"], metrics["ppl_error"], metrics["kld_mean"]) == (8.5, 10.0, 0.5, 0.004)
    row = next(line for line in body.splitlines() if line.startswith("| Q8_0 | `m-Q8_0.gguf` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # The fixture's Q8_0 figures (8.5 bpw, PPL 10.0 ± 0.5, ΔPPL 1 %, mean KLD 0.004), as the card shows them.
    assert cells[:8] == ["Q8_0", "`m-Q8_0.gguf`", "Q8_0", "0.0", "8.50", "10.000 ± 0.500", "+1.00", "0.0040"], cells
    row = next(line for line in body.splitlines() if line.startswith("| IQ4_XS |"))
    assert row.startswith("| IQ4_XS | `m-IQ4_XS.gguf` | IQ4_XS with attn_v Q8_0, ffn_down Q6_K, output Q8_0, "
                          "token_embd Q8_0 (build IQ4_XS-sensitive) | 0.0 | 4.60 |"), row
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


def test_the_package_intoto_file_is_the_manifests_statements_one_per_line(workdir):
    out = Path("results/package") / MODEL
    manifest = _assemble(out)
    lines = (out / "m.intoto.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [f["provenance"] for f in manifest["files"]]
    assert [s["subject"][0]["name"] for s in map(json.loads, lines)] == ["m-Q8_0.gguf", "m-IQ4_XS.gguf"]
    assert "m.intoto.jsonl" in (out / "SHA256SUMS").read_text()
    statements = (out / "m.intoto.jsonl").read_text()
    (out / "m.intoto.jsonl").write_text(statements.replace("m-IQ4_XS.gguf", "m-Q4_K_M.gguf"))
    sums = (out / "SHA256SUMS").read_text().splitlines()  # listed anew: only the statements' check can object
    (out / "SHA256SUMS").write_text("".join(line + "\n" if not line.endswith("m.intoto.jsonl") else
                                            f"{sha256_file(out / 'm.intoto.jsonl')}  m.intoto.jsonl\n" for line in sums))
    with pytest.raises(UserError, match="m.intoto.jsonl: missing or not the manifest's provenance statements"):
        verify_package(out)


# What llama.cpp's `-hf REPO:TAG` loads from the package (tests/hf_tag.py, from the pinned llama.cpp's
# code), written out by hand: each requested quant by its label, the fallback build under its quant's label.
TAGS = {"Q8_0": "m-Q8_0.gguf", "q8_0": "m-Q8_0.gguf", "IQ4_XS": "m-IQ4_XS.gguf", "iq4_xs": "m-IQ4_XS.gguf"}


def test_every_label_picks_its_own_file_and_nothing_picks_the_imatrix(workdir):
    out = Path("results/package") / MODEL
    _assemble(out)
    listing = sorted(p.name for p in out.iterdir())
    for order in (listing, listing[::-1]):  # one file per tag whatever order the Hub lists in
        for tag, expected in TAGS.items():
            assert candidates(order, tag) == [expected], tag
        assert candidates(order, "imatrix") == [] and select(order, "imatrix") is None
        assert select(order, "IQ4_XS-sensitive") is None  # a build name is no tag of the package
        assert select(order) == "m-Q8_0.gguf"  # no tag: Q4_K_M, else Q8_0
    # the rule itself, on a listing like a large repository's: split parts, a projector, an imatrix
    other = ["x-Q4_K_M-00002-of-00002.gguf", "x-Q4_K_M-00001-of-00002.gguf", "mmproj-x-F16.gguf", "x-F16.gguf",
             "x.imatrix.gguf", "imatrix/x-Q4_K_M.gguf", "x-IQ4_XS.gguf"]
    assert select(other, "q4_k_m") == "x-Q4_K_M-00001-of-00002.gguf" and select(other, "F16") == "x-F16.gguf"
    assert select(other, "XS") == "x-IQ4_XS.gguf" and select(other, "Q6_K") is None and select(other) == other[1]


def _hf_cache(package: Path, cache: Path, repo: str) -> None:
    """The package as llama.cpp's offline mode finds a downloaded repository (common/hf-cache.cpp)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit + "\n")
    (folder / "snapshots" / commit).mkdir(parents=True)
    for path in package.iterdir():
        (folder / "snapshots" / commit / path.name).symlink_to(path.resolve())


def _loaded(toolchain_bin: Path, cache: Path, ref: str) -> str:
    """The file llama.cpp itself loads for ``-hf ref`` (offline, from ``cache``), or its error."""
    proc = subprocess.run([str(toolchain_bin / "llama-completion"), "-hf", ref, "--offline", "-lv", "4", "-n", "1",
                           "-p", "hi", "-no-cnv"], capture_output=True, text=True, env={**os.environ, "LLAMA_CACHE": str(cache)},
                          timeout=120)
    found = re.search(r"loaded meta data with .* from (\S+)", proc.stdout + proc.stderr)
    if found:
        return Path(found.group(1)).name
    return "no GGUF files found" if "no GGUF files found" in proc.stdout + proc.stderr else proc.stderr[-500:]


def test_llama_cpp_finds_each_label_and_the_first_part_of_a_split_file(workdir, toolchain_bin):
    """The real llama.cpp (-hf REPO:TAG, offline cache) and the oracle agree on a real package with a
    file split by llama-gguf-split: the tag picks part 1, the parts keep their -0000k-of-0000n names."""
    from gguf import GGUFWriter

    big = Path(f"results/{MODEL}/quant/{MODEL}-Q8_0.gguf")  # 2.4 MB: over a 1 MB part limit
    big.unlink()
    writer = GGUFWriter(big, "llama")
    for index in range(4):
        writer.add_tensor(f"blk.{index}.attn_q.weight", np.full((600, 256), index, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_sidecar(big)
    stamp = json.loads(Path("stamp.json").read_text())
    Path("stamp.json").write_text(json.dumps({**stamp, "bin_dir": str(toolchain_bin)}))
    out = Path("results/package") / MODEL
    base = Path("results") / MODEL
    assemble({**_settings(), "split_max_mb": 1}, base / "validation_report.json", base / "speed_report.json",
             Path("stamp.json"), base / "quant",
             {"source": base / "source" / "source.json", "convert": base / "reference" / "convert.json"},
             {"evaluation": Path("evaluation.txt"), "calibration": base / "imatrix" / "calibration.txt"}, out)
    parts = sorted(p.name for p in out.glob("m-Q8_0*.gguf"))
    assert len(parts) >= 2 and parts == [f"m-Q8_0-{i:05d}-of-{len(parts):05d}.gguf" for i in range(1, len(parts) + 1)]
    first = f"m-Q8_0-00001-of-{len(parts):05d}.gguf"
    listing = sorted(p.name for p in out.iterdir())
    assert candidates(listing, "Q8_0") == [first] and candidates(listing, "IQ4_XS") == ["m-IQ4_XS.gguf"]
    _hf_cache(out, Path("hf-cache"), "someone/m-GGUF")
    for tag, expected in {"Q8_0": first, "q8_0": first, "IQ4_XS": "m-IQ4_XS.gguf", "iq4_xs": "m-IQ4_XS.gguf",
                          "imatrix": "no GGUF files found", "IQ4_XS-sensitive": "no GGUF files found"}.items():
        assert _loaded(toolchain_bin, Path("hf-cache"), f"someone/m-GGUF:{tag}") == expected, tag


def test_the_card_says_how_to_fetch_a_file_whose_tag_another_file_shares():
    """F16 and BF16 are both llama.cpp type names: `-hf REPO:F16` also matches m-BF16.gguf."""
    manifest = {"model": "m", "repo_id": None, "files": [{"label": "BF16", "file": "m-BF16.gguf"},
                                                         {"label": "F16", "file": "m-F16.gguf"}]}
    text = "\n".join(run_section(manifest))
    assert "llama-server -hf <user>/m-GGUF:BF16\n" in text and "lms get <user>/m-GGUF@bf16" in text
    assert ("`-hf <user>/m-GGUF:F16` may also fetch `m-BF16.gguf` (llama.cpp takes the first file whose name holds "
            "F16 followed by '-' or '.'); ask for the file by name instead: `llama-server -hf <user>/m-GGUF --hf-file "
            "m-F16.gguf`.") in text
    assert "may also fetch `m-F16.gguf`" not in text and "`<user>/m-GGUF` stands for the repository" in text
