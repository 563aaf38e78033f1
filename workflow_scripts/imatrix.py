"""The importance matrix step, and how much of a mixture-of-experts model's experts it covered.

With top-k routing a calibration text can leave experts without a single token. llama-imatrix then
writes "partial data" for each expert tensor (``ffn_*_exps``: one matrix per expert): a zero count
for those experts. llama-quantize quantizes them with uniform importance weights, as if there were
no imatrix (tools/quantize/quantize.cpp of the pinned llama.cpp fills 1 where a count is 0); a type
that needs an imatrix gets no error for them, just no benefit.

The coverage is read exactly from the imatrix file the pinned tool writes (GGUF, one
``<tensor>.counts`` F32 tensor per entry, one count of tokens per expert), for every expert tensor
of the reference (an expert tensor with no entry at all counts as covered by none), checked against
the tool's own warnings in its log, and recorded beside the imatrix. A gate
(``min_expert_coverage``) can fail the builds made with an imatrix whose worst expert tensor is
covered less than that share.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_header import GGUFHeader, read_gguf_header
from workflow_scripts.tool_step import run_tool, step_arguments

# tools/imatrix/imatrix.cpp, save_imatrix (GGUF format): written at every save (each
# --output-frequency chunks and at the end) for each entry with a zero count, the name padded to 40.
PARTIAL = re.compile(r"save_imatrix: entry '\s*(?P<name>\S+)' has partial data \((?P<pct>[0-9.]+)%\)")


def is_expert_tensor(name: str, shape: tuple[int, ...]) -> bool:
    """A routed experts' weight: 3-D (one matrix per expert), named ``*_exps.weight`` (llama.cpp's
    ``ffn_gate_exps``, ``ffn_up_exps``, ``ffn_down_exps``, ``ffn_gate_up_exps``); a shared expert
    (``*_shexp``) is an ordinary 2-D weight every token goes through."""
    return len(shape) == 3 and name.endswith("_exps.weight")


def read_counts(header: GGUFHeader) -> dict[str, list[int]]:
    """Tokens counted per matrix for every entry of a GGUF imatrix (its header; one count for an
    ordinary weight, one per expert for an expert tensor), by the weight's name."""
    counts = {}
    for name, tensor in header.tensors.items():
        if name.endswith(".counts"):
            values = np.concatenate(list(header.row_blocks(tensor))).view(np.float32).ravel()
            counts[name.removesuffix(".counts")] = [int(v) for v in values]
    if not counts:
        raise UserError(f"{header.path}: no '<tensor>.counts' entries; expected an imatrix written by llama-imatrix "
                        "--output-format gguf")
    return counts


def partial_warnings(log_text: str) -> dict[str, float]:
    """llama-imatrix's "entry '...' has partial data (P%)" warnings: the share of experts with data
    in percent, by tensor, as the last save printed it. The workflow has the tool save once, at the
    end (rules/common.smk, imatrix_params): an intermediate save saw fewer chunks, and a tensor it
    warned about that the final save covered fully would still be here."""
    return {m["name"]: float(m["pct"]) for m in PARTIAL.finditer(log_text)}


def expert_coverage(reference: Path | str, imatrix: Path | str, log_text: str) -> dict[str, Any]:
    """Per expert tensor of ``reference``: how many of its experts got activations in ``imatrix``,
    which did not; the lowest coverage; and whether llama-imatrix's own warnings say the same
    (``log_agrees``; the disagreements listed). A dense model has no expert tensors: coverage None."""
    ref = read_gguf_header(reference)
    imx = read_gguf_header(imatrix)
    counts = read_counts(imx)
    arch = ref.metadata.get("general.architecture")
    tensors, missing = [], []
    for name, tensor in ref.tensors.items():
        if not is_expert_tensor(name, tensor.shape):
            continue
        n_expert = tensor.shape[2]
        if name not in counts:
            missing.append(name)
            tensors.append({"name": name, "experts": n_expert, "experts_with_data": 0, "coverage": 0.0,
                            "without_data": list(range(n_expert))})
            continue
        if len(counts[name]) != n_expert:
            raise UserError(f"{imatrix}: entry {name} has {len(counts[name])} counts; expected one per expert "
                            f"({n_expert}, as in {reference})")
        without = [e for e, count in enumerate(counts[name]) if count == 0]
        tensors.append({"name": name, "experts": n_expert, "experts_with_data": n_expert - len(without),
                        "coverage": round((n_expert - len(without)) / n_expert, 6), "without_data": without})
    warned = partial_warnings(log_text)
    expected = {t["name"]: round(100 * t["coverage"], 2) for t in tensors
                if t["without_data"] and t["name"] not in missing}
    disagreements = [f"{name}: counts give {expected.get(name, 100.0)} %, the log {warned.get(name, 'no warning')}"
                     for name in sorted(set(expected) | set(warned))
                     if name not in expected or name not in warned or abs(expected[name] - warned[name]) > 0.01]
    return {
        "imatrix": str(imatrix),
        "chunks": imx.metadata.get("imatrix.chunk_count"),
        "chunk_size": imx.metadata.get("imatrix.chunk_size"),
        "experts": ref.metadata.get(f"{arch}.expert_count"),
        "experts_used": ref.metadata.get(f"{arch}.expert_used_count"),
        "expert_tensors": len(tensors),
        "fully_covered": sum(not t["without_data"] for t in tensors),
        "min_coverage": min((t["coverage"] for t in tensors), default=None),
        "missing": missing,
        "tensors": tensors,
        "log_partial": warned,
        "log_agrees": not disagreements,
        "log_disagreements": disagreements,
    }


def worst_tensor(record: dict) -> dict | None:
    """The expert tensor with the lowest coverage (the first of equals, in file order)."""
    return min(record["tensors"], key=lambda t: t["coverage"], default=None)


def coverage_reasons(record: dict, gate: dict) -> list[str]:
    """Why a build made with this imatrix fails ``gate``'s ``min_expert_coverage`` (none without
    that threshold or without expert tensors)."""
    limit = gate.get("min_expert_coverage")
    worst = worst_tensor(record)
    if limit is None or worst is None or worst["coverage"] >= limit:
        return []
    below = sum(t["coverage"] < limit for t in record["tensors"])
    return [f"imatrix expert coverage {worst['coverage']:.3f} < {limit} ({worst['name']}: "
            f"{worst['experts_with_data']} of {worst['experts']} experts got calibration data; "
            f"{below} of {record['expert_tensors']} expert tensors below)"]


def summary(record: dict) -> dict[str, Any]:
    """What the validation report and the model card show: the totals, the worst tensor, and the
    tensors not fully covered (name, experts with data, experts)."""
    worst = worst_tensor(record)
    return {key: record[key] for key in ("experts", "experts_used", "expert_tensors", "fully_covered",
                                         "min_coverage", "missing", "log_agrees")} | {
        "worst": {key: worst[key] for key in ("name", "experts_with_data", "experts")} if worst else None,
        "partial": [{key: t[key] for key in ("name", "experts_with_data", "experts", "without_data")}
                    for t in record["tensors"] if t["without_data"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="imatrix", description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the GGUF the imatrix is computed on")
    parser.add_argument("--coverage", type=Path, required=True, help="where the expert coverage JSON goes")
    ns, tool, args = step_arguments(parser, argv)
    ns.log.unlink(missing_ok=True)  # the log is parsed: only this run's output may be in it
    elapsed = run_tool(ns.stamp, tool, args, ns.output, ns.log, ns.verify)
    record = expert_coverage(ns.reference, ns.output, ns.log.read_text(errors="replace"))
    with open(ns.log, "a") as handle:
        handle.write(f"{tool} finished in {elapsed:.1f} s -> {ns.output}\n")
        if record["expert_tensors"]:
            handle.write(f"expert coverage: {record['fully_covered']} of {record['expert_tensors']} expert tensors "
                         f"fully covered, lowest {record['min_coverage']}\n")
        for line in record["log_disagreements"]:
            handle.write(f"warning: llama-imatrix's log and its counts disagree: {line}\n")
    atomic_write_text(ns.coverage, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
