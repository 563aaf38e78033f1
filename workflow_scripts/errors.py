"""One error type for user mistakes, shown as a clear message instead of a traceback."""

from __future__ import annotations

import errno
import sys
from typing import Callable

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; over quota


class UserError(Exception):
    """A problem with the user's input or environment, worded for the user (names file and field)."""


def run_cli(main: Callable[[], None]) -> None:
    """Run a module's ``main`` and turn a ``UserError`` into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as err:
        print(f"gguf-forge error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS:
            raise
        # a write outside atomic_output (a log, a package directory): one line, not a traceback
        print(f"gguf-forge error: {disk_full(err.filename or 'a file of this job', 'while writing it')}", file=sys.stderr)
        sys.exit(2)


def disk_full(path, detail: str = "while writing it; nothing of it was kept") -> UserError:
    """The one-line error of a write to ``path`` that ran out of space."""
    return UserError(f"{path}: disk full (no space left on device) {detail}. Free space on that file system (or move "
                     "results/ to a larger one) and run again: finished outputs are kept")
