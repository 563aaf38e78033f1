"""Builds of one model compared on the same evaluation tokens: paired differences, and the auto builds' table.

Every build is scored against the same reference logits, chunk by chunk, so two builds' figures share
most of their noise (a chunk that is hard for one is hard for the other). Their difference is judged
by the per-chunk differences: their mean, and its standard error over the n chunks, each chunk a
separate context and so the independent unit (tokens within one chunk are not independent). That
error is several times smaller than the two builds' chunk-to-chunk errors combined (SmolLM2-135M's
demo builds, 10 chunks: per-chunk mean KLDs of two builds correlate at 0.995 or more, paired error
2.5 to 12 times smaller), which is what lets an auto build be told from a stock build of about its size. The per-chunk figures come from llama-perplexity's running table
(workflow_scripts.llama_tools.per_chunk_figures, which states their precision); their rounding adds a
little noise unrelated to the builds to the per-chunk differences, which on average widens the
standard error: if anything it is conservative.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from workflow_scripts.errors import UserError

SIZE_BAND = 0.20  # other builds within ±20 % of an auto build's file size are its comparison
PER_CHUNK = (("kld", "chunk_kld_mean"), ("ln_ppl_ratio", "chunk_ln_ppl_ratio"), ("same_top_pct", "chunk_same_top_pct"))


def _chunks(record: dict, key: str) -> list[float]:
    if key not in record:
        raise UserError(f"build {record['quant']}: its validation record has no {key!r} (the per-chunk figures "
                        "llama-perplexity's table gives); validate the build again with this version")
    return record[key]


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample standard deviation / √n); no error from one value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def paired(a: dict, b: dict) -> dict[str, Any]:
    """Build ``b`` against build ``a`` (validation records of the same model) on the same tokens.

    Per figure: both means over the chunks, the mean of the per-chunk differences b - a and its
    standard error. Ratios b/a where a ratio means something: mean KLD; perplexity, PPL(b)/PPL(a) =
    exp(mean difference of ln(PPL/PPL(base))) (a ratio of ΔPPL % would flip sign around 0); and for the
    top token the share of tokens whose top token differs from the reference's, (100 - b)/(100 - a).
    Records measured on different chunks (count) or against different reference logits (PPL(base))
    are refused: their difference would not be paired.
    """
    n_a, n_b = len(_chunks(a, "chunk_kld_mean")), len(_chunks(b, "chunk_kld_mean"))
    if n_a != n_b:
        raise UserError(f"builds {a['quant']} ({n_a} chunks) and {b['quant']} ({n_b} chunks) were not measured on the "
                        "same evaluation tokens: a paired comparison needs the same chunks")
    if not math.isclose(a["ppl_base"], b["ppl_base"], rel_tol=1e-5):
        raise UserError(f"builds {a['quant']} and {b['quant']} were measured against different reference logits "
                        f"(PPL(base) {a['ppl_base']} vs {b['ppl_base']}): a paired comparison needs the same ones")
    result: dict[str, Any] = {"a": a["quant"], "b": b["quant"], "chunks": n_a}
    for name, key in PER_CHUNK:
        values_a, values_b = _chunks(a, key), _chunks(b, key)
        diff, se = _mean_se([y - x for x, y in zip(values_a, values_b)])
        result[name] = {"a": statistics.fmean(values_a), "b": statistics.fmean(values_b), "diff": diff, "se": se}
    kld, same = result["kld"], result["same_top_pct"]
    kld["ratio"] = kld["b"] / kld["a"] if kld["a"] > 0 else None
    result["ln_ppl_ratio"]["ppl_ratio"] = math.exp(result["ln_ppl_ratio"]["diff"])
    same["miss_ratio"] = (100 - same["b"]) / (100 - same["a"]) if same["a"] < 100 else None
    return result


def auto_build_names(records: dict[str, dict]) -> list[str]:
    """The builds whose settings say auto (types chosen per tensor by workflow_scripts.auto_recipe)."""
    return sorted(name for name, record in records.items() if record["build"].get("auto"))


def comparison_table(records: dict[str, dict], auto_builds: list[str]) -> list[dict[str, Any]]:
    """For each auto build, a row for itself and one for every other build of the model whose file is
    within ±20 % of its size (by size): size, bits per weight, mean and 99th-percentile KLD, same top
    token, ΔPPL, and, paired on the same tokens, the auto build's mean KLD minus the build's (± its
    standard error) and their ratio auto/build (below 1: the auto build is better)."""
    rows = []
    for auto in auto_builds:
        size = records[auto]["file_bytes"]
        near = sorted((name for name, record in records.items()
                       if name != auto and abs(record["file_bytes"] / size - 1) <= SIZE_BAND),
                      key=lambda name: (records[name]["file_bytes"], name))
        for name in [auto, *near]:
            record = records[name]
            row = {"auto": auto, "build": name, "file_bytes": record["file_bytes"],
                   "size_vs_auto_pct": round((record["file_bytes"] / size - 1) * 100, 2),
                   **{key: record[key] for key in ("bits_per_weight", "kld_mean", "kld_p99", "same_top_pct", "delta_ppl_pct")}}
            if name != auto and all(PER_CHUNK[0][1] in r for r in (record, records[auto])):
                pair = paired(record, records[auto])
                row.update(delta_kld=pair["kld"]["diff"], delta_kld_se=pair["kld"]["se"], kld_ratio=pair["kld"]["ratio"],
                           paired=pair)
            elif name != auto:  # validated before per-chunk figures were kept: not paired, and said so
                row.update(delta_kld=None, delta_kld_se=None, kld_ratio=None, paired=None)
            rows.append(row)
    return rows


def comparison_md(model: str, rows: list[dict]) -> str:
    """The comparison table of one model's auto builds, in Markdown."""
    head = ["Auto build", "Build", "MiB", "Size vs auto", "bpw", "Mean KLD", "p99 KLD", "Same top %", "ΔPPL %",
            "ΔKLD auto − build ± SE", "KLD auto / build"]
    lines = ["", f"## {model}: auto builds against builds within ±{SIZE_BAND:.0%} of their size", "",
             "Paired on the same evaluation tokens: the auto build's mean KLD minus the build's, ± its standard error "
             "over the chunks (negative: the auto build is better), and their ratio.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["build"] == r["auto"]:
            delta, ratio = "–", "–"
        elif r["paired"] is None:
            delta, ratio = "not paired: validated before per-chunk figures were kept (re-run its validate_quant)", "–"
        else:
            se = f" ± {r['delta_kld_se']:.5f}" if r["delta_kld_se"] is not None else ""
            delta = f"{r['delta_kld']:+.5f}{se}"
            ratio = f"{r['kld_ratio']:.3f}" if r["kld_ratio"] is not None else "–"
        lines.append(f"| {r['auto']} | {r['build']} | {r['file_bytes'] / 2**20:.1f} | {r['size_vs_auto_pct']:+.1f} % | "
                     f"{r['bits_per_weight']:.2f} | {r['kld_mean']:.4f} | {r['kld_p99']:.4f} | {r['same_top_pct']:.1f} | "
                     f"{r['delta_ppl_pct']:+.2f} | {delta} | {ratio} |")
    return "\n".join(lines) + "\n"
