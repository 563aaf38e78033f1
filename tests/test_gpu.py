"""GPU support without a GPU: architectures from nvidia-smi, -ngl only for a CUDA toolchain, the
GPU read back from tool logs, and VRAM measured against the prediction."""

import re

import pytest

from workflow_scripts import gpu
from workflow_scripts.speed import vram_check, vram_reading
from workflow_scripts.errors import UserError
from workflow_scripts.toolchain import LOCAL_SOURCE_ENV, _copy_llama_cpp
from tests.workflow_run import snakemake, write_config

H200_LOG = """ggml_cuda_init: found 1 CUDA devices (Total VRAM: 143166 MiB):
  Device 0: NVIDIA H200, compute capability 9.0, VMM: yes, VRAM: 143166 MiB
load_tensors: offloaded 17/17 layers to GPU
"""


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An nvidia-smi on PATH answering like a host with an H200 and an A100 (pid 4242 holds 1000 MiB)."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\ncase \"$1\" in\n"
                      "  --query-gpu=compute_cap) printf '9.0\\n8.0\\n9.0\\n' ;;\n"
                      "  --query-gpu=name,memory.total) printf 'NVIDIA H200, 143771\\nNVIDIA A100, 81920\\n' ;;\n"
                      "  --query-gpu=memory.used) printf '2000\\n10\\n' ;;\n"
                      "  --query-compute-apps=pid,used_memory) printf '4242, 1000\\n17, 5\\n' ;;\n"
                      "esac\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")


def test_cuda_architectures_default_to_the_hosts_gpus(fake_nvidia_smi):
    assert gpu.cuda_architectures() == "80;90"
    assert gpu.host_gpus() == ["NVIDIA H200, 143771 MiB", "NVIDIA A100, 81920 MiB"]
    assert gpu.used_memory_bytes() == 2010 * gpu.MIB
    assert gpu.process_memory_bytes(4242) == 1000 * gpu.MIB
    assert gpu.process_memory_bytes(99) is None


def test_a_host_without_nvidia_smi_has_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu.cuda_architectures() == "" and gpu.host_gpus() == [] and gpu.used_memory_bytes() == 0


def test_offload_options_only_for_a_cuda_toolchain():
    for off in ({"backend": "cpu", "gpu_layers": 999}, {"backend": "cuda", "gpu_layers": 0}):
        assert gpu.offload_option(off) == gpu.gpu_layers_option(off) == "" and gpu.toolchain_gpu_layers(off) == 0
    # trace verbosity, or the tool's log would not say which GPU it used and what it offloaded
    assert gpu.offload_option({"backend": "cuda", "gpu_layers": 999}) == "-ngl 999 -lv 4"
    assert gpu.gpu_layers_option({"backend": "cuda", "gpu_layers": 20}) == "--gpu-layers 20"
    assert gpu.offload_args(20) == ["-ngl", "20", "-lv", "4"] and gpu.offload_args(0) == []


def test_the_gpu_is_read_back_from_a_tool_log():
    assert gpu.offload_from_log(H200_LOG) == {"gpus": ["NVIDIA H200 (compute capability 9.0)"],
                                              "cuda_archs": None, "layers_offloaded": "17/17"}


def test_a_default_verbosity_log_names_the_cuda_build_and_the_hosts_gpus(fake_nvidia_smi):
    log = "system_info: n_threads = 8 (n_threads_batch = 8) / 16 | CUDA : ARCHS = 900 | USE_GRAPHS = 1 | CPU : AVX = 1\n"
    assert gpu.offload_from_log(log) == {"gpus": ["NVIDIA H200, 143771 MiB", "NVIDIA A100, 81920 MiB"],
                                         "cuda_archs": "900", "layers_offloaded": None}
    assert gpu.offload_from_log("llama_model_loader: loaded meta data\nFinal estimate: PPL = 3.1\n") is None


def test_measured_vram_is_set_beside_the_prediction():
    by_process = vram_reading(3_000_000_000, 9)
    assert by_process["method"].startswith("nvidia-smi used_memory")
    assert vram_reading(None, 2_500_000_000)["method"].startswith("growth")
    check = vram_check({"vram_bytes": 2_000_000_000}, by_process)
    assert check == {"predicted_bytes": 2_000_000_000, "measured_bytes": 3_000_000_000,
                     "method": by_process["method"], "measured_over_predicted": 1.5}
    assert vram_check({"vram_bytes": 0}, by_process)["measured_over_predicted"] is None


def test_a_local_llama_cpp_tree_must_be_of_the_pinned_version(tmp_path):
    tree = tmp_path / "llama.cpp"
    (tree / "ggml/src").mkdir(parents=True)
    (tree / "ggml/src/CMakeLists.txt").write_text("add_library(ggml-base)\n")
    (tree / "common").mkdir()
    (tree / "common/log.cpp").write_text("// log\n")
    (tree / "CMakeLists.txt").write_text("add_subdirectory(common)\n")
    (tree / ".forge-commit").write_text("0c1e57098bba43ac29e6e3b677cdceebdd22334f\n")
    (tree / ".forge-version").write_text("0.3.35\n")
    with pytest.raises(UserError, match=f"{LOCAL_SOURCE_ENV}=.*0.3.36.*found 0.3.35"):
        _copy_llama_cpp(tree, "0.3.36", tmp_path / "src")
    (tree / ".forge-version").write_text("0.3.36\n")
    assert _copy_llama_cpp(tree, "0.3.36", tmp_path / "src") == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert "-ffp-contract=off" in (tmp_path / "src/ggml/src/CMakeLists.txt").read_text()  # patched like the sdist
    assert "llama-common cpp-httplib" in (tmp_path / "src/CMakeLists.txt").read_text()
    assert (tmp_path / "src/.forge-commit").read_text().startswith("0c1e570")


def _shell_commands(tmp_path, backend: str) -> dict[str, list[str]]:
    """The dry run's imatrix, reference-logits, validation, sanity and chat-template command lines
    for a toolchain backend, as words."""
    workdir = tmp_path / backend
    workdir.mkdir()
    config = write_config(workdir, {"toolchain": {"backend": backend}})
    model = "results/smollm2-135m"
    proc = snakemake(workdir, config, "--dry-run", "--printshellcmds", f"{model}/imatrix/smollm2-135m.imatrix.gguf",
                     f"{model}/validate/Q8_0.json", f"{model}/validate/Q8_0.sanity.json",
                     f"{model}/checks/chat_template.json")
    lines = [line.strip() for line in proc.stdout.splitlines()]
    return {tool: next(line for line in lines if re.search(pattern, line)).split() for tool, pattern in
            (("imatrix", r"llama-imatrix "), ("reference", r"workflow_scripts.validate reference "),
             ("validate", r"workflow_scripts.validate quant "),
             ("sanity reference", r"workflow_scripts.sanity (?!.*--reference)"),
             ("sanity", r"workflow_scripts.sanity .*--reference"),
             ("chat template", r"workflow_scripts.chat_template "))}


def _inserted(words: list[str], before: str, new: list[str]) -> list[str]:
    at = words.index(before)
    return words[:at] + new + words[at:]


def test_gpu_offload_reaches_the_command_lines_of_a_cuda_toolchain_only(tmp_path):
    cpu, cuda = _shell_commands(tmp_path, "cpu"), _shell_commands(tmp_path, "cuda")
    assert not any("-ngl" in words or "--gpu-layers" in words for words in cpu.values())
    assert cpu["imatrix"][-1] == "--no-ppl"
    assert cuda["imatrix"] == cpu["imatrix"] + ["-ngl", "999", "-lv", "4"]
    assert cuda["reference"] == _inserted(cpu["reference"], "--verify", ["--gpu-layers", "999"])
    assert cuda["validate"] == _inserted(cpu["validate"], "--log", ["--gpu-layers", "999"])
    for sanity in ("sanity reference", "sanity"):  # llama-cpp-python generates on the GPU too
        assert cuda[sanity] == _inserted(cpu[sanity], "--out", ["--gpu-layers", "999"])
    assert cuda["chat template"] == _inserted(cpu["chat template"], "--server-log", ["--gpu-layers", "999"])
