"""Write outputs under a temporary name and rename when complete.

An interrupted job then never leaves a truncated file that looks finished: the final name
appears only through ``os.replace``, which is atomic on one filesystem.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from workflow_scripts.errors import DISK_FULL_ERRNOS, disk_full


def partial_path(final: Path | str) -> Path:
    """A temporary sibling of ``final`` (same directory, so the rename is atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


@contextmanager
def atomic_output(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full(final) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(final: Path | str, text: str) -> None:
    """Write ``text`` to ``final`` atomically (through the same fixed temporary name, so what a
    killed writer left is cleared by the next one)."""
    with atomic_output(final) as tmp:
        tmp.write_text(text)
