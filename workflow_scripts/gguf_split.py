"""Split GGUF sources: ``name-00001-of-0000n.gguf`` and its sibling parts, as llama-gguf-split
writes them (every metadata key in the first part; in each part ``split.no``, ``split.count`` and
``split.tensors.count``: the keys of the pinned llama.cpp's ``gguf-split.cpp`` / ``llama-arch.cpp``).

A config names the first part; ``source_parts`` finds and checks all of them from their headers
(cheap enough for plan time), and convert.gguf_to_reference reads the parts in order, so the
reference of a split source is the reference of the unsplit file. Not ``llama-gguf-split
--merge``: that tool keeps ``split.*`` keys in its output and pads with the default alignment
whatever ``general.alignment`` says, so its merged file is not the file that was split.
"""

from __future__ import annotations

import re
from pathlib import Path

from workflow_scripts.errors import UserError
from workflow_scripts.gguf_header import read_gguf_header

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
# llama_split_path: prefix + "-%05d-of-%05d.gguf" (split numbers from 1).
SPLIT_NAME = re.compile(r"(?P<prefix>.+)-(?P<no>\d{5,})-of-(?P<count>\d{5,})\.gguf")


def part_name(prefix: str, number: int, count: int) -> str:
    return f"{prefix}-{number:05d}-of-{count:05d}.gguf"


def source_parts(path: Path | str) -> list[Path]:
    """Every file of the GGUF source ``path`` names: ``[path]`` for a whole file, all parts in order
    for the first part of a split one. UserError naming the file when a part is missing, cut short,
    damaged, or disagrees with the first about the split (another split's part left in the folder)."""
    path = Path(path)
    first = read_gguf_header(path)
    count = first.metadata.get("split.count", 0)
    if not isinstance(count, int) or count <= 1:  # a whole file (a merged one says split.count 0)
        return [path]
    match = SPLIT_NAME.fullmatch(path.name)
    if not match or int(match["count"]) != count:
        raise UserError(f"{path}: part of a GGUF split in {count} (split.count); expected the file name "
                        f"'<name>-00001-of-{count:05d}.gguf' that llama-gguf-split gives the first part")
    prefix = match["prefix"]
    if int(match["no"]) != 1 or first.metadata.get("split.no") != 0:
        raise UserError(f"{path}: part {first.metadata.get('split.no', 0) + 1} of a split GGUF; name the first "
                        f"part instead ({part_name(prefix, 1, count)})")
    parts = [path.with_name(part_name(prefix, i, count)) for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise UserError(f"{path}: split GGUF of {count} parts; part {missing[0]} is missing from {path.parent}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + "; expected every part next to the first")
    total = first.metadata.get("split.tensors.count")
    names: set[str] = set()
    for number, part in enumerate(parts):
        header = first if number == 0 else read_gguf_header(part)
        meta = header.metadata
        if (meta.get("split.no"), meta.get("split.count"), meta.get("split.tensors.count")) != (number, count, total):
            raise UserError(f"{part}: says it is part {meta.get('split.no')} of {meta.get('split.count')} with "
                            f"{meta.get('split.tensors.count')} tensors in all; expected part {number} of {count} "
                            f"with {total}, as {path.name} says (a part of another split?)")
        repeated = names.intersection(header.tensors)
        if repeated:
            raise UserError(f"{part}: tensor {sorted(repeated)[0]} is also in an earlier part; expected each once")
        names.update(header.tensors)
    if len(names) != total:
        raise UserError(f"{path}: the {count} parts hold {len(names)} tensors; split.tensors.count says {total}")
    return parts
