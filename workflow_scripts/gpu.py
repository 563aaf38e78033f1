"""What this host's NVIDIA GPUs are, what they hold, and which llama.cpp option offloads to them.

Everything is read from ``nvidia-smi`` (present wherever the NVIDIA driver is), so no GPU library
is needed to describe a GPU, pick the CUDA architectures of a build, or measure a process's VRAM.
A host without ``nvidia-smi`` or without a GPU simply has none: every function answers empty.
"""

from __future__ import annotations

import re
import shutil
import subprocess

MIB = 1024 * 1024


def _query(*args: str) -> list[list[str]]:
    """Rows of an ``nvidia-smi --format=csv,noheader,nounits`` query; empty when it cannot answer."""
    if not shutil.which("nvidia-smi"):
        return []
    proc = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return [[cell.strip() for cell in line.split(",")] for line in proc.stdout.splitlines() if line.strip()]


def host_gpus() -> list[str]:
    """Name and memory of each GPU, e.g. ``NVIDIA H200, 143771 MiB``."""
    return [f"{name}, {mib} MiB" for name, mib in _query("--query-gpu=name,memory.total")]


def cuda_architectures() -> str:
    """CMAKE_CUDA_ARCHITECTURES for this host's GPUs (compute capability 9.0 → ``90``; several
    kinds joined by ``;``); empty without a GPU, which leaves the choice to CMake."""
    caps = {row[0].replace(".", "") for row in _query("--query-gpu=compute_cap") if row and row[0]}
    return ";".join(sorted(caps, key=int))


def used_memory_bytes() -> int:
    """Memory in use on all GPUs together, by every process."""
    return sum(int(row[0]) * MIB for row in _query("--query-gpu=memory.used") if row[0].isdigit())


def process_memory_bytes(pid: int) -> int | None:
    """GPU memory held by process ``pid``; None when the driver lists no such process (e.g. a
    process in another PID namespace than nvidia-smi's)."""
    held = [int(mib) * MIB for owner, mib in _query("--query-compute-apps=pid,used_memory")
            if owner == str(pid) and mib.isdigit()]
    return sum(held) if held else None


OFFLOAD_VERBOSITY = 4
"""llama.cpp's trace level (``-lv 4``): only from there on does a tool log the GPUs it found and
the layers it offloaded, which offload_from_log records (about 150 more log lines)."""


def offload_args(gpu_layers: int) -> list[str]:
    """A llama.cpp tool's options to put ``gpu_layers`` layers on the GPU and log where they went."""
    return ["-ngl", str(gpu_layers), "-lv", str(OFFLOAD_VERBOSITY)] if gpu_layers else []


def toolchain_gpu_layers(toolchain: dict) -> int:
    """Layers the GPU stages offload: the configured count with a CUDA toolchain, else none."""
    return int(toolchain.get("gpu_layers") or 0) if toolchain.get("backend") == "cuda" else 0


def offload_option(toolchain: dict) -> str:
    """offload_args of a llama.cpp command line (a rule's params); empty for a CPU toolchain."""
    return " ".join(offload_args(toolchain_gpu_layers(toolchain)))


def gpu_layers_option(toolchain: dict) -> str:
    """``--gpu-layers N`` for a workflow script that runs a llama.cpp tool; empty for a CPU toolchain."""
    layers = toolchain_gpu_layers(toolchain)
    return f"--gpu-layers {layers}" if layers else ""


_DEVICE = re.compile(r"Device \d+: (?P<name>[^,\n]+), compute capability (?P<cc>[\d.]+)")
_OFFLOADED = re.compile(r"offloaded (?P<done>\d+)/(?P<total>\d+) layers to GPU")
_CUDA_BUILD = re.compile(r"CUDA : ARCHS = (?P<archs>[\d,]+)")


def offload_from_log(text: str) -> dict | None:
    """The GPUs a llama.cpp tool ran on and the layers it offloaded, from its log; None when it ran
    on the CPU alone (a CPU build prints none of these lines). At the default verbosity a tool
    prints only its CUDA build's system_info; the GPUs are then this host's (the tool ran here)."""
    devices = [f"{m['name'].strip()} (compute capability {m['cc']})" for m in _DEVICE.finditer(text)]
    offloaded = _OFFLOADED.search(text)
    build = _CUDA_BUILD.search(text)
    if not (devices or offloaded or build):
        return None
    return {"gpus": list(dict.fromkeys(devices)) or host_gpus(),
            "cuda_archs": build["archs"] if build else None,
            "layers_offloaded": f"{offloaded['done']}/{offloaded['total']}" if offloaded else None}
