"""Calibration text: checked and copied to the stable path llama.cpp records.

llama-imatrix writes the name of its text file into the imatrix, and llama-quantize copies it into
every quant; a copy under results/{model}/imatrix/ gives the same bytes wherever the checkout or
the user's text lives.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.errors import UserError, run_cli

MIN_CHARS = 1000
"""Below this no useful importance statistics can be gathered (well under one 512-token chunk)."""


def read_text(path: Path, what: str = "calibration text") -> str:
    """The file as UTF-8 text, or a UserError naming the file and the problem (``what`` the text is for)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} does not exist") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: {what} is not UTF-8 (byte {err.start}); expected a UTF-8 text file") from None
    if len(text.strip()) < MIN_CHARS:
        raise UserError(f"{path}: {what} has {len(text.strip())} characters; expected at least {MIN_CHARS}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    ns = parser.parse_args(argv)
    atomic_write_text(ns.dst, read_text(ns.src))


if __name__ == "__main__":
    run_cli(main)


SHINGLE_WORDS = 8


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words (lower-cased), the unit of the overlap check."""
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def overlap_fraction(calibration: str, evaluation: str) -> float:
    """Share of the evaluation text's 8-word sequences that also occur in the calibration text.

    Evaluating on text the imatrix was computed on flatters the quant; a few shared boilerplate
    phrases are harmless, whole shared paragraphs are not.
    """
    held_out = shingles(evaluation)
    return len(held_out & shingles(calibration)) / len(held_out) if held_out else 0.0
