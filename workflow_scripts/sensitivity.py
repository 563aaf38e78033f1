"""How much each tensor's quantization costs, for auto builds: the weighted error of every tensor at
each menu type (``measure``), and real KL-divergence probes per tensor group (``probe``).

measure: ``llama-quantize --pure --imatrix`` of the reference to one menu tensor type (through the
first file type named after it: Q4_K → Q4_K_S), to a temporary file beside the record. With --pure
every quantizable tensor gets that type, except where its row length is not a multiple of the
type's block: llama-quantize's tensor_type_fallback then gives a 32-value-block type (Q4_K → Q5_0
on 576-wide rows), so each tensor's ACTUAL type is read from the file and recorded with its exact
bytes. A tensor whose rows the menu type's block does not divide, where that fallback type is
itself on the menu, is kept in the reference's type (a --tensor-type-file override) and recorded as
``borrowed``: the fallback type's own record measures it (the same quantization with the same
imatrix), and ``complete_records`` copies that entry in when the records are read (IQ4_XS beside
IQ4_NL on Gemma-3's 262,144 × 640 embedding: 26 s of llama-quantize saved). For every tensor stored
in another type than the reference's, quant and reference are read a block of rows at a time
(workflow_scripts/tensor_error.py's walk: memory is one block) and

    wse = sum over rows i and columns j of  v_j * (q_ij - r_ij)^2

with v_j = in_sum2_j / count, the importance of input column j that llama-imatrix measured (for an
expert tensor, expert e's own row and count). That is the error llama-quantize itself minimises
with the imatrix (tools/quantize/quantize.cpp, load_imatrix: the same in_sum2 / count, 1 where the
count is 0). A tensor without an entry (token_embd: a lookup, not a matmul) or a matrix with a zero
count is weighted 1 and recorded ``weighted: false``. ``ref_wse`` is the same weighting of r^2, so
wse / ref_wse is a relative error.

probe: KLD measured for real on the CALIBRATION text (the evaluation text must stay unseen by the
choice of types): "base" has every quantized tensor at its largest option among the records
(usually Q8_0); one probe per tensor group (tensor_error.role: attn_q, ffn_down, token_embd, ...)
lowers that group's tensors to their smallest option and keeps the rest as in base. A probe is
llama-quantize --pure with a --tensor-type-file naming every tensor (anchored patterns), a check
that each tensor got the asked type, and llama-perplexity --kl-divergence against the reference's
calibration logits (validate.measure_quant); its GGUF is deleted after each probe.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import sidecar_path, verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_census import read_tensor_types, tensor_pattern_problem
from workflow_scripts.gguf_header import GGUFHeader, TensorEntry, read_gguf_header
from workflow_scripts.imatrix import read_counts
from workflow_scripts.quant_types import BASE_TYPE, ROW_FALLBACK, block_size
from workflow_scripts.tensor_error import dequantized_blocks, quantized_tensors, role
from workflow_scripts.tool_step import run_tool
from workflow_scripts.validate import measure_quant

PROBE_FTYPE = "Q8_0"  # a probe's file type: every tensor is named in its tensor-type file anyway



def tensor_type_lines(types: dict[str, str]) -> str:
    """A --tensor-type-file that gives each named tensor its type: one ``PATTERN=type`` per line,
    PATTERN the name anchored and escaped (``^blk\\.0\\.attn_q\\.weight$``), so that it matches that
    tensor only (llama-quantize takes the first pattern that std::regex_search finds in a name).
    UserError for a name no such pattern can name (llama-quantize lower-cases patterns)."""
    lines = []
    for name, ttype in types.items():
        pattern = f"^{re.escape(name)}$"
        problem = tensor_pattern_problem(pattern) or (
            None if name == name.lower() else "llama-quantize lower-cases the pattern, so it would not match")
        if problem:
            raise UserError(f"tensor {name}: cannot be named in a --tensor-type-file as {pattern} ({problem})")
        lines.append(f"{pattern}={ttype.lower()}\n")
    return "".join(lines)


def menu_ftype(menu_type: str) -> str:
    """The llama-quantize file type that gives tensors ``menu_type`` under --pure: the first file
    type named after it (quant_types.BASE_TYPE, in the schema's order: Q4_K → Q4_K_S)."""
    for ftype, base in BASE_TYPE.items():
        if base == menu_type:
            return ftype
    raise UserError(f"menu type {menu_type!r}: no llama-quantize file type gives it; expected one of "
                    f"{', '.join(sorted(set(BASE_TYPE.values())))}")


def importance(imatrix: GGUFHeader, counts: dict[str, list[int]], tensor: TensorEntry) -> tuple[np.ndarray, bool]:
    """v for ``tensor``: one row of column weights per matrix (expert), in_sum2 / count from the
    imatrix, 1 where the count is 0 or the tensor has no entry (as llama-quantize weighs them); and
    whether every matrix was weighted by data."""
    n_cols, n_mat = tensor.shape[0], int(np.prod(tensor.shape[2:], dtype=np.int64))
    entry = imatrix.tensors.get(f"{tensor.name}.in_sum2")
    if entry is None or tensor.name not in counts:
        return np.ones((n_mat, n_cols)), False
    count = np.asarray(counts[tensor.name], dtype=np.float64)
    sums = np.concatenate(list(imatrix.row_blocks(entry))).view(np.float32).astype(np.float64).ravel()
    if len(count) != n_mat or sums.size != n_mat * n_cols:
        raise UserError(f"{imatrix.path}: entry {tensor.name} has {sums.size} sums and {len(count)} counts; expected "
                        f"{n_mat} × {n_cols} sums and {n_mat} counts (the tensor's shape {list(tensor.shape)})")
    sums = sums.reshape(n_mat, n_cols)
    weights = np.where(count[:, None] > 0, sums / np.where(count > 0, count, 1)[:, None], 1.0)
    return weights, bool((count > 0).all())


def weighted_errors(quant: Path, reference: Path, imatrix: Path) -> dict[str, dict[str, Any]]:
    """For every tensor ``quant`` stores in another type than ``reference``: its type, exact bytes,
    elements, shape, the imatrix-weighted squared error ``wse`` against the reference, ``ref_wse``
    (the same weighting of the reference's squares), the unweighted ``se`` and ``ref_se``, and
    whether the imatrix weighted it. Read a block of rows at a time."""
    quant_header, ref_header, imx = read_gguf_header(quant), read_gguf_header(reference), read_gguf_header(imatrix)
    counts = read_counts(imx)
    found = {}
    for tensor, base in quantized_tensors(quant_header, ref_header):
        weights, weighted = importance(imx, counts, tensor)
        per_mat = tensor.shape[1] if len(tensor.shape) > 1 else 1  # rows of one matrix (expert)
        err2, ref2 = np.zeros_like(weights), np.zeros_like(weights)
        start = 0
        for got, want in dequantized_blocks(quant_header, tensor, ref_header, base):
            stop = start + len(got)
            for mat in range(start // per_mat, (stop - 1) // per_mat + 1):  # the matrices this block spans
                lo, hi = max(start, mat * per_mat) - start, min(stop, (mat + 1) * per_mat) - start
                err2[mat] += np.square(got[lo:hi] - want[lo:hi]).sum(axis=0)
                ref2[mat] += np.square(want[lo:hi]).sum(axis=0)
            start = stop
        found[tensor.name] = {"type": tensor.type.name, "n_bytes": tensor.n_bytes, "n_elements": tensor.n_elements,
                              "shape": list(tensor.shape), "wse": float((weights * err2).sum()),
                              "ref_wse": float((weights * ref2).sum()), "se": float(err2.sum()),
                              "ref_se": float(ref2.sum()), "weighted": weighted}
    return found


def check_fallbacks(tensors: dict[str, dict], menu_type: str, made: str) -> None:
    """UserError unless every quantized tensor got ``menu_type``, its row fallback, or F16 (rows
    that not even a 32-value block divides): anything else means --pure did not take effect."""
    allowed = {menu_type, ROW_FALLBACK.get(menu_type, menu_type), "F16"}
    wrong = {name: t["type"] for name, t in tensors.items() if t["type"] not in allowed}
    if wrong:
        sample = ", ".join(f"{name}: {ttype}" for name, ttype in list(wrong.items())[:5])
        raise UserError(f"{made}: {len(wrong)} tensors are not of type {menu_type} or its fallback ({sample}); expected "
                        "llama-quantize --pure to give every quantized tensor the menu type")


def borrowed_tensors(reference: GGUFHeader, menu_type: str, menu: list[str]) -> dict[str, str]:
    """{tensor: fallback type} for each F16/BF16 matrix of ``reference`` whose row length
    ``menu_type``'s block does not divide (so llama-quantize would give it ROW_FALLBACK's type) and
    that type's block does, where that type is itself on ``menu``: its own record measures it."""
    fallback = ROW_FALLBACK.get(menu_type)
    if fallback is None or fallback not in menu:
        return {}
    return {tensor.name: fallback for tensor in reference.tensors.values()
            if len(tensor.shape) >= 2 and tensor.type.name in ("F16", "BF16")
            and tensor.shape[0] % block_size(menu_type) and not tensor.shape[0] % block_size(fallback)}


def complete_records(records: dict[Any, dict]) -> dict[Any, dict]:
    """The records with each ``borrowed`` tensor's entry copied from the record of its fallback type
    (a tensor absent there was not quantized at that type either, so at none). UserError when that
    record is not among ``records``. A record without ``menu_type`` or ``tensors`` is left as it is,
    for the caller's checks to name."""
    by_type = {r["menu_type"]: r for r in records.values() if isinstance(r, dict) and "menu_type" in r}
    complete = {}
    for key, record in records.items():
        borrowed = record.get("borrowed", {}) if isinstance(record, dict) else {}
        if not borrowed or not isinstance(record.get("tensors"), dict):
            complete[key] = record
            continue
        tensors = dict(record["tensors"])
        for name, fallback in borrowed.items():
            lender = by_type.get(fallback)
            if lender is None or not isinstance(lender.get("tensors"), dict):
                raise UserError(f"{key}: tensor {name} is borrowed from the record of {fallback}, which is not among "
                                f"the sensitivity records ({', '.join(sorted(by_type))}); expected the records of the "
                                "whole menu")
            if name in lender["tensors"]:
                tensors[name] = lender["tensors"][name]
        complete[key] = {**record, "tensors": tensors}
    return complete


def measure(stamp: Path, reference: Path, imatrix: Path, menu_type: str, threads: int, out: Path, log: Path,
            verify_paths: list[Path], menu: list[str] | None = None) -> dict[str, Any]:
    """Quantize ``reference`` to ``menu_type`` (--pure, with the imatrix) beside ``out``, record each
    quantized tensor's actual type, bytes and weighted error in ``out``; the quant is deleted. The
    tensors ``borrowed_tensors`` names for ``menu`` stay in the reference's type and are recorded as
    borrowed."""
    ftype = menu_ftype(menu_type)
    tmp = out.with_name(out.name + ".tmp.gguf")
    keep = out.with_name(out.name + ".borrowed.txt")
    ref_header = read_gguf_header(reference)
    borrowed = borrowed_tensors(ref_header, menu_type, menu or [])
    started = time.monotonic()
    log.unlink(missing_ok=True)
    try:
        overrides = []
        if borrowed:
            atomic_write_text(keep, tensor_type_lines({name: ref_header.tensors[name].type.name for name in borrowed}))
            overrides = ["--tensor-type-file", str(keep)]
        run_tool(stamp, "llama-quantize", ["--pure", "--imatrix", str(imatrix), *overrides, str(reference), "{out}",
                                           ftype, str(threads)], tmp, log, verify_paths)
        tensors = weighted_errors(tmp, reference, imatrix)
    finally:
        tmp.unlink(missing_ok=True)
        sidecar_path(tmp).unlink(missing_ok=True)
        keep.unlink(missing_ok=True)
    made = f"llama-quantize --pure of {reference} to {ftype}"
    kept = sorted(set(borrowed) & set(tensors))
    if kept:
        raise UserError(f"{made}: {len(kept)} tensors kept in the reference's type by the tensor-type file were "
                        f"quantized ({', '.join(kept[:5])}); expected llama-quantize to apply every override")
    if not tensors and not borrowed:
        raise UserError(f"{made}: no tensor changed type; expected a reference of F16/BF16 matrices and a quantized "
                        "menu type")
    check_fallbacks(tensors, menu_type, made)
    record = {"menu_type": menu_type, "ftype": ftype, "reference": reference.name, "imatrix": imatrix.name,
              "seconds": round(time.monotonic() - started, 3), "tensors": tensors, "borrowed": borrowed}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    with open(log, "a") as handle:
        fell_back = sum(t["type"] != menu_type for t in tensors.values())
        handle.write(f"{out}: {len(tensors)} tensors measured at {menu_type} ({fell_back} fell back to another type), "
                     f"{len(borrowed)} borrowed from the record of {ROW_FALLBACK.get(menu_type)} "
                     f"in {record['seconds']} s\n")
    return record


def tensor_options(records: dict[Any, dict]) -> dict[str, dict[str, tuple[int, float]]]:
    """Per tensor, (bytes, weighted error) of each distinct actual type the measure records (keyed
    by a name for messages) give it. Two records that gave a tensor the same actual type (Q4_K's
    fallback Q5_0 and Q5_0 itself) must agree on its bytes; their errors are averaged (the same
    quantization with the same imatrix: equal up to rounding). UserError unless every record
    covers the same tensors (records of one reference)."""
    names, first = None, None
    seen: dict[str, dict[str, tuple[int, list[float], Any]]] = defaultdict(dict)
    for key, record in records.items():
        if names is None:
            names, first = set(record["tensors"]), key
        elif set(record["tensors"]) != names:
            odd = sorted(names.symmetric_difference(record["tensors"]))
            raise UserError(f"{key}: its tensors differ from those of {first} ({', '.join(odd[:5])}); expected "
                            "sensitivity records of one reference and imatrix")
        for name, tensor in record["tensors"].items():
            n_bytes, errors, by = seen[name].setdefault(tensor["type"], (tensor["n_bytes"], [], key))
            if n_bytes != tensor["n_bytes"]:
                raise UserError(f"sensitivity records {by} and {key} disagree on the bytes of {name} as "
                                f"{tensor['type']} ({n_bytes} and {tensor['n_bytes']}); expected records of one "
                                "reference and one llama.cpp")
            errors.append(float(tensor["wse"]))
    if not seen:
        raise UserError("no sensitivity records with tensors; expected at least one --sensitivity record")
    return {name: {t: (nb, sum(w) / len(w)) for t, (nb, w, _) in types.items()} for name, types in seen.items()}


def probe_plan(options: dict[str, dict[str, tuple[int, float]]]) -> dict[str, dict[str, str]]:
    """The probes' tensor types: "base" (every tensor at its largest option) and, per group, that
    group's tensors at their smallest option with the rest as in base; of two types of equal bytes
    (Q4_0 and IQ4_NL) the one with the smaller weighted error, which a recipe would choose. A group
    whose tensors have one option only changes nothing: it gets no probe."""
    base = {name: max(types, key=lambda t: (types[t][0], -types[t][1])) for name, types in options.items()}
    plan = {"base": base}
    groups = defaultdict(list)
    for name in options:
        groups[role(name)].append(name)
    for group, names in groups.items():
        lowest = {name: min(options[name], key=options[name].get) for name in names}
        if any(lowest[name] != base[name] for name in names):
            plan[group] = {**base, **lowest}
    return plan


def check_types(gguf: Path, types: dict[str, str]) -> None:
    """UserError unless every tensor of ``types`` has that type in ``gguf`` (an override that did
    not take effect would measure another mixture than the one recorded)."""
    found = read_tensor_types(gguf)
    wrong = [f"{name}: {found[name].type if name in found else 'missing'}, asked {ttype}"
             for name, ttype in types.items() if name not in found or found[name].type != ttype]
    if wrong:
        raise UserError(f"{gguf}: {len(wrong)} tensors did not get the type asked in the tensor-type file "
                        f"({'; '.join(wrong[:5])}); expected llama-quantize to apply every override")


def run_probe(stamp: Path, reference: Path, imatrix: Path, logits: Path, types: dict[str, str], threads: int,
              gpu_layers: int, tmp: Path, types_file: Path, quantize_log: Path, kld_log: Path) -> dict[str, Any]:
    """One probe: quantize with ``types`` to ``tmp``, check the types, measure the KLD; the quant
    and its tensor-type file are deleted whatever happens."""
    try:
        atomic_write_text(types_file, tensor_type_lines(types))
        quantize_log.unlink(missing_ok=True)
        run_tool(stamp, "llama-quantize", ["--pure", "--imatrix", str(imatrix), "--tensor-type-file", str(types_file),
                                           str(reference), "{out}", PROBE_FTYPE, str(threads)], tmp, quantize_log, [])
        check_types(tmp, types)
        figures = measure_quant(stamp, tmp, logits, threads, kld_log, [], gpu_layers)
    finally:
        tmp.unlink(missing_ok=True)
        sidecar_path(tmp).unlink(missing_ok=True)
        types_file.unlink(missing_ok=True)
    return figures


def probe(stamp: Path, reference: Path, imatrix: Path, records: dict[Path, dict], logits: Path, threads: int,
          out: Path, log: Path, verify_paths: list[Path], gpu_layers: int = 0) -> dict[str, Any]:
    """Measure the base probe and one probe per group (``probe_plan``) on the calibration logits;
    write the record to ``out``. Logs: ``log`` (progress), and per probe ``<log stem>.<probe>.quantize.log``
    and ``.kld.log`` beside it."""
    for path in verify_paths:
        verify(path)
    started = time.monotonic()
    options = tensor_options(records)
    plan = probe_plan(options)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    result: dict[str, Any] = {"base": None, "groups": {}}
    for number, (name, types) in enumerate(plan.items(), 1):
        quantize_log = log.with_name(f"{log.stem}.{name}.quantize.log")
        kld_log = log.with_name(f"{log.stem}.{name}.kld.log")
        lowered = sum(types[t] != plan["base"][t] for t in types)
        line = (f"probe {number}/{len(plan)} {name}: {lowered} tensors lowered from base; logs {quantize_log}, "
                f"{kld_log}")
        print(line, flush=True)
        with open(log, "a") as handle:
            handle.write(line + "\n")
        figures = run_probe(stamp, reference, imatrix, logits, types, threads, gpu_layers,
                            out.with_name(f"{out.name}.{name}.tmp.gguf"),
                            out.with_name(f"{out.stem}.{name}.tensor-types.txt"), quantize_log, kld_log)
        entry = {"tensors": types, "n_bytes": sum(options[t][ttype][0] for t, ttype in types.items()), **figures}
        if name == "base":
            result["base"] = entry
        else:
            result["groups"][name] = entry
        with open(log, "a") as handle:
            handle.write(f"probe {name}: mean KLD {figures['kld_mean']}, {entry['n_bytes']} tensor bytes\n")
    result["seconds"] = round(time.monotonic() - started, 3)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sensitivity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    meas = sub.add_parser("measure", help="weighted error of every tensor at one menu tensor type")
    meas.add_argument("--type", required=True, help="the menu tensor type (Q4_K, Q8_0, IQ4_XS, ...)")
    meas.add_argument("--menu", nargs="*", default=[],
                      help="the whole menu: tensors that fall back to another menu type are borrowed from its record")
    prob = sub.add_parser("probe", help="KLD of the base mixture and of each group lowered, on the calibration text")
    prob.add_argument("--sensitivity", type=Path, action="append", required=True,
                      help="a measure record (one per menu type; repeat)")
    prob.add_argument("--logits", type=Path, required=True, help="the reference's logits on the calibration text")
    prob.add_argument("--gpu-layers", type=int, default=0, help="layers llama-perplexity offloads to the GPU (-ngl)")
    for command in (meas, prob):
        command.add_argument("--stamp", type=Path, required=True, help="the toolchain's stamp (llama.cpp.json)")
        command.add_argument("--reference", type=Path, required=True, help="the F16/BF16 reference GGUF")
        command.add_argument("--imatrix", type=Path, required=True, help="the model's imatrix (GGUF)")
        command.add_argument("--threads", type=int, default=1)
        command.add_argument("--verify", type=Path, action="append", default=[],
                             help="input whose .sha256 sidecar must match before anything runs")
        command.add_argument("--log", type=Path, required=True)
        command.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    if ns.command == "measure":
        measure(ns.stamp, ns.reference, ns.imatrix, ns.type, ns.threads, ns.out, ns.log, ns.verify, ns.menu)
    else:
        records = complete_records({path: json.loads(path.read_text()) for path in ns.sensitivity})
        probe(ns.stamp, ns.reference, ns.imatrix, records, ns.logits, ns.threads, ns.out, ns.log, ns.verify,
              ns.gpu_layers)


if __name__ == "__main__":
    run_cli(main)
