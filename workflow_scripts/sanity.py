"""Sanity generation: does the quant still write text, and no worse than the reference does?

A quant can pass perplexity on average and still produce nothing, or loop on one phrase. The
reference and each quant generate greedily from a few fixed prompts through llama-cpp-python on
the toolchain's own library, and the quant is judged against the reference on the same prompt:
small models often loop or stop at once in greedy generation, and such a loop is the model's,
not the quant's. A quant fails a prompt where its output is empty and the reference's is not, or
where it repeats more than ``max_repetition`` and more than the reference's rate +
``repetition_margin`` (see ``check``). A prompt on which the reference itself is empty or loops
cannot tell a good quant from a bad one in that respect; the reference's record names such
prompts, and warns when that is every prompt. First tokens shared with the reference are
information only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.tokenizer_parity import first_difference

NGRAM = 4


def repetition_rate(tokens: Sequence[int], n: int = NGRAM) -> float:
    """Share of the ``n``-grams of ``tokens`` that repeat an earlier one (0: none, near 1: a loop)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two generations share."""
    position = first_difference(a, b)
    return len(a) if position is None else position


def generate(gguf: Path, prompts: Sequence[str], max_tokens: int, threads: int,
             gpu_layers: int = 0) -> list[dict[str, Any]]:
    """Greedy continuations of each prompt (LLAMA_CPP_LIB_PATH must name the toolchain's bin), with
    ``gpu_layers`` layers on the GPU (a CUDA toolchain's: generating from a large reference on the CPU
    reads the whole file per token, and a 70B F16 does not even fit a GPU host's RAM)."""
    from llama_cpp import Llama

    # room for the longest prompt (a token covers at least one byte; 8 for BOS and the like) and every
    # generated token: a fixed 512 made llama_decode fail for max_tokens near 512
    n_ctx = max(512, max_tokens + max(len(p.encode("utf-8")) for p in prompts) + 8)
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_gpu_layers=gpu_layers, seed=0, verbose=False)
    outputs = []
    for prompt in prompts:
        tokens = []
        for token in llm.generate(llm.tokenize(prompt.encode("utf-8")), temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(tokens) >= max_tokens:
                break
            tokens.append(token)
        outputs.append({"prompt": prompt, "tokens": tokens,
                        "text": llm.detokenize(tokens).decode("utf-8", errors="replace")})
    return outputs


def describe(output: dict, max_repetition: float) -> dict[str, Any]:
    """One continuation: its length, repetition rate, and whether it is empty or loops (rate above
    ``max_repetition``)."""
    rate = round(repetition_rate(output["tokens"]), 4)
    return {"prompt": output["prompt"], "text": output["text"], "tokens": len(output["tokens"]),
            "repetition_rate": rate, "empty": not output["text"].strip(), "loops": rate > max_repetition}


def not_discriminating(reference_rows: list[dict], max_repetition: float) -> list[dict[str, Any]]:
    """The prompts (numbered from 1) on which the reference itself is empty or loops, with why: an
    empty output there is not held against a quant, and a loop only beyond the reference's + margin."""
    found = []
    for number, row in enumerate(reference_rows, 1):
        if row["empty"]:
            found.append({"prompt": number, "text": row["prompt"], "reason": "the reference's output is empty"})
        elif row["loops"]:
            found.append({"prompt": number, "text": row["prompt"],
                          "reason": f"the reference loops (repetition {row['repetition_rate']} > {max_repetition})"})
    return found


def describe_reference(outputs: list[dict], max_repetition: float, repetition_margin: float) -> dict[str, Any]:
    """The reference's own result, recorded as such: per prompt empty? loops?, the prompts that
    cannot discriminate, and a warning when none can (the check then proves little: a warning,
    not a failure). The rule its quants are judged by is recorded with it."""
    rows = [describe(out, max_repetition) for out in outputs]
    blind = not_discriminating(rows, max_repetition)
    warning = (f"no sanity prompt could discriminate: the reference itself is empty or loops on all {len(rows)}, "
               "so the sanity check proves little for this model" if rows and len(blind) == len(rows) else None)
    return {"max_repetition": max_repetition, "repetition_margin": repetition_margin, "prompts": rows,
            "not_discriminating": blind, "warning": warning}


def check(outputs: list[dict], reference: list[dict], max_repetition: float, repetition_margin: float) -> dict[str, Any]:
    """Judge a quant's continuations against the reference's on the same prompts.

    A prompt fails when the quant's output is empty and the reference's is not, or when its
    repetition rate is above its ``repetition_limit``: the larger of ``max_repetition`` and the
    reference's rate + ``repetition_margin``. Where the reference is well below the limit this is
    the plain loop test; where the reference loops (or nearly does) the quant fails only by
    repeating clearly more. Deliberately not "loops where the reference does not" alone: a
    reference at 0.49 and a quant at 0.51 differ by a threshold, not by quality (near-lossless
    quants were seen drifting further than that, see the schema's ``repetition_margin``). The
    rule never fails a quant that the reference-blind test (``max_repetition`` alone) would pass.
    """
    if [out["prompt"] for out in outputs] != [ref["prompt"] for ref in reference]:
        raise UserError("the reference's sanity output was made from other prompts; re-run sanity_reference")
    reference_rows = [describe(ref, max_repetition) for ref in reference]
    rows, problems = [], []
    for number, (out, ref, ref_row) in enumerate(zip(outputs, reference, reference_rows), 1):
        row = describe(out, max_repetition)
        ref_rate = ref_row["repetition_rate"]
        limit = max(max_repetition, round(ref_rate + repetition_margin, 4))
        row.update(reference_repetition_rate=ref_rate, reference_empty=ref_row["empty"], repetition_limit=limit,
                   same_first_tokens=common_prefix(out["tokens"], ref["tokens"]))
        if row["empty"] and not ref_row["empty"]:
            problems.append(f"empty output for prompt {number} (the reference wrote {ref_row['tokens']} tokens)")
        elif row["repetition_rate"] > limit:
            beyond = (f"{max_repetition} (the reference's {ref_rate})" if limit == max_repetition
                      else f"the reference's {ref_rate} + {repetition_margin}")
            problems.append(f"repetition loop for prompt {number}: rate {row['repetition_rate']} > {beyond}")
        rows.append(row)
    return {"passed": not problems, "problems": problems,
            "not_discriminating": [item["prompt"] for item in not_discriminating(reference_rows, max_repetition)],
            "max_repetition": max_repetition, "repetition_margin": repetition_margin, "prompts": rows,
            "mean_same_first_tokens": round(sum(r["same_first_tokens"] for r in rows) / len(rows), 2) if rows else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--settings-json", required=True, help='{"prompts": [...], "max_tokens": N, "max_repetition": x, "repetition_margin": y}')
    parser.add_argument("--reference", type=Path, help="the reference's sanity output, to judge against (without it: this is the reference's run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers to offload to the GPU (a CUDA toolchain's)")
    parser.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    settings = json.loads(ns.settings_json)
    for path in ns.verify:
        verify(path)
    os.environ["LLAMA_CPP_LIB_PATH"] = json.loads(ns.stamp.read_text())["bin_dir"]
    outputs = generate(ns.gguf, settings["prompts"], settings["max_tokens"], ns.threads, ns.gpu_layers)
    limits = settings["max_repetition"], settings["repetition_margin"]
    judged = (check(outputs, json.loads(ns.reference.read_text())["outputs"], *limits) if ns.reference
              else describe_reference(outputs, *limits))
    result = {**judged, "outputs": outputs}
    atomic_write_text(ns.out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    run_cli(main)
