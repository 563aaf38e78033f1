"""Split GGUF sources (llama-gguf-split parts named by the first): checked at plan time, every part
in the source manifest, and the reference made from all parts equal to the unsplit file's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.stub_sources import small_gguf
from tests.workflow_run import CALIBRATION, ROOT
from workflow_scripts.checksums import sha256_file
from workflow_scripts.config import build_plan
from workflow_scripts.errors import UserError
from workflow_scripts.gguf_split import source_parts
from workflow_scripts.sources import source_manifest


def _split(toolchain_bin: Path, src: Path, prefix: Path, tensors: int = 1) -> list[Path]:
    """``src`` cut by the pinned llama-gguf-split into ``tensors`` tensors per part (1: three parts)."""
    subprocess.run([str(toolchain_bin / "llama-gguf-split"), "--split", "--split-max-tensors", str(tensors), str(src),
                    str(prefix)], check=True, capture_output=True)
    return sorted(prefix.parent.glob(f"{prefix.name}-*-of-*.gguf"))


def _convert_cli(tmp: Path, stamp: Path, source: dict, outtype: str = "F16") -> tuple[Path, dict]:
    """The source step and the convert step as the rules call them; the reference and its record."""
    manifest = tmp / "source.json"
    manifest.write_text(json.dumps(source_manifest(source)))
    out = tmp / f"m-{outtype}.gguf"
    subprocess.run([sys.executable, "-m", "workflow_scripts.convert", "--stamp", str(stamp), "--source-manifest",
                    str(manifest), "--outtype", outtype, "--out", str(out), "--record", str(tmp / "record.json"),
                    "--log", str(tmp / "convert.log")], check=True, cwd=ROOT)
    return out, json.loads((tmp / "record.json").read_text())


@pytest.mark.parametrize("weight_type", ["Q8_0", "F16"])  # dequantized, and copied as is
def test_split_source_gives_the_unsplit_files_reference(tmp_path, toolchain_bin, toolchain_stamp, weight_type):
    whole = small_gguf(tmp_path / "whole.gguf", weight_type)
    parts = _split(toolchain_bin, whole, tmp_path / "m")
    assert [p.name for p in parts] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert source_parts(parts[0]) == parts

    manifest = source_manifest({"type": "gguf", "path": str(parts[0])})
    assert [(f["path"], f["sha256"]) for f in manifest["files"]] == [(str(p), sha256_file(p)) for p in parts]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    from_split, record = _convert_cli(tmp_path / "a", toolchain_stamp, {"type": "gguf", "path": str(parts[0])})
    from_whole, _ = _convert_cli(tmp_path / "b", toolchain_stamp, {"type": "gguf", "path": str(whole)})
    assert sha256_file(from_split) == sha256_file(from_whole)
    # An F16 split is joined (the unsplit F16 file is copied: the same bytes), a Q8_0 one dequantized.
    assert record["source_parts"] == 3 and record["method"] == ("join" if weight_type == "F16" else "dequantize")
    assert not list((tmp_path / "a").glob(".*"))  # no scratch file left behind


def test_damaged_or_incomplete_splits_are_refused_naming_the_part(tmp_path, toolchain_bin, monkeypatch):
    parts = _split(toolchain_bin, small_gguf(tmp_path / "whole.gguf"), tmp_path / "m")
    with pytest.raises(UserError, match="part 2 of a split GGUF; name the first part instead"):
        source_parts(parts[1])
    data = parts[2].read_bytes()
    parts[2].write_bytes(data[:-8])
    with pytest.raises(UserError, match="m-00003-of-00003.gguf: truncated GGUF"):
        source_parts(parts[0])
    parts[2].unlink()
    with pytest.raises(UserError, match="part m-00003-of-00003.gguf is missing"):
        source_parts(parts[0])
    # The last part of another split (in two) left in the folder under this split's name.
    other = _split(toolchain_bin, small_gguf(tmp_path / "other.gguf", "F16"), tmp_path / "o", tensors=2)
    other[1].rename(parts[2])
    with pytest.raises(UserError, match="says it is part 1 of 2 .* expected part 2 of 3 with 3"):
        source_parts(parts[0])
    # The plan refuses it before any job starts, naming the field.
    monkeypatch.chdir(tmp_path)
    parts[2].unlink()
    (tmp_path / "cal.txt").write_text(CALIBRATION.read_text())
    config = {"calibration": {"text": "cal.txt"}, "models": [{"name": "a", "source": {"type": "gguf", "path": parts[0].name}}]}
    with pytest.raises(UserError, match=r"c.yaml: models\[0\].source.path: .*part m-00003-of-00003.gguf is missing"):
        build_plan(config, "c.yaml")


def test_split_source_through_the_rules(tmp_path, tiny_f16, toolchain_root):
    """Scenario ``split-gguf``: the tiny model's F16 in three parts goes through the source, convert,
    tokenizer-parity and quantize rules; the reference is the unsplit file, every part is recorded."""
    from gguf import GGUFReader

    from tests.workflow_run import scenario, snakemake

    config = scenario("split-gguf", tmp_path)
    per_part = -(-len(GGUFReader(tiny_f16).tensors) // 3)
    (tmp_path / "tiny-split").mkdir()
    parts = _split(toolchain_root / "build" / "bin", tiny_f16, tmp_path / "tiny-split" / "tiny", per_part)
    assert len(parts) == 3
    snakemake(tmp_path, config, "results/tiny/checks/tokenizer_parity.json", "results/tiny/quant/tiny-Q8_0.gguf")
    results = tmp_path / "results" / "tiny"
    manifest = json.loads((results / "source" / "source.json").read_text())
    assert [(Path(f["path"]).name, f["sha256"]) for f in manifest["files"]] == [(p.name, sha256_file(p)) for p in parts]
    reference = results / "reference" / "tiny-F16.gguf"
    assert sha256_file(reference) == sha256_file(tiny_f16)
    assert json.loads((results / "reference" / "tiny-F16.convert.json").read_text())["source_parts"] == 3
    assert json.loads((results / "checks" / "tokenizer_parity.json").read_text())


def _sparse_part(path: Path, number: int, count: int, rows: int) -> Path:
    """A GGUF part with one F16 tensor of ``rows`` × 2^20 (2 MiB a row) whose data is a hole in a
    sparse file: a header of a very large model, written in milliseconds."""
    from gguf import GGMLQuantizationType, GGUFWriter

    writer = GGUFWriter(path, "llama")
    if number == 0:
        writer.add_name("large")
    writer.add_uint16("split.no", number)
    writer.add_uint16("split.count", count)
    writer.add_int32("split.tensors.count", count)
    writer.add_tensor_info(f"blk.{number}.ffn_up.weight", (rows, 1 << 20), np.dtype(np.float16), rows << 21,
                           raw_dtype=GGMLQuantizationType.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    start = -(-path.stat().st_size // 32) * 32
    with open(path, "r+b") as handle:
        handle.truncate(start + (rows << 21))
    return path


def test_headers_of_parts_and_files_over_50_gb(tmp_path):
    """Offsets and sizes past 2^32 (and past the Hub's 50 GB per file) are read as they are: a
    30 GB part and a 60 GB whole file pass the plan-time checks; one byte short is refused."""
    from gguf import GGUFReader

    from workflow_scripts.gguf_header import read_gguf_header
    from workflow_scripts.resources import reference_mb

    parts = [_sparse_part(tmp_path / f"big-0000{i + 1}-of-00002.gguf", i, 2, 15_000) for i in range(2)]
    assert parts[0].stat().st_size > 30e9 and parts[0].stat().st_blocks * 512 < 1e6  # sparse indeed
    assert source_parts(parts[0]) == parts
    assert reference_mb("gguf", list(map(str, parts))) > 4 * 60e3  # sized from every part
    whole = _sparse_part(tmp_path / "whole.gguf", 0, 1, 30_000)  # split.count 1: a file of its own
    header = read_gguf_header(whole)
    assert header.data_end == whole.stat().st_size > 60e9
    assert source_parts(whole) == [whole]
    assert GGUFReader(whole).tensors[0].data.nbytes == whole.stat().st_size - header.tensors["blk.0.ffn_up.weight"].offset
    with open(parts[1], "r+b") as handle:
        handle.truncate(parts[1].stat().st_size - 1)
    with pytest.raises(UserError, match="big-00002-of-00002.gguf: truncated GGUF"):
        source_parts(parts[0])
