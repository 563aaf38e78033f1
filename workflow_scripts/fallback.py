"""The fallback chain: which build is tried next for a requested quant, and which one ships.

A requested quant is built as asked first. When a build fails its gates, the next build of the
quant's remedy list (the config plans them: each raises more tensors than the one before) is made
and judged, until one passes or the list runs out. A remedy whose planned tensor types are those of
the build before it (llama-quantize's dry run: its raises had already happened through row-length
fallbacks, or a measured remedy found nothing worth raising) is never built: it is skipped, and the
chain goes on with the next remedy. What ships for the quant is the last build tried, if it passed.
The rules follow the chain through two checkpoints (a verdict, a remedy's planned types: one not
made yet stops the chain there), the validation report through the verdicts it is given: both
follow it here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Optional

VerdictOf = Callable[[str], Optional[str]]
"""A build's verdict, ``"passed"`` or ``"failed"``, or None when it is not known yet."""

ChangedOf = Callable[[str], Optional[bool]]
"""Whether a remedy's planned tensor types differ from those of the build before it, or None when
its plan is not made yet."""


class Chains(NamedTuple):
    """Per requested quant: the builds tried (made and judged, or next to be judged), the remedies
    skipped as changing nothing, and the quants whose chain waits for a remedy's plan."""

    tried: dict[str, list[str]]
    skipped: dict[str, list[str]]
    waiting: frozenset[str]


def tries(remedies: Mapping[str, Iterable[str]], verdict_of: VerdictOf,
          changed_of: ChangedOf = lambda remedy: True) -> Chains:
    """The builds tried so far for each requested quant (``remedies``' keys, in order): the quant,
    then each remedy that changes a tensor's type while the build before it failed. A chain stops
    at a build whose verdict is not known yet (it is the last of ``tried``: the caller learns it once
    that verdict exists), and at a remedy whose plan is not known yet (the quant is ``waiting``)."""
    tried, skipped, waiting = {}, {}, set()
    for quant, chain in remedies.items():
        tried[quant], skipped[quant] = [quant], []
        for remedy in chain:
            if verdict_of(tried[quant][-1]) != "failed":
                break
            changed = changed_of(remedy)
            if changed is None:
                waiting.add(quant)
                break
            (tried[quant] if changed else skipped[quant]).append(remedy)
    return Chains(tried, skipped, frozenset(waiting))


def ships(tried: Mapping[str, list[str]], verdict_of: VerdictOf,
          waiting: Iterable[str] = ()) -> dict[str, str | None]:
    """Per requested quant whose last try has a verdict and whose chain waits for no remedy's plan:
    that build if it passed, else None (every try failed: the quant ships nothing). Quants still
    waiting are left out."""
    shipped, waiting = {}, set(waiting)
    for quant, builds in tried.items():
        last = verdict_of(builds[-1])
        if last is not None and quant not in waiting:
            shipped[quant] = builds[-1] if last == "passed" else None
    return shipped


def requested_as(remedies: Mapping[str, Iterable[str]], build: str) -> str:
    """The requested quant a build stands for: itself, or the quant whose remedy it is."""
    for quant, chain in remedies.items():
        if build == quant or build in chain:
            return quant
    raise KeyError(f"{build!r} is neither a requested quant nor one of their remedies")


def previous(remedies: Mapping[str, Iterable[str]], build: str) -> str:
    """The build a remedy follows in its quant's chain (the one whose tensor types it starts from)."""
    for quant, chain in remedies.items():
        chain = [quant, *chain]
        if build in chain[1:]:
            return chain[chain.index(build) - 1]
    raise KeyError(f"{build!r} is no remedy")
