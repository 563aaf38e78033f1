"""Calibration text: checked and copied to the stable path llama.cpp records.

llama-imatrix writes the name of its text file into the imatrix, and llama-quantize copies it into
every quant; a copy under results/{model}/imatrix/ gives the same bytes wherever the checkout or
the user's text lives.

The checks every plan makes of the configured texts (UTF-8, length, overlap of the evaluation text
with a calibration text) read them a block at a time, so memory stays bounded whatever their size,
and ``TextFacts`` keeps what they found keyed by each file's path, size and modification time: a
plan reads a text only after it changed.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Callable, Iterator

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.paths import path_problem

MIN_CHARS = 1000
"""Below this no useful importance statistics can be gathered (well under one 512-token chunk)."""
BLOCK_BYTES = 1 << 20
SHINGLE_WORDS = 8
OVERLAP_EVALUATION_BYTES = 4 << 20
"""How much of the evaluation text the overlap check reads: about a million tokens, more than any
evaluation uses (its reference logits would take tens of GB at a 32k vocabulary)."""
FACTS_VERSION = 1  # raise it when what TextFacts stores, or how it is computed, changes


@dataclass(frozen=True)
class TextScan:
    """What one pass over a text file finds: its length in characters without leading and trailing
    whitespace, and the offset of its first byte that is not UTF-8 (None when there is none)."""

    chars: int
    bad_byte: int | None = None


class _NotUtf8(Exception):
    """The byte at offset ``args[0]`` is not UTF-8."""


def probe_window(calibration: dict[str, int], evaluation: dict[str, int]) -> tuple[int, int]:
    """Context and chunks of the probes' KL divergence on the calibration text: the evaluation's
    context and half its chunks (the demo's rises are 20 to 700 times their error at 10 chunks, so
    half loses no probe and keeps the search near the cost of ten validations), within what the
    calibration text holds (its chunks × ctx tokens)."""
    ctx = min(evaluation["ctx"], calibration["ctx"])
    return ctx, max(1, min((evaluation["chunks"] + 1) // 2, calibration["chunks"] * calibration["ctx"] // ctx))


def _blocks(path: Path | str, limit: int | None = None) -> Iterator[str]:
    """The file decoded as UTF-8 a block at a time (its first ``limit`` bytes, a character cut
    there left out); raises _NotUtf8 at the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        while True:
            data = handle.read(BLOCK_BYTES if limit is None else min(BLOCK_BYTES, limit - offset))
            pending = len(decoder.getstate()[0])  # bytes of a character the last block cut
            try:
                text = decoder.decode(data, final=not data and limit is None)
            except UnicodeDecodeError as err:
                raise _NotUtf8(offset - pending + err.start) from None
            yield text
            if not data:
                return
            offset += len(data)


def scan_text(path: Path | str) -> TextScan:
    """One pass over the file, a block at a time."""
    first = end = None
    seen = 0
    try:
        for block in _blocks(path):
            if block.strip():
                first = seen + len(block) - len(block.lstrip()) if first is None else first
                end = seen + len(block.rstrip())
            seen += len(block)
    except _NotUtf8 as err:
        return TextScan(0, err.args[0])
    return TextScan(end - first if first is not None else 0)


def check_scan(path: Path | str, what: str, scan: TextScan) -> None:
    """Refuse a text that is not UTF-8 or is too short to be worth computing anything on."""
    if scan.bad_byte is not None:
        raise UserError(f"{path}: {what} is not UTF-8 (byte {scan.bad_byte}); expected a UTF-8 text file")
    if scan.chars < MIN_CHARS:
        raise UserError(f"{path}: {what} has {scan.chars} characters; expected at least {MIN_CHARS}")


def read_text(path: Path | str, what: str = "calibration text") -> str:
    """The file as UTF-8 text, or a UserError naming the file and the problem (``what`` the text is for)."""
    if problem := path_problem(path):
        raise UserError(f"{path}: {what} {problem}")
    check_scan(path, what, scan_text(path))
    return Path(path).read_bytes().decode("utf-8")


def _words(path: Path | str, limit: int | None = None) -> Iterator[list[str]]:
    """The file's words, lower-cased, a block at a time (a word cut by a block's end is carried to
    the next block, so the words are those of the whole text)."""
    carry = ""
    for block in _blocks(path, limit):
        text, carry = carry + block, ""
        if text and not text[-1].isspace():
            *head, carry = text.rsplit(None, 1)
            text = head[0] if head else ""
        yield text.lower().split()
    yield carry.lower().split()


def _shingles(path: Path | str, limit: int | None = None) -> Iterator[Iterator[tuple[str, ...]]]:
    """Every run of SHINGLE_WORDS consecutive words of the file (the unit of the overlap check), a
    block at a time."""
    tail: list[str] = []
    for words in _words(path, limit):
        run = tail + words
        yield zip(*(run[k:] for k in range(SHINGLE_WORDS)))
        tail = run[-(SHINGLE_WORDS - 1):]


def overlap_fraction(calibration: Path | str, evaluation: Path | str) -> float:
    """Share of the evaluation text's 8-word sequences (in its first OVERLAP_EVALUATION_BYTES) that
    also occur in the calibration text.

    Evaluating on text the imatrix was computed on flatters the quant; a few shared boilerplate
    phrases are harmless, whole shared paragraphs are not. Memory holds the evaluation text's
    sequences, by their 64-bit hash (a false match is vanishingly unlikely), and one block of the
    calibration text.
    """
    held_out: set[int] = set()
    for shingles in _shingles(evaluation, OVERLAP_EVALUATION_BYTES):
        held_out.update(map(hash, shingles))
    found: set[int] = set()
    for shingles in _shingles(calibration):
        found.update(held_out.intersection(map(hash, shingles)))
    return len(found) / len(held_out) if held_out else 0.0


class TextFacts:
    """What the checks that read whole texts found (``scan_text``, ``overlap_fraction``), kept in a
    small JSON file keyed by each file's real path, size and modification time in nanoseconds: the
    first plan after a text changes reads it, later plans only stat it. Only a cache: a store that
    cannot be read or written means reading the texts again."""

    def __init__(self, store: Path | str):
        self.store = Path(store)
        try:
            entries = json.loads(self.store.read_text())
        except (OSError, ValueError):
            entries = None
        self.entries = entries if isinstance(entries, dict) and entries.get("version") == FACTS_VERSION \
            else {"version": FACTS_VERSION}

    def _get(self, what: str, paths: list[str], compute: Callable[[], object]):
        key = json.dumps([what, *paths])
        stamp = [[st.st_size, st.st_mtime_ns] for st in map(os.stat, paths)]
        entry = self.entries.get(key)
        if not isinstance(entry, dict) or entry.get("stamp") != stamp:
            entry = self.entries[key] = {"stamp": stamp, "value": compute()}
            try:
                atomic_write_text(self.store, json.dumps(self.entries))
            except OSError:
                pass
        return entry["value"]

    def scan(self, path: Path | str) -> TextScan:
        path = os.path.realpath(path)
        return TextScan(*self._get("scan", [path], lambda: astuple(scan_text(path))))

    def overlap(self, calibration: Path | str, evaluation: Path | str) -> float:
        paths = [os.path.realpath(calibration), os.path.realpath(evaluation)]
        return self._get("overlap", paths, lambda: overlap_fraction(*paths))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    ns = parser.parse_args(argv)
    atomic_write_text(ns.dst, read_text(ns.src))


if __name__ == "__main__":
    run_cli(main)
