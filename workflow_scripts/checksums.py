"""SHA-256 digests, ``.sha256`` sidecars and their verification.

Snakemake only checksums small files; big GGUFs go by mtime. Sidecars written by the rule that
made a file let every consumer prove it reads exactly what was produced.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.errors import UserError

CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: Path | str) -> Path:
    """``model.gguf`` → ``model.gguf.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path | str, digest: str | None = None) -> str:
    """Write ``<file>.sha256`` in ``sha256sum`` format (digest, two spaces, file name)."""
    path = Path(path)
    digest = digest or sha256_file(path)
    atomic_write_text(sidecar_path(path), f"{digest}  {path.name}\n")
    return digest


def read_sidecar(path: Path | str) -> str:
    """The digest recorded beside ``path``."""
    side = sidecar_path(path)
    try:
        text = side.read_text().split()
    except FileNotFoundError:
        raise UserError(f"{path}: checksum sidecar {side.name} is missing") from None
    if len(text) != 2 or len(text[0]) != 64:
        raise UserError(f"{side}: expected '<sha256>  <name>', got {' '.join(text)[:80]!r}")
    return text[0]


def verify(path: Path | str) -> str:
    """Recompute the digest of ``path`` and compare it with its sidecar; return the digest."""
    expected = read_sidecar(path)
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(
            f"{path}: checksum mismatch (sidecar says {expected[:16]}…, file is {actual[:16]}…); "
            "the file changed after it was made: delete it and re-run to rebuild it"
        )
    return actual


def sha256sums_text(paths: list[Path], base: Path) -> str:
    """A ``SHA256SUMS`` body (paths relative to ``base``, sorted) for files with verified sidecars.

    ``sha256sum -c SHA256SUMS`` run in ``base`` checks every file.
    """
    base = Path(base).resolve()
    names = sorted(Path(p).resolve().relative_to(base).as_posix() for p in paths)
    return "".join(f"{verify(base / name)}  {name}\n" for name in names)


def main(argv: list[str] | None = None) -> None:
    """``python -m workflow_scripts.checksums FILE... --out SHA256SUMS``: verify sidecars, write the list."""
    import argparse

    parser = argparse.ArgumentParser(description="Verify .sha256 sidecars and write a SHA256SUMS file.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    atomic_write_text(ns.out, sha256sums_text(ns.files, ns.out.parent))


if __name__ == "__main__":
    from workflow_scripts.errors import run_cli

    run_cli(main)
