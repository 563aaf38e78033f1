"""The reference task's child process: its figures, and how its failure reaches the user (the exit
status or the signal in words, and the child's last output, which is llama.cpp's log)."""

import json
import sys

import pytest

from workflow_scripts.speed import run_task
from workflow_scripts.errors import UserError

SETTINGS = {"prompt": "The sky is", "answer_tokens": 6}
TIER = {"ctx": 256, "gpu_layers": 0}


@pytest.mark.toolchain
def test_the_task_answers_with_the_asked_number_of_tokens(tiny_f16, toolchain_stamp):
    stamp = json.loads(toolchain_stamp.read_text())
    answer = run_task(stamp, tiny_f16, TIER, 1, SETTINGS)
    assert answer["answer_tokens"] == 6 and 0 < answer["ttft_s"] <= answer["latency_s"]
    assert answer["peak_rss_bytes"] > tiny_f16.stat().st_size and "vram" not in answer


@pytest.mark.toolchain
def test_a_model_the_library_cannot_load_fails_with_the_status_and_its_log(tiny_f16, toolchain_stamp, tmp_path):
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(tiny_f16.read_bytes()[: tiny_f16.stat().st_size // 2])
    with pytest.raises(UserError) as caught:
        run_task(json.loads(toolchain_stamp.read_text()), broken, TIER, 1, SETTINGS)
    message = str(caught.value)
    assert message.startswith(f"reference task on {broken} exited with status 1; its last output:")
    assert "Failed to load model" in message and "llama_model_load" in message  # llama.cpp's verbose log


@pytest.fixture
def segfaulting_child(tmp_path, monkeypatch):
    """The task's child replaced by one that logs a line and dies by SIGSEGV, as a crashed libllama does."""
    crash = tmp_path / "python"
    crash.write_text("#!/bin/sh\necho 'print_info: n_layer_all = 2' >&2\nkill -SEGV $$\n")
    crash.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crash))


def test_a_child_killed_by_a_signal_is_named_with_the_signal(tmp_path, segfaulting_child):
    with pytest.raises(UserError) as caught:
        run_task({"bin_dir": str(tmp_path)}, tmp_path / "m.gguf", TIER, 1, SETTINGS)
    assert str(caught.value) == (f"reference task on {tmp_path / 'm.gguf'} was killed by signal 11 (SIGSEGV); "
                                 "its last output:\nprint_info: n_layer_all = 2\n")


def test_a_crash_with_a_static_cxx_runtime_says_how_to_build_instead(tmp_path, segfaulting_child):
    stamp = {"bin_dir": str(tmp_path), "libstdcxx": "static", "compilers": {"cxx": "/opt/gcc/bin/g++ (g++ (GCC) 15.1.0)"}}
    with pytest.raises(UserError) as caught:
        run_task(stamp, tmp_path / "m.gguf", TIER, 1, SETTINGS)
    assert "linked in statically (by /opt/gcc/bin/g++ (g++ (GCC) 15.1.0))" in str(caught.value)
    assert str(caught.value).endswith("(e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++).")
