"""Text checks read a block at a time and give what the whole text gives; TextFacts remembers them."""

import json
import os
import random

import pytest

from workflow_scripts import calibration
from workflow_scripts.calibration import TextFacts, TextScan, overlap_fraction, scan_text

# Words whose lower case depends on their neighbours (a final sigma), grows (İ), or is cut by a
# small block inside a character; separators including Unicode ones str.split knows.
PIECES = ["a", "b", "ΑΣ", "Σa", "é", "İ", "z", "x\u2028y", "€"]
SEPARATORS = [" ", "\n", "\t", "", "  "]


def _whole_text_overlap(calibration_text: str, evaluation_text: str) -> float:
    """The overlap's definition on whole texts in memory (what the block-wise check must give)."""
    def shingles(text):
        words = text.lower().split()
        return {tuple(words[i:i + 8]) for i in range(len(words) - 7)}
    held_out = shingles(evaluation_text)
    return len(held_out & shingles(calibration_text)) / len(held_out) if held_out else 0.0


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_block_by_block_checks_give_what_the_whole_text_gives(tmp_path, monkeypatch, block):
    monkeypatch.setattr(calibration, "BLOCK_BYTES", block)
    rng = random.Random(block)
    for _ in range(40):
        def text():
            return "".join(rng.choice(PIECES) + rng.choice(SEPARATORS) for _ in range(rng.randint(0, 120)))
        cal = text()
        ev = text() + cal[:rng.randint(0, len(cal))]
        (tmp_path / "cal.txt").write_text(cal)
        (tmp_path / "eval.txt").write_text(ev)
        assert overlap_fraction(tmp_path / "cal.txt", tmp_path / "eval.txt") == _whole_text_overlap(cal, ev)
        assert scan_text(tmp_path / "cal.txt") == TextScan(len(cal.strip()))
        data = cal.encode() + b"\xff" + ev.encode()
        (tmp_path / "bad.txt").write_bytes(data)
        assert scan_text(tmp_path / "bad.txt") == TextScan(0, len(cal.encode()))
    (tmp_path / "cut.txt").write_bytes("ab€".encode()[:-1])  # a file that ends inside a character
    assert scan_text(tmp_path / "cut.txt") == TextScan(0, 2)


def test_only_the_start_of_a_long_evaluation_text_is_compared(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "OVERLAP_EVALUATION_BYTES", 100)
    words = " ".join(f"w{i}" for i in range(200))
    (tmp_path / "cal.txt").write_text(words[100:])
    (tmp_path / "eval.txt").write_text(words)
    assert overlap_fraction(tmp_path / "cal.txt", tmp_path / "eval.txt") == 0.0
    (tmp_path / "cal.txt").write_text(words[:100])
    assert overlap_fraction(tmp_path / "cal.txt", tmp_path / "eval.txt") == 1.0


def test_text_facts_read_a_text_once_until_it_changes(tmp_path, monkeypatch):
    store = tmp_path / ".snakemake" / "gguf-forge" / "texts.json"
    cal, ev = tmp_path / "cal.txt", tmp_path / "eval.txt"
    cal.write_text("one two three four five six seven eight nine " * 200)
    ev.write_text("one two three four five six seven eight " * 200)
    first = (TextFacts(store).scan(cal), TextFacts(store).overlap(cal, ev))
    assert first == (TextScan(len(cal.read_text().strip())), 1 / 8)  # of 8 distinct sequences, one

    def read(*args):
        raise AssertionError("read again")
    monkeypatch.setattr(calibration, "scan_text", read)
    monkeypatch.setattr(calibration, "overlap_fraction", read)
    assert (TextFacts(store).scan(cal), TextFacts(store).overlap(cal, ev)) == first  # a later plan: stat only
    monkeypatch.undo()
    ev.write_text("ten eleven twelve thirteen fourteen fifteen sixteen seventeen " * 200)
    os.utime(ev, ns=(1, 1))  # a different mtime even on a coarse clock
    assert TextFacts(store).overlap(cal, ev) == 0.0
    assert len(json.loads(store.read_text())) == 3  # version, one scan, one overlap (replaced)


def test_a_damaged_store_only_means_reading_again(tmp_path):
    store = tmp_path / "texts.json"
    store.write_text('{"version": 1, "["')
    (tmp_path / "t.txt").write_text("x" * 2000)
    assert TextFacts(store).scan(tmp_path / "t.txt") == TextScan(2000)
    assert json.loads(store.read_text())["version"] == calibration.FACTS_VERSION


def test_the_probe_window_is_half_the_evaluation_within_the_calibration_text():
    from workflow_scripts.calibration import probe_window

    assert probe_window({"chunks": 20, "ctx": 512}, {"chunks": 10, "ctx": 512}) == (512, 5)
    assert probe_window({"chunks": 20, "ctx": 512}, {"chunks": 7, "ctx": 256}) == (256, 4)
    # a short calibration text bounds it: ctx falls to its 128, and its 4 × 128 tokens hold 4 chunks
    assert probe_window({"chunks": 4, "ctx": 128}, {"chunks": 20, "ctx": 512}) == (128, 4)
    assert probe_window({"chunks": 1, "ctx": 64}, {"chunks": 1, "ctx": 512}) == (64, 1)
