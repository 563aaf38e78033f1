"""Sanity generation: does the quant still write text, and the reference's text?

A quant can pass perplexity on average and still produce nothing, or loop on one phrase. Each
quant generates greedily from a few fixed prompts through llama-cpp-python on the toolchain's own
library; the output must not be empty, must not be a repetition loop, and its first tokens are
compared with the reference's greedy output on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import run_cli
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


def generate(gguf: Path, prompts: Sequence[str], max_tokens: int, threads: int) -> list[dict[str, Any]]:
    """Greedy continuations of each prompt (LLAMA_CPP_LIB_PATH must name the toolchain's bin)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, seed=0, verbose=False)
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


def check(outputs: list[dict], reference: list[dict] | None, max_repetition: float) -> dict[str, Any]:
    """Per prompt: empty?, repetition rate, tokens shared with the reference; and the overall verdict."""
    results, problems = [], []
    for i, out in enumerate(outputs):
        rate = round(repetition_rate(out["tokens"]), 4)
        row = {"prompt": out["prompt"], "text": out["text"], "tokens": len(out["tokens"]), "repetition_rate": rate}
        if reference is not None:
            row["same_first_tokens"] = common_prefix(out["tokens"], reference[i]["tokens"])
        if not out["text"].strip():
            problems.append(f"empty output for prompt {i + 1}")
        elif rate > max_repetition:
            problems.append(f"repetition loop for prompt {i + 1} (rate {rate} > {max_repetition})")
        results.append(row)
    return {"passed": not problems, "problems": problems, "prompts": results,
            "mean_same_first_tokens": (round(sum(r["same_first_tokens"] for r in results) / len(results), 2)
                                       if reference is not None and results else None)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--settings-json", required=True, help='{"prompts": [...], "max_tokens": N, "max_repetition": x}')
    parser.add_argument("--reference", type=Path, help="the reference's sanity output, to compare first tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    settings = json.loads(ns.settings_json)
    for path in ns.verify:
        verify(path)
    os.environ["LLAMA_CPP_LIB_PATH"] = json.loads(ns.stamp.read_text())["bin_dir"]
    outputs = generate(ns.gguf, settings["prompts"], settings["max_tokens"], ns.threads)
    reference = json.loads(ns.reference.read_text())["outputs"] if ns.reference else None
    result = {**check(outputs, reference, settings["max_repetition"]), "outputs": outputs}
    atomic_write_text(ns.out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    run_cli(main)
