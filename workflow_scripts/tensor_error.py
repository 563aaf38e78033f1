"""Per-tensor quantization error: which tensors lost the most, so a user knows what to raise.

Each tensor the quant stores in another type than the reference is dequantized with gguf-py's
own dequantization and compared with the reference tensor: relative RMS error
``||dequantized - reference|| / ||reference||`` and the largest absolute error. Tensors kept in the
reference's type (1-D norms in F32) are skipped: they were not quantized. Rows are read in
blocks with file reads (not through a memory map, whose read pages count in RSS), so memory
stays at one block whatever the size of the largest tensor.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli

if TYPE_CHECKING:
    from workflow_scripts.gguf_header import GGUFHeader, TensorEntry

CHUNK_ELEMENTS = 1 << 22
# block_q1_0 (ggml-common.h): ggml_half d, uint8_t qs[16]; weight j is d where bit j (lowest bit
# first) is set, else -d (dequantize_row_q1_0 in ggml-quants.c). gguf 0.19.0 knows its size only.
Q1_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])


def dequantize(rows: np.ndarray, qtype) -> np.ndarray:
    """``rows`` (one matrix row per row, bytes for block types) as float32, by gguf-py's
    dequantization, or by the block layout for the types gguf-py cannot dequantize (Q1_0)."""
    from gguf.quants import dequantize as gguf_dequantize

    if qtype.name != "Q1_0":
        return gguf_dequantize(rows, qtype)
    blocks = np.ascontiguousarray(rows, dtype=np.uint8).view(Q1_0_BLOCK)
    d = blocks["d"].astype(np.float32)[..., None]
    signs = np.unpackbits(blocks["qs"], axis=-1, bitorder="little")
    return np.where(signs == 1, d, -d).reshape(*blocks.shape[:-1], -1)


def quantized_tensors(quant_header: GGUFHeader, ref_header: GGUFHeader) -> Iterator[tuple[TensorEntry, TensorEntry]]:
    """Every tensor of a quant (a GGUFHeader) stored in another type than in its reference's
    header, with the reference's entry; UserError for a tensor the reference lacks or holds with
    another element count or shape. Tensors of the reference's type (1-D F32 norms) were not
    quantized: left out."""
    quant, reference = quant_header.path, ref_header.path
    for tensor in quant_header.tensors.values():
        base = ref_header.tensors.get(tensor.name)
        if base is None:
            raise UserError(f"{quant}: tensor {tensor.name} is not in the reference {reference}")
        if int(base.n_elements) != int(tensor.n_elements):
            raise UserError(f"{quant}: tensor {tensor.name} has {tensor.n_elements} elements, the reference {reference} "
                            f"{base.n_elements}")
        if tensor.type == base.type:
            continue
        if tuple(tensor.shape) != tuple(base.shape):  # blocks of rows are compared one with one
            raise UserError(f"{quant}: tensor {tensor.name} has shape {list(tensor.shape)}, the reference {reference} "
                            f"{list(base.shape)}")
        yield tensor, base


def dequantized_blocks(quant_header: GGUFHeader, tensor: TensorEntry, ref_header: GGUFHeader,
                       base: TensorEntry) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One tensor of a quant and of its reference (``quantized_tensors``' pairs), dequantized a
    block of rows at a time as float64 (rows × row length), block for block: memory is one block."""
    for q_rows, r_rows in zip(quant_header.row_blocks(tensor, CHUNK_ELEMENTS),
                              ref_header.row_blocks(base, CHUNK_ELEMENTS), strict=True):
        yield dequantize(q_rows, tensor.type).astype(np.float64), dequantize(r_rows, base.type).astype(np.float64)


def tensor_errors(quant: Path, reference: Path, threads: int = 1) -> list[dict[str, Any]]:
    """Relative RMS and max absolute error of every quantized tensor of ``quant`` against
    ``reference``, in file order; ``threads`` tensors at a time (numpy works outside Python's lock
    on arrays this large), so memory is one block of rows per thread."""
    from concurrent.futures import ThreadPoolExecutor

    from workflow_scripts.gguf_header import read_gguf_header

    quant_header, ref_header = read_gguf_header(quant), read_gguf_header(reference)

    def error(pair: tuple[TensorEntry, TensorEntry]) -> dict[str, Any]:
        tensor, base = pair
        err2 = ref2 = max_abs = 0.0
        for got, want in dequantized_blocks(quant_header, tensor, ref_header, base):
            diff = (got - want).ravel()
            want = want.ravel()
            err2 += float(diff @ diff)
            ref2 += float(want @ want)
            max_abs = max(max_abs, float(np.abs(diff).max()))
        return {"name": tensor.name, "type": tensor.type.name, "n_elements": tensor.n_elements,
                "rel_rms": (err2 / ref2) ** 0.5 if ref2 else 0.0, "max_abs": max_abs}

    pairs = list(quantized_tensors(quant_header, ref_header))  # refused before any work when one is odd
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(error, pairs))


def role(name: str) -> str:
    """``blk.12.attn_v.weight`` → ``attn_v``: what a tensor is, whatever its layer."""
    return re.sub(r"^blk\.\d+\.", "", name).removesuffix(".weight")


def summarize(errors: list[dict[str, Any]], worst: int) -> dict[str, Any]:
    """Overall (element-weighted) error, per tensor type, per role, and the worst tensors."""
    def weighted(rows: list[dict]) -> float:
        total = sum(r["n_elements"] for r in rows)
        return (sum(r["rel_rms"] ** 2 * r["n_elements"] for r in rows) / total) ** 0.5 if total else 0.0

    by_type, by_role = defaultdict(list), defaultdict(list)
    for row in errors:
        by_type[row["type"]].append(row)
        by_role[role(row["name"])].append(row)
    return {
        "rel_rms": weighted(errors),
        "by_type": {t: {"tensors": len(rows), "elements": sum(r["n_elements"] for r in rows), "rel_rms": weighted(rows)}
                    for t, rows in sorted(by_type.items())},
        "by_role": {r: {"tensors": len(rows), "mean_rel_rms": sum(x["rel_rms"] for x in rows) / len(rows),
                        "max_rel_rms": max(x["rel_rms"] for x in rows)} for r, rows in sorted(by_role.items())},
        "worst": sorted(errors, key=lambda r: r["rel_rms"], reverse=True)[:worst],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    parser.add_argument("--worst", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="tensors compared at a time")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    for path in ns.verify:
        verify(path)
    errors = tensor_errors(ns.gguf, ns.reference, ns.threads)
    result = {"quant_file": ns.gguf.name, "reference_file": ns.reference.name, "summary": summarize(errors, ns.worst),
              "tensors": errors}
    atomic_write_text(ns.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
