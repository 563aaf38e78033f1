"""Recipe check after quantize: the output's tensor types against what was asked, and why they differ.

llama.cpp has silently ignored per-tensor overrides before, and many tensors legitimately get
another type (a K-quant mixture upgrades some tensors on purpose; rows whose length is not a
multiple of the block size fall back to another type). The GGUF itself is the truth about types
(read with gguf-py); llama-quantize's log only supplies the reasons. An override that did not take
effect, and is not explained by a fallback, fails the job.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow_scripts.errors import UserError
from workflow_scripts.llama_tools import parse_quantize_fallbacks, parse_quantize_tensors
from workflow_scripts.quant_types import NO_ROW_FALLBACK, block_size, expected_base_type

CLASSES = ("requested", "recipe_mix", "override", "fallback", "not_quantized", "override_ignored")


@dataclass(frozen=True)
class TensorInfo:
    type: str
    shape: tuple[int, ...]
    n_bytes: int
    n_elements: int


@dataclass
class Recipe:
    """What was asked of llama-quantize: file type plus the user's type overrides."""

    quant: str
    tensor_types: list[tuple[str, str]] = field(default_factory=list)  # (pattern, type), in order
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None

    def override_for(self, name: str) -> tuple[str, str] | None:
        """(which option, type) that applies to ``name``, with llama.cpp's precedence."""
        if self.token_embedding_type and name == "token_embd.weight":
            return "--token-embedding-type", self.token_embedding_type.upper()
        if self.output_tensor_type and name == "output.weight":
            return "--output-tensor-type", self.output_tensor_type.upper()
        for pattern, ttype in self.tensor_types:
            # llama.cpp lower-cases the pattern and applies std::regex_search; first match wins.
            if re.search(pattern.lower(), name):
                return f"--tensor-type {pattern}={ttype}", ttype.upper()
        return None


# The parts of a pattern that llama.cpp's std::regex (ECMAScript, libstdc++) refuses or reads
# otherwise than Python's re, which the census above matches with; one token at a time, so that
# escapes and classes are skipped. Checked against libstdc++ when written.
_REGEX_DIALECT = re.compile(r"""
    (?P<upper>\\[A-Z])                                # \W: lower-cased by llama-quantize into \w
  | (?P<bell>\\a)                                    # \a: a bell to Python, the letter a to std::regex
  | \\.                                               # any other escape
  | \[\^?(?P<empty_class>\])?(?:\\.|(?P<posix>\[[:.=])|[^\]])*\]   # a class
  | (?P<group>\(\?[^:=!])                             # (?<=, (?P<, (?i), (?#, (?>
  | (?P<possessive>(?:[*+?]|\{[0-9]+(?:,[0-9]*)?\})\+)  # a*+
  | (?P<brace>(?:^|(?<=[(|]))\{|\{(?![0-9]+(?:,[0-9]*)?\}))  # a '{' that repeats nothing or is no {n,m}
  | .""", re.VERBOSE | re.DOTALL)
_DIALECT_PROBLEMS = {
    "upper": "llama-quantize lower-cases the pattern, so \\W would become \\w; expected lower case",
    "bell": "\\a is the bell character to Python but the letter a to llama.cpp's std::regex",
    "empty_class": "a class opened by ']' is an empty class to llama.cpp's std::regex, not to Python",
    "posix": "[:...:] in a class is a POSIX class to llama.cpp's std::regex, not to Python",
    "group": "llama.cpp's std::regex (ECMAScript) knows only the groups (...), (?:...) and (?!...)",
    "possessive": "a possessive repeat to Python, not to llama.cpp's std::regex",
    "brace": "llama.cpp's std::regex refuses a '{' that is no {n}, {n,} or {n,m} repeat; expected \\{",
}


def tensor_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` would fail as ``--tensor-type PATTERN=TYPE``, or mean something else to
    llama-quantize than to the census: llama-quantize splits PATTERN at the first '=', lower-cases
    it and compiles it with std::regex; the census compiles the lower-cased text with Python's re."""
    if not pattern:
        return "an empty pattern is no tensor name"
    if not (pattern.isascii() and pattern.isprintable()):
        return "expected printable ASCII (tensor names are ASCII, and llama.cpp's std::regex reads bytes)"
    if "=" in pattern:
        return "llama-quantize takes what follows the first '=' as the type"
    try:
        with warnings.catch_warnings():  # Python's hints about future syntax ([[ ...): the dialect check below words them
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(pattern.lower())
    except re.error as err:
        return f"not a regular expression ({err})"
    for token in _REGEX_DIALECT.finditer(pattern):
        if token.lastgroup:
            return f"{token.group()!r}: {_DIALECT_PROBLEMS[token.lastgroup]}"
    return None


def read_tensor_types(gguf_path: Path) -> dict[str, TensorInfo]:
    """Every tensor of a GGUF with its type, shape (innermost first), bytes and element count."""
    from workflow_scripts.gguf_header import read_gguf_header

    return {t.name: TensorInfo(t.type.name, t.shape, t.n_bytes, t.n_elements)
            for t in read_gguf_header(gguf_path).tensors.values()}


def classify(name: str, info: TensorInfo, recipe: Recipe, base: str, fallbacks: dict,
             converted: dict) -> tuple[str, dict[str, Any]]:
    """The class of one tensor and the details worth recording about it."""
    line = converted.get(name)
    if line is not None and line.target_type is None or (line is None and len(info.shape) == 1):
        # llama-quantize copies a matrix that already has the type asked (an F16 file of an F16
        # reference): it is of the file type's own type, as requested.
        return ("requested" if len(info.shape) > 1 and info.type == base else "not_quantized"), {}
    override = recipe.override_for(name)
    fallback = fallbacks.get(name)
    if override:
        option, wanted = override
        if info.type == wanted:
            return "override", {"option": option, "type": wanted}
        if fallback and fallback.wanted == wanted:
            return "fallback", {"wanted": wanted, "actual": info.type, "reason": fallback.reason, "option": option}
        return "override_ignored", {"option": option, "wanted": wanted, "actual": info.type}
    if fallback:
        return "fallback", {"wanted": fallback.wanted, "actual": info.type, "reason": fallback.reason}
    return ("requested" if info.type == base else "recipe_mix"), {}


def preflight(reference: Path, recipe: Recipe) -> None:
    """Refuse explicit output/embedding types the reference's row length cannot take.

    llama-quantize applies --output-tensor-type and --token-embedding-type without its row-size
    fallback and aborts mid-file (seen with Q6_K on 64 columns); say so before it runs.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    tensors = read_tensor_types(reference)
    explicit = (("output.weight", "output_tensor_type", recipe.output_tensor_type),
                ("token_embd.weight", "token_embedding_type", recipe.token_embedding_type))
    for name, option, ttype in explicit:
        if not ttype or name not in tensors:
            continue
        block = GGML_QUANT_SIZES[GGMLQuantizationType[ttype.upper()]][0]
        ncols = tensors[name].shape[0]
        if ncols % block:
            raise UserError(
                f"quant_options.{recipe.quant}.{option}: {ttype.upper()} needs rows that are a multiple of "
                f"{block} values, but {name} of {Path(reference).name} has {ncols}; llama-quantize would "
                "abort. Choose a type whose block divides the row length (e.g. Q8_0, block 32)"
            )
    base = expected_base_type(recipe.quant)
    if base in NO_ROW_FALLBACK:
        # Every matrix gets the base type, except the output (Q8_0 where the row does not fit; the
        # token embeddings stand for it when the model ties them) and what an override names.
        output = "output.weight" if "output.weight" in tensors else "token_embd.weight"
        block = block_size(base)
        misfits = [name for name, info in tensors.items() if len(info.shape) > 1 and info.shape[0] % block
                   and name != output and not recipe.override_for(name)]
        if misfits:
            raise UserError(
                f"quants: {recipe.quant} needs rows that are a multiple of {block} values and llama.cpp has no "
                f"fallback type for it, but {misfits[0]} of {Path(reference).name} has {tensors[misfits[0]].shape[0]} "
                f"({len(misfits)} tensor(s) in all); llama-quantize would abort. Choose another quant type for this "
                "model, or give those tensors another type (quant_options tensor_types)"
            )


def census(gguf_path: Path, recipe: Recipe, quantize_log: str) -> dict[str, Any]:
    """Tensor-type census of a quantized GGUF checked against its recipe; raises on ignored overrides."""
    base = expected_base_type(recipe.quant)
    tensors = read_tensor_types(gguf_path)
    fallbacks = parse_quantize_fallbacks(quantize_log)
    converted = {line.name: line for line in parse_quantize_tensors(quantize_log)}
    classes: Counter = Counter()
    fallback_list, override_list, ignored = [], [], []
    for name, info in tensors.items():
        kind, details = classify(name, info, recipe, base, fallbacks, converted)
        classes[kind] += 1
        if kind == "fallback":
            fallback_list.append({"tensor": name, "shape": list(info.shape), **details})
        elif kind == "override":
            override_list.append({"tensor": name, **details})
        elif kind == "override_ignored":
            ignored.append(f"{name} (asked {details['wanted']} by {details['option']}, got {details['actual']})")
    if ignored:
        raise UserError(f"{gguf_path}: llama-quantize ignored {len(ignored)} type override(s): "
                        + "; ".join(ignored[:5]) + ("; ..." if len(ignored) > 5 else ""))
    n_bytes = sum(t.n_bytes for t in tensors.values())
    n_params = sum(t.n_elements for t in tensors.values())
    return {
        "quant": recipe.quant,
        "base_type": base,
        "recipe": {"tensor_types": recipe.tensor_types, "output_tensor_type": recipe.output_tensor_type,
                   "token_embedding_type": recipe.token_embedding_type},
        "tensors": len(tensors),
        "parameters": n_params,
        "tensor_bytes": n_bytes,
        "file_bytes": Path(gguf_path).stat().st_size,
        "bits_per_weight": round(8 * n_bytes / n_params, 4) if n_params else None,
        "types": dict(sorted(Counter(t.type for t in tensors.values()).items())),
        "classes": {k: classes.get(k, 0) for k in CLASSES},
        "fallbacks": fallback_list,
        "overrides": override_list,
        "tensor_types": {name: info.type for name, info in tensors.items()},
    }


def recipe_from_args(quant: str, args: list[str]) -> Recipe:
    """The Recipe of a build from its recipe arguments (``Build.recipe``: llama-quantize's type
    override options, in the order llama-quantize gets them)."""
    parser = argparse.ArgumentParser(prog=f"recipe of {quant}", exit_on_error=False)
    parser.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE")
    parser.add_argument("--output-tensor-type")
    parser.add_argument("--token-embedding-type")
    ns = parser.parse_args(args)
    return Recipe(quant, [tuple(t.split("=", 1)) for t in ns.tensor_type], ns.output_tensor_type,
                  ns.token_embedding_type)
