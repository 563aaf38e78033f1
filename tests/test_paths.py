"""What is at a path, in words (workflow_scripts/paths.py)."""

import os
import socket

import pytest

from workflow_scripts.paths import DIRECTORY, path_kind, path_problem


def test_every_kind_of_path_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("gone")
    (tmp_path / "to-dir").symlink_to("dir")
    names = ("file", "dir", "fifo", "loop", "dangling", "to-dir", "sock", "missing", "file/below")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        kinds = {name: path_kind(tmp_path / name) for name in names}
    assert kinds == {"file": "file", "dir": "directory", "fifo": "named pipe (FIFO)", "loop": "symbolic link loop",
                     "dangling": "symbolic link to 'gone', which does not exist", "to-dir": "directory",
                     "sock": "socket", "missing": None, "file/below": "path that cannot be reached (Not a directory)"}
    assert path_kind("/dev/null") == "character device"
    assert path_kind(tmp_path / "nul\0byte") == "path that cannot be reached (embedded null byte)"


def test_problems_are_worded_to_follow_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    assert path_problem(tmp_path / "file") is None and path_problem(tmp_path, DIRECTORY) is None
    assert path_problem(tmp_path / "file", DIRECTORY) == "is a file; expected a directory"
    assert path_problem(tmp_path) == "is a directory; expected a file"
    assert path_problem(tmp_path / "missing") == "does not exist; expected a file"
    assert path_problem("/dev/null") == "is a character device; expected a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read a chmod 000 file, so there is nothing to refuse")
def test_a_file_without_read_permission_is_refused(tmp_path):
    (tmp_path / "secret").write_text("x")
    (tmp_path / "secret").chmod(0)
    assert path_problem(tmp_path / "secret") == "cannot be read (permission denied); expected a readable file"


def test_what_a_user_without_read_permission_is_told(tmp_path, monkeypatch):
    """The words for a chmod 000 file wherever the tests run: root may read it, so os.access is
    asked, and here it answers as it does for anyone else."""
    (tmp_path / "secret").write_text("x")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert path_problem(tmp_path / "secret") == "cannot be read (permission denied); expected a readable file"
    assert path_problem(tmp_path, DIRECTORY) == "cannot be read (permission denied); expected a readable directory"
