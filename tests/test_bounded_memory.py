"""Python stages work in blocks of rows: their peak memory is bounded by a constant, not by the model.

One synthetic GGUF holds a Q8_0 tensor of 110,000 × 4,096 values (479 MB on disk, 1.8 GB as
float32, 0.9 GB as F16), more than the 1.5 GB bound whole, and Llama-3's vocabulary size; the stages are run on it as the rules
run them, as subprocesses, and each one's peak RSS is read from ``wait4``. The file is written a
block at a time, so the test itself stays small too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.workflow_run import ROOT
from workflow_scripts.checksums import read_sidecar, write_sidecar

BOUND = 1_500_000_000  # bytes of peak RSS allowed to any Python stage, whatever the model
ROWS, COLS = 110_000, 4_096
NAME = "token_embd.weight"
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", 32)])


def big_q8_0_gguf(path: Path, rows: int = ROWS, cols: int = COLS, block_rows: int = 4_096) -> Path:
    """A GGUF with one Q8_0 tensor of ``rows`` × ``cols`` random values and a small F32 norm: the
    header by gguf-py's writer, the data a block of rows at a time (as gguf-py's writer pads it)."""
    from gguf import GGMLQuantizationType, GGUFWriter

    writer = GGUFWriter(path, "llama")
    # Llama-3's vocabulary: parsed by gguf-py's reader, these strings take about 0.5 GB of numpy
    # arrays; convert copies them as bytes (see the test).
    writer.add_token_list([f"tok{i:06d}" for i in range(128_256)])
    writer.add_token_merges([f"a{i} b{i}" for i in range(280_147)])
    writer.add_tensor_info(NAME, (rows, cols), np.dtype(np.float16), rows * cols // 32 * Q8_0_BLOCK.itemsize,
                           raw_dtype=GGMLQuantizationType.Q8_0)
    writer.add_tensor_info("output_norm.weight", (cols,), np.dtype(np.float32), cols * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    writer.write_padding(fout, fout.tell())
    rng = np.random.default_rng(16)
    for start in range(0, rows, block_rows):
        blocks = np.frombuffer(rng.bytes(min(block_rows, rows - start) * cols // 32 * Q8_0_BLOCK.itemsize),
                               dtype=Q8_0_BLOCK).copy()
        blocks["d"] = (blocks["d"].view(np.uint16) % 1000 + 1).astype(np.float16) / 16384  # finite scales
        blocks.tofile(fout)
    writer.write_padding(fout, rows * cols // 32 * Q8_0_BLOCK.itemsize)
    np.linspace(0.5, 1.5, cols, dtype=np.float32).tofile(fout)
    writer.close()
    return path


def imatrix_gguf(path: Path) -> Path:
    """An imatrix with one entry, for the big tensor: column sums 1 … 2 over a count of 4."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_tensor(f"{NAME}.in_sum2", np.linspace(1, 2, COLS, dtype=np.float32))
    writer.add_tensor(f"{NAME}.counts", np.array([4], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Starts the stage and prints its exit status and peak RSS (KiB). The stage is started from this
# small process, not from pytest's: Linux carries the peak RSS of the memory a process was forked
# with into its own figure when it execs, so a stage started by a pytest process that had grown to
# 600 MB would report at least 600 MB (seen after the tensor-error tests).
MEASURE = ("import os, subprocess, sys; proc = subprocess.Popen(sys.argv[1:], stderr=subprocess.STDOUT); "
           "_, status, usage = os.wait4(proc.pid, 0); "
           "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, file=sys.stderr)")


def run_measured(args: list[str], log: Path) -> int:
    """Run a stage as the rules do (``python -m ...`` in the project directory); its peak RSS in bytes."""
    with open(log, "w") as out:  # the stage's output (stdout and stderr) goes to the log
        proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, *args], cwd=ROOT, stdout=out,
                              stderr=subprocess.PIPE, text=True)
    returncode, peak_kib = map(int, proc.stderr.split()[-2:])
    assert returncode == 0, f"{args[1]} failed: {log.read_text()[-3000:]}"
    return peak_kib * 1024


def test_stages_stay_under_the_memory_bound_on_a_tensor_larger_than_it(tmp_path):
    from gguf.quants import dequantize

    from workflow_scripts.gguf_header import read_gguf_header
    from workflow_scripts.sources import source_manifest

    src = big_q8_0_gguf(tmp_path / "big-Q8_0.gguf")
    write_sidecar(src)
    stamp, manifest = tmp_path / "stamp.json", tmp_path / "source.json"
    stamp.write_text(json.dumps({"convert_script": None, "llama_cpp_commit": None}))
    manifest.write_text(json.dumps(source_manifest({"type": "gguf", "path": str(src)})))
    ref = tmp_path / "big-F16.gguf"
    peaks = {}
    peaks["convert"] = run_measured(
        ["-m", "workflow_scripts.convert", "--stamp", str(stamp), "--source-manifest", str(manifest),
         "--outtype", "F16", "--out", str(ref), "--record", str(tmp_path / "convert.json"),
         "--log", str(tmp_path / "convert.log")], tmp_path / "convert.out")
    peaks["tensor_error"] = run_measured(
        ["-m", "workflow_scripts.tensor_error", "--gguf", str(src), "--reference", str(ref), "--verify", str(src),
         "--verify", str(ref), "--threads", "4", "--out", str(tmp_path / "tensors.json")], tmp_path / "tensor_error.out")
    census = ("import json, sys; from pathlib import Path; from workflow_scripts.gguf_census import Recipe, census; "
              "print(json.dumps(census(Path(sys.argv[1]), Recipe('Q8_0'), '')))")
    peaks["census"] = run_measured(["-c", census, str(src)], tmp_path / "census.out")
    imatrix = imatrix_gguf(tmp_path / "imatrix.gguf")
    sensitivity = ("import json, sys; from pathlib import Path; from workflow_scripts.sensitivity import weighted_errors; "
                   "print(json.dumps(weighted_errors(*map(Path, sys.argv[1:]))))")
    peaks["sensitivity"] = run_measured(["-c", sensitivity, str(src), str(ref), str(imatrix)], tmp_path / "sensitivity.out")
    peaks["checksums"] = run_measured(["-m", "workflow_scripts.checksums", str(src), str(ref),
                                       "--out", str(tmp_path / "SHA256SUMS")], tmp_path / "checksums.out")
    assert max(peaks.values()) <= BOUND, {stage: f"{peak / 1e6:.0f} MB" for stage, peak in peaks.items()}
    # The metadata is copied as bytes, not parsed: 143 MB here (676 MB when gguf-py's reader parsed it).
    assert peaks["convert"] < 400e6, f"convert {peaks['convert'] / 1e6:.0f} MB"

    # The outputs are right: rows of the reference are gguf-py's dequantization of the source's
    # rows rounded to F16 (first, last and across a block boundary); the error and census agree.
    source, reference = read_gguf_header(src), read_gguf_header(ref)
    assert [(t.name, t.type.name) for t in reference.tensors.values()] == [(NAME, "F16"), ("output_norm.weight", "F32")]
    assert reference.metadata["general.file_type"] == 1 and len(reference.metadata["tokenizer.ggml.merges"]) == 280_147
    src_rows, ref_rows = stored_rows(source, NAME), stored_rows(reference, NAME)
    for row in (0, 1_023, 1_024, ROWS - 1):  # 1,024 rows a block
        want = dequantize(np.asarray(src_rows[row:row + 1]), source.tensors[NAME].type).astype(np.float16)
        assert np.array_equal(np.asarray(ref_rows[row:row + 1]).view(np.float16), want), row
    norm = stored_rows(reference, "output_norm.weight")
    assert np.array_equal(np.asarray(norm).view(np.float32).ravel(), np.linspace(0.5, 1.5, COLS, dtype=np.float32))
    [error] = json.loads((tmp_path / "tensors.json").read_text())["tensors"]
    assert error["name"] == NAME and error["n_elements"] == ROWS * COLS and 0 < error["rel_rms"] < 1e-3
    weighted = json.loads((tmp_path / "sensitivity.out").read_text())[NAME]
    assert weighted["weighted"] and weighted["n_elements"] == ROWS * COLS and weighted["type"] == "Q8_0"
    assert 0.25 * weighted["se"] <= weighted["wse"] <= 0.5 * weighted["se"] and weighted["se"] > 0  # v_j in [1/4, 1/2]
    census_out = json.loads((tmp_path / "census.out").read_text())
    assert census_out["parameters"] == ROWS * COLS + COLS and census_out["types"] == {"F32": 1, "Q8_0": 1}
    assert (tmp_path / "SHA256SUMS").read_text() == f"{read_sidecar(ref)}  {ref.name}\n{read_sidecar(src)}  {src.name}\n"


def stored_rows(header, name: str) -> np.ndarray:
    """A tensor's stored bytes memory-mapped as rows (the test's own view of the file, from the
    header's offsets, which test_gguf_header checks against gguf-py)."""
    tensor = header.tensors[name]
    row_bytes = tensor.n_bytes * tensor.shape[0] // tensor.n_elements
    return np.memmap(header.path, dtype=np.uint8, mode="r", offset=tensor.offset,
                     shape=(tensor.n_bytes // row_bytes, row_bytes))


def test_row_blocks_are_the_rows_read_a_block_at_a_time(tmp_path):
    from workflow_scripts.gguf_header import read_gguf_header

    header = read_gguf_header(big_q8_0_gguf(tmp_path / "small.gguf", rows=37, cols=256, block_rows=5))
    tensor = header.tensors[NAME]
    whole = np.asarray(stored_rows(header, NAME))
    for max_elements, sizes in ((10 * 256, [10, 10, 10, 7]), (100, [1] * 37), (1 << 22, [37])):
        blocks = list(header.row_blocks(tensor, max_elements))
        assert [len(b) for b in blocks] == sizes and np.array_equal(np.concatenate(blocks), whole)
