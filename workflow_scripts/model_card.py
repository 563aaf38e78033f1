"""The package's README.md: a Hugging Face model card written from the manifest alone.

Everything in it is a figure the workflow measured or an input it recorded; nothing is typed in by
hand, so the card cannot disagree with the files beside it.
"""

from __future__ import annotations

import json
import shlex

from huggingface_hub import ModelCardData

from workflow_scripts.names import tag_collisions
from workflow_scripts.verify_package import intoto_name

MIB = 1024 * 1024
TEMPLATE_LINES = 40  # a longer chat template is shown cut here (the GGUF holds it whole)


def _header(manifest: dict) -> str:
    """The card's YAML metadata, as the Hub reads it (huggingface_hub's ModelCardData): a quantized
    model of base_model, found under the gguf library filter with the llama-cpp tag."""
    data = ModelCardData(
        base_model=manifest.get("base_model"), base_model_relation="quantized" if manifest.get("base_model") else None,
        license=manifest.get("license"), library_name="gguf", pipeline_tag="text-generation",
        tags=["gguf", "llama-cpp", "quantized"] + (["imatrix"] if manifest["imatrix"] else []),
        quantized_by=manifest["quantized_by"])
    return "---\n" + data.to_yaml() + "\n---\n"


def repo_id(manifest: dict) -> tuple[str, bool]:
    """The Hub repository the snippets name: the configured publish repository, else a placeholder
    (True when it is one)."""
    return (manifest["repo_id"], False) if manifest.get("repo_id") else (f"<user>/{manifest['model']}-GGUF", True)


def _files_table(manifest: dict) -> list[str]:
    rows = ["| Tag | File | Recipe | Size (MiB) | Bits/weight | PPL | ΔPPL % | Mean KLD | Same top % | Gate |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for entry in sorted(manifest["files"], key=lambda e: -e["metrics"]["bits_per_weight"]):
        m = entry["metrics"]
        gate = ", ".join(f"{k} {v}" for k, v in sorted(entry["gate"].items()))
        made = "" if entry["build"] == entry["label"] else f" (build {entry['build']})"
        name = f"`{entry['file']}`" + (f" in {len(entry['parts'])} parts" if entry.get("parts") else "")
        rows.append(f"| {entry['label']} | {name} | {entry['recipe_text']}{made} | {m['file_bytes'] / MIB:.1f} | "
                    f"{m['bits_per_weight']:.2f} | "
                    f"{m['ppl']:.3f} ± {m['ppl_error']:.3f} | {m['delta_ppl_pct']:+.2f} | {m['kld_mean']:.4f} | "
                    f"{m['same_top_pct']:.1f} | passed ({gate}) |")
    return rows


def _recommendations(manifest: dict) -> list[str]:
    lines = ["", "## Which file for your hardware", "",
             "| Tier | Priority | Recommended | Runner-up | Why |", "|---|---|---|---|---|"]
    label = {entry["build"]: entry["label"] for entry in manifest["files"]}  # recommendations name builds
    for tier, rec in manifest["recommendations"].items():
        measured = "" if rec["measured"] else " (speed not measured on this host)"
        choice, runner_up = (label.get(rec[key], rec[key]) or "–" for key in ("choice", "runner_up"))
        lines.append(f"| {tier} | {rec['priority']} | {choice} | {runner_up} | {rec['why']}{measured} |")
    return lines


def run_section(manifest: dict) -> list[str]:
    """How to run a file: llama.cpp, Ollama and LM Studio each find it by its tag, the quant label in
    its name (llama.cpp: the tag followed by '-' or '.' in the file name; the Hub, for Ollama: the
    quant type name in the file name; LM Studio: its @ qualifier)."""
    if not manifest["files"]:
        return []
    repo, placeholder = repo_id(manifest)
    tags = [entry["label"] for entry in manifest["files"]]
    tag = "Q4_K_M" if "Q4_K_M" in tags else tags[0]
    lines = ["", "## Run", "", f"Each file is found by its tag (the *Tag* column: {', '.join(tags)}), in any case:", "",
             "```sh", f"llama-server -hf {repo}:{tag}", f"llama-cli -hf {repo}:{tag}",
             f"ollama run hf.co/{repo}:{tag}", f"lms get {repo}@{tag.lower()}   # LM Studio", "```"]
    if placeholder:
        lines += ["", f"`{repo}` stands for the repository these files are uploaded to (no publish repository was "
                  "configured when this card was made)."]
    first = {entry["label"]: (entry.get("parts") or [entry])[0]["file"] for entry in manifest["files"]}
    for label, other in tag_collisions(manifest["model"], tags):
        lines += ["", f"`-hf {repo}:{label}` may also fetch `{first[other]}` (llama.cpp takes the first file whose "
                  f"name holds {label} followed by '-' or '.'); ask for the file by name instead: "
                  f"`llama-server -hf {repo} --hf-file {first[label]}`."]
    if any(entry.get("parts") for entry in manifest["files"]):
        lines += ["", "A split file is fetched whole: the tag picks its first part and llama.cpp downloads the rest."]
    return lines


def _chat_template_check(check: dict | None) -> list[str]:
    """What the chat-template check found: the template against the source's, chats rendered by
    llama.cpp against transformers' token ids, and the sanity turn's end."""
    if not check or check["verdict"] == "not applicable":
        return []
    if check["verdict"] != "passed":
        return [f"**Chat-template check failed**: {'; '.join(check['reasons'])}.", ""]
    turn = check.get("sanity_turn")
    ended = (f"; the reference answered a chat turn and ended it with `{turn['end_of_turn_piece']}` after "
             f"{turn['tokens']} tokens" if turn else "")
    return [f"Chat-template check passed: the template is the source's, and {len(check['conversations'])} "
            f"conversations rendered by llama.cpp ({check['engine']}) give transformers' token ids{ended}.", ""]


def _prompt_format(manifest: dict) -> list[str]:
    """The chat template the GGUFs carry (``tokenizer.chat_template``), which llama.cpp, Ollama and
    LM Studio apply to a conversation; cut at TEMPLATE_LINES lines."""
    templates = manifest.get("chat_templates") or {}
    if not templates:
        return ["", "## Prompt format", "", "The files carry no chat template (`tokenizer.chat_template`): prompt "
                "them with plain text, or give your runner a template."]
    lines = ["", "## Prompt format", "", *_chat_template_check(manifest.get("chat_template_check"))]
    for name, template in sorted(templates.items(), key=lambda item: item[0] != "default"):
        shown = template.splitlines()
        key = "tokenizer.chat_template" + ("" if name == "default" else f".{name}")
        cut = f", first {TEMPLATE_LINES} of {len(shown)} lines" if len(shown) > TEMPLATE_LINES else ""
        lines += [f"The chat template in `{key}` (Jinja{cut}):", "", "```jinja", *shown[:TEMPLATE_LINES], "```", ""]
    return lines[:-1]


def _speed(manifest: dict) -> list[str]:
    lines = []
    for tier, ref in manifest["reference_speed"]["tiers"].items():
        if not ref["measured"]:
            lines += ["", f"**{tier}**: not measured: {ref['reason']}."]
            continue
        notes = "; ".join(ref["notes"])
        lines += ["", f"**{tier}** ({ref['threads']} threads{'; ' + notes if notes else ''}); reference "
                  f"{manifest['reference']['type']}: pp {ref['pp_tps']:.1f} t/s, tg {ref['tg_tps']:.1f} t/s", "",
                  "| File | pp t/s | tg t/s | tg speed-up | load s | first token s | answer s | peak RSS MiB | fits |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for entry in manifest["files"]:
            row = entry["speed"]["tiers"][tier]
            lines.append(f"| `{entry['file']}` | {row['pp_tps']:.1f} ± {row['pp_stddev']:.1f} | {row['tg_tps']:.1f} ± "
                         f"{row['tg_stddev']:.1f} | {row['tg_speedup']:.2f}x | {row['load_s']:.2f} | {row['ttft_s']:.2f} | "
                         f"{row['latency_s']:.2f} | {row['peak_rss_bytes'] / MIB:.0f} | {row['memory']} |")
    hosts = "; ".join(f"{h['cpu']} ({h['cpus']} CPUs{', GPUs: ' + ', '.join(h['gpus']) if h['gpus'] else ''})"
                      for h in manifest["speed_hosts"])
    return ["", "## Speed", "", f"Measured with llama-bench and llama-cpp-python on {hosts}: figures are that "
            "host's, run with each tier's threads, context and GPU layers, not the tier's own hardware."] + lines \
        if manifest["files"] else []


def _tensor_error(manifest: dict) -> list[str]:
    files = [e for e in manifest["files"] if e.get("tensor_error")]
    if not files:
        return []
    lines = ["", "## Per-tensor error", "", "Relative RMS error of the dequantized weights against the reference "
             "(gguf-py dequantization); the tensors that lost most are the ones a custom recipe should raise.", "",
             "| File | Overall | Worst tensors |", "|---|---:|---|"]
    for entry in files:
        errors = entry["tensor_error"]
        worst = ", ".join(f"`{w['name']}` {w['type']} {w['rel_rms']:.4f}" for w in errors["worst"][:3])
        lines.append(f"| `{entry['file']}` | {errors['rel_rms']:.4f} | {worst} |")
    return lines


def _expert_coverage(manifest: dict) -> list[str]:
    """How many experts of each routed expert tensor the importance matrix covered (MoE models)."""
    coverage = (manifest["imatrix"] or {}).get("expert_coverage")
    if not coverage or not coverage["expert_tensors"]:
        return []
    worst = coverage["worst"]
    lines = ["", "## Expert coverage of the importance matrix", "",
             f"{coverage['fully_covered']} of {coverage['expert_tensors']} expert tensors got calibration data for all "
             f"{coverage['experts']} experts (top-{coverage['experts_used']} routing); the least covered, "
             f"`{worst['name']}`, for {worst['experts_with_data']} of {worst['experts']}. llama-quantize gives the experts "
             "without data uniform importance weights, as without an imatrix."]
    if coverage["partial"]:
        lines += ["", "| Tensor | Experts with data | Experts without data |", "|---|---:|---|"]
        lines += [f"| `{t['name']}` | {t['experts_with_data']} of {t['experts']} | {', '.join(map(str, t['without_data']))} |"
                  for t in coverage["partial"]]
    return lines


def _withheld(manifest: dict) -> list[str]:
    if not manifest["withheld"]:
        return []
    lines = ["", "## Not published", "", "These quants were made and measured but no build of them passed its gate:", ""]
    for item in manifest["withheld"]:
        reasons = "; ".join(f"{build}: {', '.join(why)}" for build, why in item["reasons"].items())
        skipped = (f"; not built: {', '.join(item['skipped'])}, which changed no tensor's type"
                   if item.get("skipped") else "")
        lines.append(f"- **{item['quant']}** (tried {', '.join(item['tried'])}{skipped}): {reasons}")
    return lines


def _sanity(manifest: dict) -> list[str]:
    """The sanity rule, and the prompts on which the reference itself was empty or looped (they
    could not discriminate), with a warning when that was every prompt."""
    sanity = manifest.get("sanity")
    if not sanity:
        return []
    line = (f"- Sanity: greedy continuations of {len(sanity['reference'])} fixed prompts, judged against the reference's: "
            "a file fails a prompt where its output is empty and the reference's is not, or where its share of repeated "
            f"4-token sequences is above both {sanity['max_repetition']} and the reference's + {sanity['repetition_margin']}.")
    if sanity["not_discriminating"]:
        line += " Could not discriminate: " + "; ".join(
            f"prompt {item['prompt']} ({json.dumps(item['text'], ensure_ascii=False)}), {item['reason']}"
            for item in sanity["not_discriminating"]) + "."
    if sanity["warning"]:
        line += f" **Warning**: {sanity['warning']}."
    return [line]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _how_made(manifest: dict) -> list[str]:
    tc, ev = manifest["toolchain"], manifest["evaluation"]
    source = manifest["source"]
    identity = ", ".join(f"{k} {v}" for k, v in sorted((source.get("identity") or {}).items()))
    lines = ["", "## How these files were made", "",
             f"- Source ({source['type']}{': ' + identity if identity else ''}): "
             + ", ".join(f"`{f['name']}` sha256 `{f['sha256']}`" for f in source["files"]),
             f"- Reference: {manifest['reference']['type']} made by {manifest['reference']['method']}, sha256 "
             f"`{manifest['reference']['sha256']}`" + (f". {_sentence(manifest['reference']['note'])}" if manifest["reference"].get("note") else "")]
    if manifest["imatrix"]:
        cal = manifest["calibration"]
        lines.append(f"- Importance matrix `{manifest['imatrix']['file']}` (included, sha256 `{manifest['imatrix']['sha256']}`): "
                     f"llama-imatrix on {cal['chunks']} × {cal['ctx']} tokens of a calibration text with sha256 `{cal['sha256']}`")
    built = (f"llama.cpp commit `{tc['llama_cpp_commit']}` (vendored in llama-cpp-python {tc['llama_cpp_python_version']})"
             if tc.get("llama_cpp_commit") else "llama.cpp of an existing build directory (commit unknown)")
    lines += [f"- {built}, "
              f"backend {tc['backend']}, llama-quantize sha256 `{tc['llama_quantize_sha256']}`",
              f"- Quality: `llama-perplexity --kl-divergence` against the reference on {ev['chunks']} × {ev['ctx']} tokens of "
              f"held-out text (sha256 `{ev['sha256']}`, disjoint from the calibration text); reference PPL "
              f"{ev['reference_ppl']['ppl']:.3f} ± {ev['reference_ppl']['ppl_error']:.3f}. KLD is the mean Kullback-Leibler "
              "divergence of the quant's next-token distribution from the reference's (0 = identical); "
              "'same top' is the share of positions where both pick the same most likely token.",
              *_sanity(manifest),
              "", "Commands, relative to the workflow's working directory:", "", "```"]
    lines += [shlex.join(entry["command"]) for entry in manifest["files"]]
    lines.append("```")
    split = [entry for entry in manifest["files"] if entry.get("parts")]
    if split:
        first = split[0]["parts"][0]["file"]
        lines += ["", f"Files over {manifest['split_max_mb']} MB are split with llama-gguf-split: give llama.cpp the first "
                  f"part (e.g. `-m {first}`) and it loads the rest; `llama-gguf-split --merge {first} "
                  f"{split[0]['file']}` joins them into one file with the same tensors (its header differs from the "
                  "unsplit file's, so its sha256 is not the one `manifest.json` records for the file as quantized)."]
    return lines


def _auto_builds(manifest: dict) -> list[str]:
    """Auto builds: how each file's types were chosen, predicted against measured, what moved."""
    autos = [entry for entry in manifest["files"] if entry.get("auto")]
    if not autos:
        return []
    lines = ["", "## Auto builds", "",
             "These files' tensor types were chosen per tensor by gguf-forge: each tensor's imatrix-weighted error at "
             "every menu type was measured, scaled per tensor group by real KL-divergence probes on the calibration "
             "text, and the lowest predicted mean KLD within the budget was picked (for a fallback build, raising "
             "tensors of the failed build before it within a byte allowance). The evaluation text above judged "
             "the result and was never seen by the search."]
    for entry in autos:
        auto = entry["auto"]
        moved = auto.get("moved") or {}
        lines += ["", f"**{entry['label']}**: {entry['recipe_text']}; {auto['n_bytes'] / MIB:.1f} MiB of tensors "
                  f"(budget {auto['budget_bytes'] / MIB:.1f} MiB). Predicted mean KLD on the calibration text "
                  f"{auto['predicted_kld_mean']:.4f}, measured on the evaluation text {entry['metrics']['kld_mean']:.4f}."]
        for way in ("up", "down"):
            names = moved.get(way) or []
            if names:
                against = auto["objective"].get("bytes_of") or auto["objective"].get("raise_from") or "the stock build"
                lines.append(f"- {len(names)} tensors moved {way} against {against}: "
                             + ", ".join(f"`{n}`" for n in names[:8]) + (", ..." if len(names) > 8 else ""))
        if auto.get("source_types"):
            lines.append(f"- The source was itself stored as {', '.join(auto['source_types'])}: the reference is its "
                         "dequantization, so a tensor given back a type that reproduces it (measured error near zero, "
                         "e.g. Q4_1 and Q5_1 for Q4_1 weights) would look free; such choices were left out "
                         f"({', '.join(f'{t} for {n} tensors' for t, n in sorted((auto.get('excluded') or {}).items())) or 'none found'}).")
        lines.append(f"- The chosen types are in the manifest (`files[].auto.tensor_types`); the command used them as "
                     f"`--tensor-type-file {auto['tensor_type_file']}`.")
    return lines


def render_card(manifest: dict) -> str:
    """README.md for the package directory, from its manifest."""
    title = manifest.get("base_model") or manifest["model"]
    lines = [f"# {manifest['model']}: GGUF quantizations of {title}", ""]
    if manifest.get("note"):
        lines += [manifest["note"], ""]
    lines += ["Every file below was measured against the full-precision reference and passed its quality gate; "
              "files that failed are listed under *Not published* with the reasons.", "", "## Files", ""]
    lines += _files_table(manifest) if manifest["files"] else ["No file passed its gate; nothing is published."]
    lines += run_section(manifest) + _prompt_format(manifest)
    lines += _auto_builds(manifest)
    lines += _recommendations(manifest) + _speed(manifest) + _tensor_error(manifest) + _expert_coverage(manifest)
    lines += _withheld(manifest)
    lines += _how_made(manifest)
    statements = intoto_name(manifest["model"])
    lines += ["", "## Verify", "", "In the folder you downloaded (all files, or the ones you want, with `SHA256SUMS`):", "",
              "```sh", "sha256sum -c SHA256SUMS            # every file",
              "sha256sum -c --ignore-missing SHA256SUMS   # only the files you downloaded", "```", "",
              f"`{statements}` holds one [in-toto](https://in-toto.io) statement per GGUF (unsigned, SLSA provenance "
              "v1): its sha256 as subject, the exact llama-quantize command, and the reference, importance matrix and "
              "llama-quantize binary it was made from, by sha256. `manifest.json` holds the same statements with every "
              "measured figure. With this project, `python -m workflow_scripts.verify_package .` checks all of it and "
              "`--reproduce FILE` rebuilds a file and compares its sha256.",
              "", f"Configuration digest `{manifest['config_sha256']}`; package assembled on {manifest['host']['cpu']} "
              f"({manifest['host']['cpus']} CPUs).", ""]
    return _header(manifest) + "\n" + "\n".join(lines)
