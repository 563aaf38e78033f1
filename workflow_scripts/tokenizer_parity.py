"""Tokenizer parity right after convert: the GGUF must tokenize exactly like its source.

Converters have silently written wrong tokenizers (lost digit splitting, wrong BOS/EOS, BPE read as
Unigram), and a GGUF with a wrong tokenizer passes every other check. So the converted reference
is tokenized by llama.cpp itself (through llama-cpp-python on the toolchain's own library) and
compared, id for id, with the source: the HF tokenizer for HF-format sources, or the source GGUF's
own llama.cpp tokenizer (plus every ``tokenizer.*`` metadata value) for GGUF sources.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_header import StringArray, read_gguf_header

EDGE_CASES = (
    "1234567890 3.14159 -42 1,000,000 2026-11-23 0x1F",
    "a  b   c    d\t\te\n\nf\r\n",
    " leading space",
    "   three leading spaces and trailing   ",
    "\n\n\nnewlines first",
    "Café, naïve, Straße, øre, Ångström, Ελληνικά, русский",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🙂👍🏽 and 🇪🇺 flags",
    "עברית ו-العربية (right to left)",
    "combining: e\u0301 a\u0308 n\u0303",
    "x",
    "def f(x):\n    return x ** 2  # comment\n",
    "<html><body>tags</body></html> {\"json\": [1, 2]}",
)

WINDOW = 4


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing id (or the shorter length when one is a prefix), else None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def texts_to_compare(text: str, special_tokens: Sequence[str]) -> list[str]:
    """Paragraphs of the calibration text, the edge cases, and special tokens inside sentences."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    specials = [f"Before {tok} after." for tok in special_tokens if tok]
    return paragraphs + list(EDGE_CASES) + specials


def load_llama_vocab(gguf_path: Path):
    """A vocab-only llama-cpp-python model (the toolchain's libllama must be on LLAMA_CPP_LIB_PATH)."""
    from llama_cpp import Llama

    return Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)


def llama_token_ids(model, texts: Sequence[str]) -> list[list[int]]:
    return [model.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]


def hf_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def gguf_tokenizer_metadata(gguf_path: Path) -> dict[str, Any]:
    """Every ``tokenizer.*`` key of a GGUF with its value (string arrays decoded), as gguf-py's
    ``GGUFReader`` gives them, from the one-pass header reader: gguf-py parses every tensor and
    token into objects (18 s per file for a 262,144-token vocabulary), this reads only the header."""
    header = read_gguf_header(gguf_path)
    return {k: header.strings(k) if isinstance(v, StringArray) else v
            for k, v in header.metadata.items() if k.startswith("tokenizer.")}


def control_tokens(metadata: dict[str, Any]) -> list[str]:
    """Text of the control tokens (token type 3), e.g. <|im_start|>, from GGUF metadata."""
    tokens = metadata.get("tokenizer.ggml.tokens", [])
    types = metadata.get("tokenizer.ggml.token_type", [])
    return [tok for tok, kind in zip(tokens, types) if kind == 3]


def describe_mismatch(text: str, ref: list[int], got: list[int], pos: int,
                      decode: Callable[[list[int]], list[str]]) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"text {shown!r}: " + difference_at(ref, got, pos, decode)


def difference_at(ref: list[int], got: list[int], pos: int, decode: Callable[[list[int]], list[str]],
                  sides: tuple[str, str] = ("reference", "GGUF")) -> str:
    """The first differing position of two id lists, with both sides' ids and pieces around it."""
    lo, hi = max(0, pos - WINDOW), pos + WINDOW
    return (f"first difference at token {pos} ({sides[0]} has {len(ref)} tokens, {sides[1]} has {len(got)}); "
            f"{sides[0]} ids[{lo}:{hi}] = {ref[lo:hi]} {decode(ref[lo:hi])}, "
            f"{sides[1]} ids[{lo}:{hi}] = {got[lo:hi]} {decode(got[lo:hi])}")


def compare(texts: Sequence[str], reference: list[list[int]], candidate: list[list[int]],
            decode: Callable[[list[int]], list[str]]) -> dict[str, Any]:
    """Report of an id-for-id comparison; raises UserError at the first mismatching text."""
    for text, ref, got in zip(texts, reference, candidate):
        pos = first_difference(ref, got)
        if pos is not None:
            raise UserError("tokenizer parity failed: " + describe_mismatch(text, ref, got, pos, decode))
    return {"texts": len(texts), "tokens_compared": sum(len(r) for r in reference)}


def token_pieces(model) -> Callable[[list[int]], list[str]]:
    """Each id's text, special tokens (<|im_end|>) included."""
    return lambda ids: [model.detokenize([i], special=True).decode("utf-8", errors="replace") for i in ids]


def check_against_gguf(gguf: Path, reference_gguf: Path, text: str) -> dict[str, Any]:
    """Parity of a reference made from another GGUF: same metadata, same ids."""
    got_meta, ref_meta = gguf_tokenizer_metadata(gguf), gguf_tokenizer_metadata(reference_gguf)
    differing = sorted(k for k in set(got_meta) | set(ref_meta) if got_meta.get(k) != ref_meta.get(k))
    if differing:
        raise UserError(f"tokenizer parity failed: {gguf} differs from {reference_gguf} in tokenizer "
                        f"metadata {', '.join(differing)}")
    model, ref_model = load_llama_vocab(gguf), load_llama_vocab(reference_gguf)
    texts = texts_to_compare(text, control_tokens(ref_meta))
    report = compare(texts, llama_token_ids(ref_model, texts), llama_token_ids(model, texts), token_pieces(model))
    special = {"bos": (ref_model.token_bos(), model.token_bos()), "eos": (ref_model.token_eos(), model.token_eos())}
    _check_special(special)
    return {**report, "reference": str(reference_gguf), "metadata_keys_equal": len(got_meta),
            "bos_id": special["bos"][1], "eos_id": special["eos"][1]}


def check_against_hf(gguf: Path, hf_dir: Path, text: str) -> dict[str, Any]:
    """Parity of a reference converted from an HF-format directory with its HF tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = load_llama_vocab(gguf)
    texts = texts_to_compare(text, tokenizer.all_special_tokens)
    report = compare(texts, hf_token_ids(tokenizer, texts), llama_token_ids(model, texts), token_pieces(model))
    special = {"bos": (tokenizer.bos_token_id, model.token_bos()), "eos": (tokenizer.eos_token_id, model.token_eos())}
    _check_special(special)
    hf_adds_bos = bool(getattr(tokenizer, "add_bos_token", False))
    gguf_adds_bos = bool(gguf_tokenizer_metadata(gguf).get("tokenizer.ggml.add_bos_token", hf_adds_bos))
    if hf_adds_bos != gguf_adds_bos:
        raise UserError(f"tokenizer parity failed: the HF tokenizer {'adds' if hf_adds_bos else 'does not add'} "
                        f"BOS by default but {gguf} says add_bos_token={gguf_adds_bos}")
    return {**report, "reference": str(hf_dir), "bos_id": special["bos"][1], "eos_id": special["eos"][1],
            "adds_bos": gguf_adds_bos}


def _check_special(pairs: dict[str, tuple[int | None, int]]) -> None:
    for name, (ref, got) in pairs.items():
        if ref is not None and ref != got:
            raise UserError(f"tokenizer parity failed: {name.upper()} id is {got} in the GGUF but {ref} in the reference")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--hf-dir", type=Path)
    group.add_argument("--reference-gguf", type=Path)
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    for path in ns.verify:
        verify(path)
    os.environ["LLAMA_CPP_LIB_PATH"] = json.loads(ns.stamp.read_text())["bin_dir"]
    text = ns.text.read_text(encoding="utf-8")
    if ns.hf_dir:
        report = check_against_hf(ns.gguf, ns.hf_dir, text)
    else:
        report = check_against_gguf(ns.gguf, ns.reference_gguf, text)
    report["verdict"] = "identical"
    atomic_write_text(ns.out, json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"{ns.gguf}: tokenizer parity ok on {report['texts']} texts, {report['tokens_compared']} tokens")


if __name__ == "__main__":
    run_cli(main)
