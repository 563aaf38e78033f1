import hashlib
import subprocess

import pytest

from workflow_scripts.atomic import atomic_output, partial_path
from workflow_scripts.checksums import read_sidecar, sha256_file, sha256sums_text, verify, write_sidecar
from workflow_scripts.errors import UserError


def test_sidecar_round_trip_and_sha256sum_format(tmp_path):
    a = tmp_path / "a.gguf"
    a.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    digest = write_sidecar(a)
    assert digest == hashlib.sha256(a.read_bytes()).hexdigest() == sha256_file(a) == read_sidecar(a)
    # The sidecar is what `sha256sum -c` reads.
    subprocess.run(["sha256sum", "-c", a.name + ".sha256"], cwd=tmp_path, check=True, capture_output=True)


def test_one_changed_byte_is_refused_with_the_file_name(tmp_path):
    a = tmp_path / "model-Q4_K_M.gguf"
    a.write_bytes(b"x" * 5000)
    write_sidecar(a)
    data = bytearray(a.read_bytes())
    data[2500] ^= 1
    a.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model-Q4_K_M.gguf: checksum mismatch"):
        verify(a)


def test_missing_sidecar_is_an_error(tmp_path):
    a = tmp_path / "a.gguf"
    a.write_bytes(b"x")
    with pytest.raises(UserError, match="sidecar a.gguf.sha256 is missing"):
        verify(a)


def test_sha256sums_is_sorted_and_checkable(tmp_path):
    files = []
    (tmp_path / "quant").mkdir()
    for name in ("b.gguf", "a.gguf", "quant/m-Q8_0.gguf"):
        (tmp_path / name).write_bytes(name.encode() * 100)
        write_sidecar(tmp_path / name)
        files.append(tmp_path / name)
    text = sha256sums_text(files, tmp_path)
    assert [line.split()[1] for line in text.splitlines()] == ["a.gguf", "b.gguf", "quant/m-Q8_0.gguf"]
    (tmp_path / "SHA256SUMS").write_text(text)
    subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "b.gguf").write_bytes(b"tampered")
    with pytest.raises(UserError, match="b.gguf: checksum mismatch"):
        sha256sums_text(files, tmp_path)


def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path):
    final = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError, match="^killed$"):
        with atomic_output(final) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("killed")
    assert not final.exists() and not partial_path(final).exists()
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole"
