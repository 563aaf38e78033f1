"""The fallback chain: which build is tried next for a requested quant, and which one ships.

A requested quant is built as asked first. When a build fails its gates, the next build of the
quant's remedy list (the config plans them: each raises more tensors than the one before) is made
and judged, until one passes or the list runs out. What ships for the quant is the last build
tried, if it passed. The rules follow the chain through the verdict checkpoint (a verdict not
made yet stops the chain there), the validation report through the verdicts it is given: both
follow it here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Optional

VerdictOf = Callable[[str], Optional[str]]
"""A build's verdict, ``"passed"`` or ``"failed"``, or None when it is not known yet."""


def tries(remedies: Mapping[str, Iterable[str]], verdict_of: VerdictOf) -> dict[str, list[str]]:
    """The builds tried so far for each requested quant (``remedies``' keys, in order): the quant,
    then each remedy while the build before it failed. A chain stops at a build whose verdict is
    not known yet (it is the last entry): the caller learns it once that verdict exists."""
    tried = {}
    for quant, chain in remedies.items():
        tried[quant] = [quant]
        for remedy in chain:
            if verdict_of(tried[quant][-1]) != "failed":
                break
            tried[quant].append(remedy)
    return tried


def ships(tried: Mapping[str, list[str]], verdict_of: VerdictOf) -> dict[str, str | None]:
    """Per requested quant whose last try has a verdict: that build if it passed, else None
    (every try failed: the quant ships nothing). Quants still waiting for a verdict are left out."""
    shipped = {}
    for quant, builds in tried.items():
        last = verdict_of(builds[-1])
        if last is not None:
            shipped[quant] = builds[-1] if last == "passed" else None
    return shipped


def requested_as(remedies: Mapping[str, Iterable[str]], build: str) -> str:
    """The requested quant a build stands for: itself, or the quant whose remedy it is."""
    for quant, chain in remedies.items():
        if build == quant or build in chain:
            return quant
    raise KeyError(f"{build!r} is neither a requested quant nor one of their remedies")
