"""One error type for user mistakes, shown as a clear message instead of a traceback."""

from __future__ import annotations

import errno
import sys
from typing import Callable


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
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a write outside atomic_output (a log, a package directory): one line, not a traceback
        print(f"gguf-forge error: {err.filename or 'a file of this job'}: disk full (no space left on device); free space "
              "on that file system and run again: finished outputs are kept", file=sys.stderr)
        sys.exit(2)
