"""Assemble a model's publishable package: the GGUFs that passed, checksums, manifest, model card.

Only the build that ships for each requested quant (passed quality in the validation report and
size/speed in the speed report: its ``ships``) enters ``results/package/{model}/``; failed builds
stay in the reports and out of the package. Each is named by the requested quant it ships for,
``{model}-{LABEL}.gguf`` (a passing fallback IQ4_XS-sensitive is ``{model}-IQ4_XS.gguf``), the tag
llama.cpp's ``-hf REPO:LABEL``, Ollama and LM Studio look for; the imatrix keeps "imatrix" in its
name, which llama.cpp never offers as a model. Files are
hard-linked, not copied (no second copy of many GB). The manifest records every input by digest
and an in-toto provenance statement per GGUF (also ``{model}.intoto.jsonl``, one line each, for
in-toto tooling), so ``verify_package`` can re-check it all and
``reproduce`` can re-run a file's exact command. A file over ``split_max_mb`` (the Hub takes at
most 50 GB per file) is published as llama-gguf-split parts, each checksummed. The directory is built under a temporary name
and renamed when complete: a half-written package never looks finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from workflow_scripts.checksums import read_sidecar, sha256_file, verify
from workflow_scripts.chat_template import gguf_templates
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_census import recipe_from_args
from workflow_scripts.gguf_header import read_gguf_header
from workflow_scripts.model_card import render_card
from workflow_scripts.names import package_file
from workflow_scripts.provenance import dependency, host_info, statement, tool_versions
from workflow_scripts.tool_step import tool_path
from workflow_scripts.verify_package import intoto_lines, intoto_name, verify_package

METRIC_KEYS = ("file_bytes", "bits_per_weight", "ppl", "ppl_error", "delta_ppl_pct", "kld_mean", "kld_median",
               "kld_p99", "kld_max", "same_top_pct", "rms_dp_pct", "types", "fallbacks")


def config_digest(settings: dict, inputs: dict[str, str]) -> str:
    """SHA-256 of what decides the package's bytes and verdicts (settings plus input digests),
    independent of where the checkout or the results live."""
    canonical = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def recipe_text(file_type: str, recipe: list[str]) -> str:
    """A build's recipe in words, as the card's files table shows it: ``IQ4_XS with attn_v Q8_0,
    ffn_down Q6_K, output Q8_0, token_embd Q8_0`` (the type alone without overrides)."""
    parsed = recipe_from_args(file_type, recipe)
    raised = [f"{pattern} {ttype}" for pattern, ttype in parsed.tensor_types]
    raised += [f"{tensor} {ttype}" for tensor, ttype in (("output", parsed.output_tensor_type),
                                                         ("token_embd", parsed.token_embedding_type)) if ttype]
    return file_type + (f" with {', '.join(raised)}" if raised else "")


def auto_recipe_text(file_type: str, recipe: dict) -> str:
    """An auto build's recipe in words: ``auto within the bytes of Q4_K_M (Q4_K_M file type): Q5_0
    ×150, Q4_K ×30, Q8_0 ×2`` (tensors per chosen type, most first)."""
    (key, value), = recipe["objective"].items()
    within = {"bytes_of": f"within the bytes of {value}", "target_bpw": f"at {value} bits per weight",
              "max_mean_kld": f"for predicted mean KLD {value}",
              "raise_from": f"raised from {value}'s types within {recipe.get('allowance_pct', 0):g} % more bytes"}[key]
    counts = sorted(recipe["types"].items(), key=lambda item: (-item[1], item[0]))
    return f"auto {within} ({file_type} file type): " + ", ".join(f"{t} ×{n}" for t, n in counts)


def auto_record(recipe: dict, tensor_types_path: str, build: dict) -> dict[str, Any]:
    """What the manifest keeps of an auto build's search: objective, budget, prediction, the
    per-group scales, the types chosen for every tensor and which moved against the stock build."""
    keys = ("objective", "budget_bytes", "n_bytes", "bits_per_weight", "base_kld_mean", "predicted_kld_mean", "alphas",
            "types", "moved", "excluded", "allowance_pct", "start_bytes", "start_predicted_kld_mean", "unmeasured")
    return {**{key: recipe.get(key) for key in keys}, "menu": build["auto"]["menu"],
            "source_types": build["auto"]["source_types"], "tensor_type_file": tensor_types_path,
            "tensor_types": {name: t["type"] for name, t in recipe["tensors"].items()}}


def _file_entry(name: str, label: str, build: str, entry: dict, digest: str, command: list[str],
                dependencies: list[dict], builder: dict) -> dict[str, Any]:
    return {
        "file": name,
        "label": label,
        "sha256": digest,
        "build": build,
        "requested_as": entry["build"]["requested_as"],
        "type": entry["build"]["type"],
        "imatrix": entry["build"]["imatrix"],
        "recipe": entry["build"]["recipe"],
        "recipe_text": recipe_text(entry["build"]["type"], entry["build"]["recipe"]),
        "metrics": {key: entry.get(key) for key in METRIC_KEYS},
        "gate": entry["gate"],
        "verdict": entry["verdict"],
        "sanity": entry["sanity"],
        "tensor_error": entry.get("tensor_error"),
        "command": command,
        "provenance": statement(name, digest, command, dependencies, builder),
    }


def manifest(settings: dict, report: dict, speed: dict, stamp: dict, records: dict[str, Any],
             digests: dict[str, str], parts: dict[str, list[dict]], templates: dict[str, str]) -> dict:
    """The package's manifest: inputs by digest, toolchain, gates and metrics per shipped file.

    ``records`` holds the source, convert, and reference records; ``digests`` the sha256 of every
    input (reference, imatrix, texts) and of each shipped GGUF under its file name; ``templates``
    the chat templates the GGUFs carry (for the card's prompt format).
    """
    model = settings["model"]
    binary = stamp["binaries_sha256"]["llama-quantize"]
    builder = {"id": "gguf-forge", "version": {"llama.cpp": stamp.get("llama_cpp_commit"),
                                                 "llama-cpp-python": stamp.get("llama_cpp_python_version")}}
    base_dependencies = [dependency(settings["reference_path"], digests["reference"],
                                    method=records["convert"]["method"])]
    if settings["imatrix_path"]:
        base_dependencies.append(dependency(settings["imatrix_path"], digests["imatrix"],
                                            calibration_sha256=digests["calibration"]))
    base_dependencies.append(dependency("llama-quantize", binary, llama_cpp_commit=stamp.get("llama_cpp_commit"),
                                        cmake_args=stamp.get("cmake_args"), source_patches=stamp.get("source_patches")))
    files = []
    for quant, build in speed["ships"].items():
        if build is None:
            continue
        entry = report["quants"][build]
        name = package_file(model, quant)  # named by the label it ships under, whichever build it is
        deps = [d for d in base_dependencies if entry["build"]["imatrix"] or d["name"] != settings["imatrix_path"]]
        auto = settings["auto"].get(build)
        if auto:  # the chosen types are an input of the command like the reference
            deps.append(dependency(auto["tensor_types"], digests[auto["tensor_types"]]))
        command = [name if arg == "{out}" else arg for arg in settings["commands"][build]]
        record = {**_file_entry(name, quant, build, entry, digests[name], command, deps, builder),
                  "speed": speed["builds"][build]}
        if auto:
            recipe = records["auto"][build]
            record["recipe_text"] = auto_recipe_text(entry["build"]["type"], recipe)
            record["auto"] = auto_record(recipe, auto["tensor_types"], entry["build"])
        if name in parts:  # published as parts; the statement names them too
            record["parts"] = parts[name]
            record["provenance"]["subject"] += [{"name": p["file"], "digest": {"sha256": p["sha256"]}} for p in parts[name]]
        files.append(record)
    withheld = []
    for quant, tried in report["attempts"].items():
        if speed["ships"][quant] is None:
            reasons = {b: report["quants"][b]["reasons"] for b in tried}
            if report["ships"][quant]:  # passed on quality, missed a size or speed gate
                reasons[report["ships"][quant]] = speed["withheld"][quant]
            skipped = report.get("skipped", {}).get(quant)  # remedies never built: they changed no tensor's type
            withheld.append({"quant": quant, "tried": tried, "reasons": reasons, **({"skipped": skipped} if skipped else {})})
    inputs = {k: v for k, v in digests.items() if not k.endswith(".gguf")}
    source = records["source"]
    return {
        "model": model,
        # an hf source names the original model; a configured base_model wins (a fine-tune's own repository)
        "base_model": settings.get("base_model") or (source["identity"]["repo_id"] if source["type"] == "hf" else None),
        "license": settings.get("license"),
        "note": settings.get("note"),
        "quantized_by": settings["quantized_by"],
        "repo_id": settings.get("repo_id"),
        "chat_templates": templates,
        "chat_template_check": report.get("chat_template"),
        "source": {"type": records["source"]["type"], "identity": records["source"].get("identity"),
                   "files": [{"name": Path(f["path"]).name, "sha256": f["sha256"], "size": f["size"]}
                             for f in records["source"]["files"]]},
        "reference": {"type": settings["reference_type"], "sha256": digests["reference"],
                      "method": records["convert"]["method"], "note": records["convert"].get("note")},
        "calibration": {**settings["calibration"], "sha256": digests["calibration"]} if settings["calibration"] else None,
        "evaluation": {**settings["evaluation"], "sha256": digests["evaluation"], "reference_ppl": report["reference"]},
        "imatrix": {"file": Path(settings["imatrix_path"]).name, "sha256": digests["imatrix"],
                    "expert_coverage": report.get("imatrix_coverage")}
        if settings["imatrix_path"] else None,
        "toolchain": {key: stamp.get(key) for key in ("llama_cpp_commit", "llama_cpp_python_version", "backend",
                                                        "cmake_args", "source_patches", "deterministic_fp")}
        | {"llama_quantize_sha256": binary},
        "files": files,
        "withheld": withheld,
        "invariants": report["invariants"],
        "sanity": report.get("sanity"),  # the reference's own result and the prompts that could not discriminate
        "reference_speed": speed["reference"],
        "speed_hosts": speed["hosts"],
        "recommendations": speed["recommendations"],
        "split_max_mb": settings["split_max_mb"],
        "config_sha256": config_digest(settings, inputs),
        "host": host_info(),
        "tools": tool_versions(),
    }


def split(stamp_path: Path, gguf: Path, directory: Path, max_mb: int, name: str) -> list[dict]:
    """Split a file over the per-file limit with llama-gguf-split into parts of the package file
    ``name`` ({stem}-00001-of-0000n.gguf); the parts' names and digests."""
    stem = Path(name).stem
    prefix = directory / stem
    cmd = [str(tool_path(stamp_path, "llama-gguf-split")), "--split", "--split-max-size", f"{max_mb}M", str(gguf), str(prefix)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"llama-gguf-split failed on {gguf}: {proc.stderr[-2000:]}")
    # llama-gguf-split's part names exactly: a looser glob would take build Q4_K_M-a-of-b's file for a part of Q4_K_M.
    found = sorted(directory.glob(f"{stem}-{'[0-9]' * 5}-of-{'[0-9]' * 5}.gguf"))
    return [{"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in found]


def _link(src: Path, dest: Path) -> None:
    """Hard link (same file system under results/); a copy only where links are impossible."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def assemble(settings: dict, report_path: Path, speed_path: Path, stamp_path: Path, quant_dir: Path,
             records: dict[str, Path], texts: dict[str, Path], out: Path) -> dict:
    """Write the package directory ``out`` (replacing an earlier one only when complete)."""
    report = json.loads(report_path.read_text())
    speed = json.loads(speed_path.read_text())
    stamp = json.loads(stamp_path.read_text())
    loaded = {key: json.loads(path.read_text()) for key, path in records.items()}
    digests = {"reference": read_sidecar(settings["reference_path"]),
               **{key: sha256_file(path) for key, path in texts.items()}}
    if settings["imatrix_path"]:
        digests["imatrix"] = verify(settings["imatrix_path"])
    # package file name -> the build's file it holds
    shipped = {package_file(settings["model"], label): quant_dir / f"{settings['model']}-{build}.gguf"
               for label, build in speed["ships"].items() if build is not None}
    for name, path in shipped.items():
        digests[name] = verify(path)
    loaded["auto"] = {}
    for build, paths in settings["auto"].items():  # auto builds that ship: their search and chosen types
        if build in speed["ships"].values():
            loaded["auto"][build] = json.loads(Path(paths["recipe"]).read_text())
            digests[paths["tensor_types"]] = sha256_file(paths["tensor_types"])
    templates = gguf_templates(read_gguf_header(settings["reference_path"]).metadata)  # the quants copy them
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    parts: dict[str, list[dict]] = {}
    for name, path in shipped.items():
        if path.stat().st_size > settings["split_max_mb"] * 1_000_000:
            parts[name] = split(stamp_path, path, partial, settings["split_max_mb"], name)
        else:
            _link(path, partial / name)
    if settings["imatrix_path"]:
        _link(Path(settings["imatrix_path"]), partial / Path(settings["imatrix_path"]).name)
    result = manifest(settings, report, speed, stamp, loaded, digests, parts, templates)
    (partial / "manifest.json").write_text(json.dumps(result, indent=2) + "\n")
    (partial / "README.md").write_text(render_card(result))
    statements = intoto_name(settings["model"])
    (partial / statements).write_text(intoto_lines(result))
    listed = {}
    for entry in result["files"]:
        listed.update({part["file"]: part["sha256"] for part in entry["parts"]} if entry.get("parts")
                      else {entry["file"]: entry["sha256"]})
    if result["imatrix"]:
        listed[result["imatrix"]["file"]] = digests["imatrix"]
    listed.update({name: sha256_file(partial / name) for name in ("manifest.json", "README.md", statements)})
    (partial / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(listed.items())))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings-json", required=True, help="the model's plan: builds, commands, paths, card fields")
    parser.add_argument("--report", type=Path, required=True, help="validation_report.json (quality)")
    parser.add_argument("--speed", type=Path, required=True, help="speed_report.json (size/speed gates, recommendations)")
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--quant-dir", type=Path, required=True)
    parser.add_argument("--source-json", type=Path, required=True)
    parser.add_argument("--convert-json", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, help="the calibration text the imatrix was made from")
    parser.add_argument("--evaluation", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    texts = {"evaluation": ns.evaluation} | ({"calibration": ns.calibration} if ns.calibration else {})
    result = assemble(json.loads(ns.settings_json), ns.report, ns.speed, ns.stamp, ns.quant_dir,
                      {"source": ns.source_json, "convert": ns.convert_json}, texts, ns.out)
    print(f"{ns.out}: {len(result['files'])} GGUF files; withheld (no build passed): "
          f"{', '.join(w['quant'] for w in result['withheld']) or 'none'}")
    verify_package(ns.out)  # checked as a downloader checks it, before the job counts as done
    print(f"{ns.out}: the files and the manifest match SHA256SUMS and the provenance")


if __name__ == "__main__":
    run_cli(main)
