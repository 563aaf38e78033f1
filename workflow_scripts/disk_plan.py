"""Disk each model needs under results/, predicted when the workflow is planned, and checked
against the free space of the results directory's file system before any job starts.

Parameter counts come from headers only: a GGUF source's header (every part of a split one), an
HF directory's safetensors headers (a local source, or a Hub source already fetched into
results/). A Hub source not yet fetched has no known size offline (the Hub's file sizes are not
available without the network): its download and everything made from it are left out of the
sum, and the message says so.

Predicted files, per model (``predict``):

- reference (F16/BF16): 2 bytes per matrix weight, 4 per vector weight (norms stay F32), plus the
  metadata (the GGUF source's own header size; for an HF directory its tokenizer files + 64 KiB);
- each requested build: per matrix, the bits per weight of the file type's base tensor type, or of
  llama.cpp's fallback type where the row length is not a multiple of the base type's block
  (tensor_type_fallback in src/llama-quant.cpp; Q8_0 for a type it does not list); rounded up:
  the token embedding and output at least Q8_0 (llama.cpp gives them Q6_K or Q8_0 in most file
  types), every matrix at least the highest type the build's overrides name, and 15 % more for
  the mixtures (_S/_M/_L/_XS, IQ*_M upgrade some tensors); vectors F32; metadata as the reference;
- imatrix: 8 bytes per matrix column plus 64 KiB (llama-imatrix keeps sums and counts per column);
- reference logits (llama-perplexity --kl-divergence-base, tools/perplexity/perplexity.cpp):
  ``"_logits_"``, n_ctx, n_vocab, n_chunk (20 bytes), the n_chunk × ctx tokens (int32), then for
  every chunk ctx − 1 − ctx/2 rows of nv uint16 with nv = 2·⌈n_vocab/2⌉ + 4;
- package: hard links cost nothing; a build over ``package.split_max_mb`` is written again as parts;
- auto builds: their size by objective (``auto_bytes``), the probes' calibration logits
  (``calibration.probe_window``), and one Q8_0-sized temporary quant of a sensitivity job;
- small files (JSON, texts, logs, checksums): 1 MiB.

Only what does not exist yet counts: a rerun after a finished run needs nothing new. Fallback
builds (made only when a build fails its gates) are not counted, nor the measurements a measured
remedy needs when no auto build needs them too.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from workflow_scripts.calibration import probe_window
from workflow_scripts.errors import UserError

MIB = 1 << 20
SMALL_FILES = MIB
META_EXTRA = 64 * 1024
MIXTURE_MARGIN = 1.15
MIXTURE_SUFFIXES = ("_S", "_M", "_L", "_XS")


@dataclass(frozen=True)
class Tensor:
    name: str
    n_elements: int
    row: int  # values per row (GGUF's innermost dimension)
    matrix: bool


@dataclass(frozen=True)
class Shape:
    """What the prediction needs from a source: its tensors, vocabulary and metadata size."""

    tensors: tuple[Tensor, ...]
    n_vocab: int
    metadata_bytes: int


@dataclass
class ModelNeed:
    """Predicted bytes per file (path → bytes; ``a#b`` is b, counted while file a does not exist)
    and what could not be predicted."""

    model: str
    files: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def missing_bytes(self, base: Path) -> int:
        """Bytes of the predicted files that do not exist yet under ``base``."""
        return sum(size for path, size in self.files.items() if not (base / path.split("#")[0]).exists())


def gguf_shape(paths: Iterable[Path]) -> Shape:
    from workflow_scripts.gguf_header import read_gguf_header

    tensors, n_vocab, meta = [], 0, 0
    for index, path in enumerate(paths):
        header = read_gguf_header(path)
        if index == 0:
            n_vocab = len(header.metadata.get("tokenizer.ggml.tokens", ()))
            meta = min((t.offset for t in header.tensors.values()), default=0)
        for t in header.tensors.values():
            dims = [d for d in t.shape if d > 1]
            tensors.append(Tensor(t.name, t.n_elements, int(t.shape[0]), len(dims) >= 2))
    return Shape(tuple(tensors), n_vocab, meta)


def safetensors_shape(directory: Path) -> Shape:
    tensors = []
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape = [int(d) for d in entry["shape"]]
            tensors.append(Tensor(name, math.prod(shape), shape[-1] if shape else 1,
                                  len([d for d in shape if d > 1]) >= 2))
    config = json.loads((directory / "config.json").read_text())
    n_vocab = int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or 0)
    tokenizer = sum(p.stat().st_size for p in directory.glob("tokenizer*") if p.is_file())
    return Shape(tuple(tensors), n_vocab, tokenizer + META_EXTRA)


def _bits(tensor_type: str) -> float:
    from workflow_scripts.quant_types import bits_per_weight

    return bits_per_weight(tensor_type)


def _matrix_bits(tensor: Tensor, base: str, floor: float) -> float:
    from workflow_scripts.quant_types import ROW_FALLBACK, block_size

    chosen = base if tensor.row % block_size(base) == 0 else ROW_FALLBACK.get(base, "Q8_0")
    bits = max(_bits(chosen), floor)
    if any(key in tensor.name for key in ("embed", "token_embd", "lm_head", "output.weight")):
        bits = max(bits, _bits("Q8_0"))
    return bits


def build_bytes(shape: Shape, quant: str, options: dict[str, Any]) -> int:
    """Predicted size of one llama-quantize output (see the module docstring for the rounding)."""
    from workflow_scripts.quant_types import expected_base_type

    base = expected_base_type(quant)
    named = [*options.get("tensor_types", {}).values(), options.get("output_tensor_type"),
             options.get("token_embedding_type")]
    floor = max((_bits(t) for t in named if t), default=0.0)
    margin = MIXTURE_MARGIN if quant.endswith(MIXTURE_SUFFIXES) and quant != base else 1.0
    total = 0.0
    for tensor in shape.tensors:
        if tensor.matrix:
            total += tensor.n_elements * _matrix_bits(tensor, base, floor) / 8 * margin
        else:
            total += tensor.n_elements * 4
    # + the keys llama-quantize adds (its settings, the imatrix's) and 32-byte alignment per tensor
    return math.ceil(total) + shape.metadata_bytes + META_EXTRA + 32 * len(shape.tensors)


def reference_bytes(shape: Shape) -> int:
    return sum(t.n_elements * (2 if t.matrix else 4) for t in shape.tensors) + shape.metadata_bytes


def logits_bytes(n_vocab: int, chunks: int, ctx: int) -> int:
    """llama-perplexity --kl-divergence-base's file, exactly (chunks: at most the configured ones)."""
    nv = 2 * ((n_vocab + 1) // 2) + 4
    return 20 + chunks * ctx * 4 + chunks * (ctx - 1 - ctx // 2) * nv * 2


def check_logits_file(path: Path) -> None:
    """UserError naming ``path`` unless it is as long as its own header says (llama-perplexity does
    not check its writes: on a full disk it exits 0 with a cut-short file)."""
    with open(path, "rb") as handle:
        head = handle.read(20)
    size = path.stat().st_size
    if len(head) < 20 or head[:8] != b"_logits_":
        raise UserError(f"{path}: not a llama-perplexity logits file (too short or no '_logits_' mark)")
    ctx, n_vocab, chunks = (int.from_bytes(head[i:i + 4], "little", signed=True) for i in (8, 12, 16))
    expected = logits_bytes(n_vocab, chunks, ctx)
    if size != expected:
        raise UserError(f"{path}: {size} bytes, its header (vocabulary {n_vocab}, {chunks} chunks of {ctx}) says "
                        f"{expected}; expected the complete file")


def auto_bytes(shape: Shape, build: Any) -> int:
    """An auto build's size: its stock build's for a bytes_of budget, the weights at target_bpw, and
    at most the Q8_0 file for a KLD target (the menu's usual top)."""
    (key, value), = build.auto["objective"].items()
    if key == "target_bpw":
        weights = sum(t.n_elements for t in shape.tensors)
        return math.ceil(weights * value / 8) + shape.metadata_bytes + META_EXTRA + 32 * len(shape.tensors)
    return build_bytes(shape, value if key == "bytes_of" else "Q8_0", {})


def imatrix_bytes(shape: Shape) -> int:
    return sum(8 * t.row for t in shape.tensors if t.matrix) + META_EXTRA


def source_shape(model: Any, base: Path) -> Shape | None:
    """The source's shape; None for a Hub source not fetched yet (its sizes are not known offline)."""
    from workflow_scripts.gguf_header import resolve_gguf_path
    from workflow_scripts.gguf_split import source_parts

    source = model.source
    if source["type"] == "gguf":
        return gguf_shape(source_parts(base / resolve_gguf_path(source)))
    if source["type"] == "local":
        return safetensors_shape(base / source["path"])
    fetched = base / "results" / model.name / "source" / "hf"
    if (fetched / "config.json").is_file():
        return safetensors_shape(fetched)
    return None


def predict(model: Any, reference_type: str, evaluation: dict, package: dict, base: Path) -> ModelNeed:
    """Every file the model's run makes that is large enough to count, by its path under ``base``."""
    need = ModelNeed(model.name)
    shape = source_shape(model, base)
    name = model.name
    if shape is None:
        need.unknown.append("the Hub download and everything made from it (sizes are not known before the "
                            "download: the Hub's file sizes are not available offline)")
        return need
    ref = f"results/{name}/reference/{name}-{reference_type}.gguf"
    need.files[ref] = reference_bytes(shape)
    if model.imatrix:
        need.files[f"results/{name}/imatrix/{name}.imatrix.gguf"] = imatrix_bytes(shape)
    need.files[f"results/{name}/validate/{name}-reference.logits"] = logits_bytes(
        shape.n_vocab, evaluation["chunks"], evaluation["ctx"])
    split_limit = package.get("split_max_mb", 0) * 1_000_000
    if any(model.builds[b].auto for b in model.quants):  # auto builds: the probes' logits, a sensitivity job's quant
        ctx, chunks = probe_window(model.calibration, evaluation)
        need.files[f"results/{name}/auto/calibration.logits"] = logits_bytes(shape.n_vocab, chunks, ctx)
        need.files[f"results/{name}/auto/sensitivity#temporary quant"] = build_bytes(shape, "Q8_0", {})
    for build_name in model.quants:
        build = model.builds[build_name]
        size = auto_bytes(shape, build) if build.auto else build_bytes(shape, build.type, build.options)
        need.files[f"results/{name}/quant/{name}-{build_name}.gguf"] = size
        if split_limit and size > split_limit:
            need.files[f"results/package/{name}/SHA256SUMS#split {build_name}"] = size
    need.files[f"results/{name}/validation_report.json#small files"] = SMALL_FILES
    return need


def _filesystem_root(path: Path) -> Path:
    """The nearest existing directory at or above ``path`` (results/ may not exist yet)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(needs: list[ModelNeed], base: Path, source_name: str, free_bytes: int | None = None) -> None:
    """Refuse (UserError) when what is still to be made does not fit the results directory's file
    system; every model writes under results/, so their needs add up. ``free_bytes`` replaces the
    measured free space (tests)."""
    results = _filesystem_root(base / "results")
    free = shutil.disk_usage(results).free if free_bytes is None else free_bytes
    missing = {n.model: n.missing_bytes(base) for n in needs}
    total = sum(missing.values())
    if total <= free:
        return
    parts = ", ".join(f"{m}: {gib(b)}" for m, b in missing.items() if b)
    unknown = [n.model for n in needs if n.unknown]
    note = (f"; not counted: the Hub downloads of {', '.join(unknown)} and what is made from them (sizes unknown "
            "before download)") if unknown else ""
    raise UserError(f"{source_name}: not enough disk: the models still need {gib(total)} under {results} ({parts})"
                    f"{note}, the file system has {gib(free)} free; free space, use a results directory on a larger "
                    "disk, evaluate fewer tokens (evaluation.chunks/ctx), or set disk_check: false to start anyway")


def gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB" if size >= 1 << 30 else f"{size / MIB:.1f} MiB"


def used(need: ModelNeed, base: Path) -> dict[str, dict[str, int | None]]:
    """Predicted vs used bytes per predicted file (used: None for a file that is not there)."""
    rows = {}
    for path, size in need.files.items():
        if "#" in path:
            continue
        file = base / path
        rows[path] = {"predicted": size, "used": file.stat().st_size if file.exists() else None}
    return rows


def prediction_json(need: ModelNeed) -> str:
    """The prediction as the disk report rule's parameter (stable: it re-runs only when it changes)."""
    return json.dumps({"model": need.model, "files": need.files, "unknown": need.unknown}, sort_keys=True)


def report(need: ModelNeed, base: Path, out: Path) -> None:
    """results/{model}/disk.json: predicted vs used bytes per file, and the totals of the files made."""
    from workflow_scripts.atomic import atomic_write_text

    rows = used(need, base)
    done = [r for r in rows.values() if r["used"] is not None]
    atomic_write_text(out, json.dumps({
        "model": need.model, "files": rows, "unknown": need.unknown,
        "predicted_bytes": sum(r["predicted"] for r in done),
        "used_bytes": sum(r["used"] for r in done),
    }, indent=2) + "\n")



def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Predicted vs used disk of one model's run")
    parser.add_argument("--predicted", required=True, help="prediction_json's text")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    data = json.loads(ns.predicted)
    report(ModelNeed(data["model"], data["files"], data["unknown"]), Path("."), ns.out)


if __name__ == "__main__":
    from workflow_scripts.errors import run_cli

    run_cli(main)
