"""Which file of a Hub repository llama.cpp loads for ``-hf REPO:TAG`` (a test oracle).

Written from the pinned llama.cpp's common/download.cpp (commit 0c1e570: ``find_best_model``,
``gguf_filename_is_model``, ``get_gguf_split_info``), not from this project's code:

- a listed path is a model file if it ends in ``.gguf`` and its file name (after the last '/')
  contains none of ``mmproj``, ``imatrix``, ``mtp-``, ``eagle3-``, ``dflash-``, ``dspark-``;
- the tag is used as a regular expression followed by ``[.-]``, ignoring case, searched anywhere in
  the listed path;
- a split part ``<prefix>-NNNNN-of-MMMMM.gguf`` other than the first (MMMMM > 1) is passed over;
- the first model file in listing order that matches wins (the Hub's tree listing, or the local
  cache's directory order offline); without a tag, Q4_K_M is tried, then Q8_0, then the first model
  file.

``candidates`` returns every file the rule accepts, so a test can require exactly one whatever the
listing order.
"""

from __future__ import annotations

import re

NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
PART = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)


def is_model_file(path: str) -> bool:
    filename = path.rsplit("/", 1)[-1]
    return path.endswith(".gguf") and not any(word in filename for word in NOT_MODEL)


def is_later_part(path: str) -> bool:
    """A split part other than the first (llama.cpp downloads those with the first)."""
    if not path.endswith(".gguf"):
        return False
    match = PART.match(path[: -len(".gguf")])
    return bool(match) and int(match.group(3)) > 1 and int(match.group(2)) != 1


def candidates(listing: list[str], tag: str) -> list[str]:
    """Every listed file ``-hf REPO:tag`` could load, in listing order (llama.cpp takes the first)."""
    pattern = re.compile(tag + "[.-]", re.IGNORECASE)
    return [path for path in listing if is_model_file(path) and pattern.search(path) and not is_later_part(path)]


def select(listing: list[str], tag: str = "") -> str | None:
    """The file llama.cpp loads for ``-hf REPO:tag`` from a repository listing ``listing``."""
    for wanted in ([tag] if tag else ["Q4_K_M", "Q8_0"]):
        found = candidates(listing, wanted)
        if found:
            return found[0]
    if not tag:
        rest = [path for path in listing if is_model_file(path) and not is_later_part(path)]
        return rest[0] if rest else None
    return None
