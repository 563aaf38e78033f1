"""What is at a path, in words, so that a configured file or directory is refused as what it is
(a directory, a device, a named pipe, a symbolic link going nowhere...) rather than as missing.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

FILE, DIRECTORY = "file", "directory"
_KINDS = ((stat.S_ISREG, FILE), (stat.S_ISDIR, DIRECTORY), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"))


def path_kind(path: Path | str) -> str | None:
    """What ``path`` is once symbolic links are followed: FILE, DIRECTORY, another kind ('character
    device', 'named pipe (FIFO)', 'symbolic link loop', "symbolic link to 'x', which does not
    exist", ...), or None when nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"symbolic link to {os.readlink(path)!r}, which does not exist" if os.path.islink(path) else None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"path that cannot be reached ({err.strerror})"  # a parent is a file, or cannot be searched
    except ValueError as err:
        return f"path that cannot be reached ({err})"  # a NUL byte, which no file name holds
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "special file")


def path_problem(path: Path | str, expected: str = FILE) -> str | None:
    """Why ``path`` cannot be read as ``expected`` (FILE or DIRECTORY), worded to follow the path
    ("is a directory; expected a file"), or None when it can. A file without read permission is
    refused too, except for root, who may read it anyway."""
    kind = path_kind(path)
    if kind is None:
        return f"does not exist; expected a {expected}"
    if kind != expected:
        return f"is a {kind}; expected a {expected}"
    if not os.access(path, os.R_OK | (os.X_OK if expected == DIRECTORY else 0)):
        return f"cannot be read (permission denied); expected a readable {expected}"
    return None
