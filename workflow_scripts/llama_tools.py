"""Parsers for what the pinned llama.cpp tools print (text only: they offer no JSON for this).

Written against captured real output of the pinned build (tests/fixtures/); a format change in a
new llama.cpp shows up there first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# [  7/ 272] blk.0.attn_v.weight  - [   576,    192,      1,      1], type =    f16, converting to q8_0 .. size = ...
_TENSOR_LINE = re.compile(
    r"^\[\s*(?P<index>\d+)/\s*(?P<total>\d+)\]\s+(?P<name>\S+)\s+-\s+\[(?P<shape>[\d,\s]+)\],\s+"
    r"type =\s+(?P<src>\w+),(?P<rest>.*)$"
)
_CONVERTING = re.compile(r"converting to (?P<dst>\w+)")
# warning: blk.0.attn_k.weight - ncols    576 not divisible by 256 (required for type    q4_K) -> falling back to    q5_0
_FALLBACK = re.compile(
    r"(?P<name>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)\s+"
    r"\(required for type\s+(?P<wanted>\w+)\)\s+->\s+falling back to\s+(?P<actual>\w+)"
)
# llama_tensor_get_type: blk.0.attn_v.weight - applying manual override: q4_K -> q8_0
_OVERRIDE = re.compile(r"(?P<name>\S+)\s+-\s+applying manual override:\s+(?P<default>\w+)\s+->\s+(?P<override>\w+)")


@dataclass(frozen=True)
class TensorLine:
    """One tensor as llama-quantize reported it: source type and the type it converted to."""

    name: str
    shape: tuple[int, ...]
    source_type: str
    target_type: str | None  # None: copied unchanged (e.g. 1-D norms)


@dataclass(frozen=True)
class Fallback:
    """A tensor llama-quantize could not give the wanted type (row size vs block size)."""

    name: str
    ncols: int
    block: int
    wanted: str
    actual: str

    @property
    def reason(self) -> str:
        return (f"{self.ncols} columns not divisible by {self.block} ({self.wanted.upper()} block) "
                f"-> {self.actual.upper()}")


def parse_quantize_tensors(text: str) -> list[TensorLine]:
    """The per-tensor lines of a llama-quantize log, in order."""
    lines = []
    pending: dict | None = None
    for line in text.splitlines():
        match = _TENSOR_LINE.match(line.strip())
        if match:
            if pending:
                lines.append(_tensor_line(pending, ""))
            pending = match.groupdict()
            if "converting to" in pending["rest"] or "size =" in pending["rest"]:
                lines.append(_tensor_line(pending, pending["rest"]))
                pending = None
        elif pending and "converting to" in line:
            # Some tensors print a message between the tensor line and "converting to".
            lines.append(_tensor_line(pending, line))
            pending = None
    if pending:
        lines.append(_tensor_line(pending, ""))
    return lines


def _tensor_line(match: dict, rest: str) -> TensorLine:
    shape = tuple(int(d) for d in match["shape"].split(",") if d.strip())
    converting = _CONVERTING.search(rest)
    return TensorLine(name=match["name"], shape=shape, source_type=match["src"].upper(),
                      target_type=converting["dst"].upper() if converting else None)


def parse_quantize_fallbacks(text: str) -> dict[str, Fallback]:
    """Tensors that fell back to another type, by name."""
    found = {}
    for match in _FALLBACK.finditer(text):
        found[match["name"]] = Fallback(match["name"], int(match["ncols"]), int(match["block"]),
                                        match["wanted"].upper(), match["actual"].upper())
    return found


def parse_quantize_overrides(text: str) -> dict[str, str]:
    """Tensors llama-quantize says it gave a user override type, by name."""
    return {m["name"]: m["override"].upper() for m in _OVERRIDE.finditer(text)}
