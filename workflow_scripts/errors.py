"""One error type for user mistakes, shown as a clear message instead of a traceback."""

from __future__ import annotations

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
