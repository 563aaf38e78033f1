"""Parsers for what the pinned llama.cpp tools print (text only: they offer no JSON for this).

Written against captured real output of the pinned build (tests/fixtures/); a format change in a
new llama.cpp shows up there first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# [  7/ 272] blk.0.attn_v.weight  - [   576,    192,      1,      1], type =    f16, converting to q8_0 .. size = ...
_TENSOR_LINE = re.compile(
    r"^\[\s*(?P<index>\d+)/\s*(?P<total>\d+)\]\s+(?P<name>\S+)\s+-\s+\[(?P<shape>[\d,\s]+)\],\s+"
    r"type =\s+(?P<src>\w+),(?P<rest>.*)$"
)
_CONVERTING = re.compile(r"converting to (?P<dst>\w+)")
# warning: blk.0.attn_k.weight - ncols    576 not divisible by 256 (required for type    q4_K) -> falling back to    q5_0
_FALLBACK = re.compile(
    r"(?P<name>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)\s+"
    r"\(required for type\s+(?P<wanted>\w+)\)\s+->\s+falling back to\s+(?P<actual>\w+)"
)
# llama_tensor_get_type: blk.0.attn_v.weight - applying manual override: q4_K -> q8_0
_OVERRIDE = re.compile(r"(?P<name>\S+)\s+-\s+applying manual override:\s+(?P<default>\w+)\s+->\s+(?P<override>\w+)")


@dataclass(frozen=True)
class TensorLine:
    """One tensor as llama-quantize reported it: source type and the type it converted to."""

    name: str
    shape: tuple[int, ...]
    source_type: str
    target_type: str | None  # None: copied unchanged (e.g. 1-D norms)


@dataclass(frozen=True)
class Fallback:
    """A tensor llama-quantize could not give the wanted type (row size vs block size)."""

    name: str
    ncols: int
    block: int
    wanted: str
    actual: str

    @property
    def reason(self) -> str:
        return (f"{self.ncols} columns not divisible by {self.block} ({self.wanted.upper()} block) "
                f"-> {self.actual.upper()}")


def parse_quantize_tensors(text: str) -> list[TensorLine]:
    """The per-tensor lines of a llama-quantize log, in order."""
    lines = []
    pending: dict | None = None
    for line in text.splitlines():
        match = _TENSOR_LINE.match(line.strip())
        if match:
            if pending:
                lines.append(_tensor_line(pending, ""))
            pending = match.groupdict()
            if "converting to" in pending["rest"] or "size =" in pending["rest"]:
                lines.append(_tensor_line(pending, pending["rest"]))
                pending = None
        elif pending and "converting to" in line:
            # Some tensors print a message between the tensor line and "converting to".
            lines.append(_tensor_line(pending, line))
            pending = None
    if pending:
        lines.append(_tensor_line(pending, ""))
    return lines


def _tensor_line(match: dict, rest: str) -> TensorLine:
    shape = tuple(int(d) for d in match["shape"].split(",") if d.strip())
    converting = _CONVERTING.search(rest)
    return TensorLine(name=match["name"], shape=shape, source_type=match["src"].upper(),
                      target_type=converting["dst"].upper() if converting else None)


def parse_quantize_fallbacks(text: str) -> dict[str, Fallback]:
    """Tensors that fell back to another type, by name."""
    found = {}
    for match in _FALLBACK.finditer(text):
        found[match["name"]] = Fallback(match["name"], int(match["ncols"]), int(match["block"]),
                                        match["wanted"].upper(), match["actual"].upper())
    return found


def parse_quantize_overrides(text: str) -> dict[str, str]:
    """Tensors llama-quantize says it gave a user override type, by name."""
    return {m["name"]: m["override"].upper() for m in _OVERRIDE.finditer(text)}


# ---------------------------------------------------------------- llama-perplexity

_FINAL_PPL = re.compile(r"Final estimate: PPL = (?P<ppl>[\d.]+) \+/- (?P<err>[\d.]+)")
# "Mean PPL(Q)                   :   9.806012 ±   0.527039", "Same top p: 91.882 ± 0.541 %"
_STAT = re.compile(r"^(?P<label>[^:=\[]+?)\s*:\s*(?P<value>-?[\d.]+)\s*(?:±\s*(?P<err>[\d.]+))?\s*%?\s*$")
_CHUNKS = re.compile(r"(?:calculating perplexity|kl_divergence: computing) over (?P<n>\d+) chunks, n_ctx=(?P<ctx>\d+)")
# --kl-divergence's table, one line per chunk, RUNNING figures over chunks 1..k (perplexity.cpp, kl_divergence()):
# "   3      11.3533 ±    1.1565       0.04669 ±    0.01438       0.06330 ±    0.00449     7.014 ±  0.518 %    90.065 ±  1.082 %"
#  chunk  PPL(Q) ± err  mean ln(PPL(Q)/PPL(base)) ± err  mean KLD ± err  RMS Δp ± err %  same top p ± err %
_CHUNK_ROW = re.compile(r"^\s*(?P<chunk>\d+)" + r"\s+(\S+)\s+±\s+\S+(?:\s*%)?" * 5 + r"\s*$")

KLD_FIELDS = {
    # label in llama-perplexity's statistics blocks -> (key, has error)
    "Mean PPL(Q)": "ppl",
    "Mean PPL(base)": "ppl_base",
    "Mean PPL(Q)/PPL(base)": "ppl_ratio",
    "Mean KLD": "kld_mean",
    "Maximum KLD": "kld_max",
    "99.0% KLD": "kld_p99",
    "99.9% KLD": "kld_p99_9",
    "Median KLD": "kld_median",
    "RMS Δp": "rms_dp_pct",
    "Same top p": "same_top_pct",
}


def parse_statistics(text: str) -> dict[str, tuple[float, float | None]]:
    """Every 'label : value [± error]' line of llama-perplexity's statistics blocks."""
    found = {}
    for line in text.splitlines():
        match = _STAT.match(line.strip())
        if match:
            label = " ".join(match["label"].split())
            found[label] = (float(match["value"]), float(match["err"]) if match["err"] else None)
    return found


def parse_perplexity_base(text: str) -> dict[str, float]:
    """PPL ± error of a plain (or --kl-divergence-base) llama-perplexity run."""
    match = _FINAL_PPL.search(text)
    if not match:
        raise ValueError("no 'Final estimate: PPL = ...' line in llama-perplexity output")
    chunks = _CHUNKS.search(text)
    return {"ppl": float(match["ppl"]), "ppl_error": float(match["err"]),
            "chunks": int(chunks["n"]) if chunks else None, "ctx": int(chunks["ctx"]) if chunks else None}


def parse_kl_divergence(text: str) -> dict[str, Any]:
    """PPL, KLD and token-probability figures of a --kl-divergence run (text only on stdout), with the
    per-chunk means (per_chunk_figures)."""
    stats = parse_statistics(text)
    missing = [label for label in KLD_FIELDS if label not in stats]
    if missing:
        raise ValueError(f"llama-perplexity --kl-divergence output lacks {', '.join(missing)}")
    result: dict[str, Any] = {}
    for label, key in KLD_FIELDS.items():
        value, error = stats[label]
        result[key] = value
        if error is not None:
            result[f"{key}_error"] = error
    result["delta_ppl_pct"] = round((result["ppl_ratio"] - 1) * 100, 4)
    chunks = _CHUNKS.search(text)
    if not chunks:
        raise ValueError("llama-perplexity --kl-divergence output lacks its 'computing over N chunks, n_ctx=C' line")
    result["chunks"] = int(chunks["n"])
    return {**result, **per_chunk_figures(text, int(chunks["n"]), int(chunks["ctx"]))}


def per_chunk_figures(text: str, n_chunks: int, ctx: int) -> dict[str, list[float]]:
    """Per-chunk means of KLD, of ln(PPL(Q)/PPL(base)) and of the same-top share (%), from the running
    figures --kl-divergence prints after each chunk: every chunk scores the same number of tokens,
    N = ctx - 1 - ctx/2 (the second half of its context), so chunk k's mean is m_k·k - m_(k-1)·(k-1).

    Precision: KLD and ln(PPL ratio) are printed with 5 decimals (%10.5lf), each running mean within
    ±5e-6 of the true one, so chunk k's mean is within ±5e-6·(2k-1) (±9.5e-5 at chunk 10, ±1e-3 at
    chunk 100; about 0.4 of that as an RMS); the errors telescope, so the chunks' average stays
    within ±5e-6 of the printed final mean. (The values are exact 5-decimal numbers once float noise is
    rounded off.) The same-top share is printed in % with 3 decimals: the running count of same-top
    tokens, share·k·N, is off by at most 5e-6·k·N and is rounded to the whole count it is, which is
    exact while k·N < 100 000 (390 chunks of 512); the per-chunk shares are then exact too.
    """
    rows = [match for match in map(_CHUNK_ROW.match, text.splitlines()) if match]
    if [int(row["chunk"]) for row in rows] != list(range(1, n_chunks + 1)):
        raise ValueError(f"llama-perplexity --kl-divergence output lacks its per-chunk lines (expected chunks 1 to "
                         f"{n_chunks}, found {len(rows)} line(s))")
    tokens = ctx - 1 - ctx // 2

    def per_chunk(running: list[float], digits: int) -> list[float]:  # rounded to the digits it has: no float noise
        return [round(m * k - prev * (k - 1), digits) for k, (prev, m) in enumerate(zip([0.0, *running], running), start=1)]

    same_counts = [0] + [round(float(row[6]) / 100 * k * tokens) for k, row in enumerate(rows, start=1)]
    return {"chunk_kld_mean": per_chunk([float(row[4]) for row in rows], 5),
            "chunk_ln_ppl_ratio": per_chunk([float(row[3]) for row in rows], 5),
            "chunk_same_top_pct": [100 * (now - before) / tokens for before, now in zip(same_counts, same_counts[1:])]}


def parse_bench_json(text: str) -> dict:
    """``llama-bench -o json``: the prompt-processing and generation tests as {"pp": ..., "tg": ...}
    with tokens, mean and standard deviation of tokens/s, plus what the tool says of the model and build."""
    return _bench_record(_bench_runs(text))


def parse_bench_json_per_model(text: str) -> dict[str, dict]:
    """``llama-bench -o json`` of several ``-m`` files: each file's record as parse_bench_json gives
    it, keyed by the file name the tool was given."""
    runs = _bench_runs(text)
    names = list(dict.fromkeys(run["model_filename"] for run in runs))
    return {name: _bench_record([run for run in runs if run["model_filename"] == name]) for name in names}


def _bench_runs(text: str) -> list[dict]:
    import json

    try:
        runs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"llama-bench output is not JSON ({err})") from None
    if not isinstance(runs, list) or not runs:
        raise ValueError("llama-bench output holds no test")
    return runs


def _bench_record(runs: list[dict]) -> dict:
    tests = {}
    for run in runs:
        kind = "pp" if run["n_prompt"] and not run["n_gen"] else "tg" if run["n_gen"] and not run["n_prompt"] else None
        if kind:
            tests[kind] = {"tokens": run["n_prompt"] or run["n_gen"], "tokens_per_s": run["avg_ts"],
                           "stddev": run["stddev_ts"], "samples": run["samples_ts"]}
    if set(tests) != {"pp", "tg"}:
        raise ValueError(f"llama-bench output lacks a {'pp' if 'pp' not in tests else 'tg'} test")
    first = runs[0]
    return {**tests, "threads": first["n_threads"], "gpu_layers": first["n_gpu_layers"], "backends": first["backends"],
            "model_size": first["model_size"], "model_n_params": first["model_n_params"],
            "build_commit": first["build_commit"], "cpu_info": first["cpu_info"], "gpu_info": first["gpu_info"]}
