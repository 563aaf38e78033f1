"""The pinned llama.cpp: cache key, stamp contents, and refusal of a build without the tools."""

import json
import re
import subprocess
import sys

import pytest

from workflow_scripts.errors import UserError
from workflow_scripts.toolchain import (DETERMINISTIC_FP, TOOLS, apply_patches, build_key, cmake_args, describe,
                                      configured_compilers, libstdcxx_linkage)


def test_cache_key_changes_with_version_backend_and_flags():
    base = build_key("0.3.36", "cpu", cmake_args("cpu", []))
    assert base == build_key("0.3.36", "cpu", cmake_args("cpu", []))
    assert base.startswith("0.3.36-cpu-")
    others = {
        build_key("0.3.35", "cpu", cmake_args("cpu", [])),
        build_key("0.3.36", "cuda", cmake_args("cuda", [])),
        build_key("0.3.36", "cpu", cmake_args("cpu", ["-DGGML_NATIVE=OFF"])),
    }
    assert base not in others and len(others) == 3


def test_quantization_code_is_built_with_deterministic_floating_point(tmp_path):
    cmake = tmp_path / "ggml" / "src" / "CMakeLists.txt"
    cmake.parent.mkdir(parents=True)
    cmake.write_text("add_library(ggml-base ggml-quants.c)\n")
    apply_patches(tmp_path, (DETERMINISTIC_FP,))
    apply_patches(tmp_path, (DETERMINISTIC_FP,))  # idempotent
    text = cmake.read_text()
    assert text.count("target_compile_options(ggml-base PRIVATE") == 1 and "-ffp-contract=off" in text
    args = cmake_args("cpu", [])
    assert not any("ffp-contract" in a for a in args)  # inference kernels keep upstream flags
    assert "-DBUILD_SHARED_LIBS=ON" in args
    assert "-DGGML_CUDA=ON" in cmake_args("cuda", [])
    with pytest.raises(UserError, match="toolchain.backend"):
        cmake_args("rocm", [])


def test_a_directory_without_the_tools_is_refused(tmp_path):
    (tmp_path / "llama-quantize").write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(UserError, match=r"toolchain.build_dir: .* lacks llama-imatrix"):
        describe(tmp_path, {})


def test_a_tool_that_does_not_run_is_refused(tmp_path):
    for tool in TOOLS:
        (tmp_path / tool).write_text("#!/bin/sh\nexit 3\n")
        (tmp_path / tool).chmod(0o755)
    with pytest.raises(UserError, match="do not run"):
        describe(tmp_path, {})


@pytest.mark.toolchain
def test_stamp_records_commit_flags_and_binary_digests(toolchain_stamp, toolchain_bin):
    stamp = json.loads(toolchain_stamp.read_text())
    assert len(stamp["llama_cpp_commit"]) == 40
    assert stamp["llama_cpp_python_version"] == "0.3.36"
    assert stamp["deterministic_fp"] == "ggml-base (quantization code) compiled with -ffp-contract=off"
    assert "common logger flushed at exit, so no tool output line is lost" in stamp["source_patches"]
    patched = (toolchain_bin.parent.parent / "src" / "ggml" / "src" / "CMakeLists.txt").read_text()
    assert "target_compile_options(ggml-base PRIVATE $<$<COMPILE_LANGUAGE:C,CXX>:-ffp-contract=off>)" in patched
    digest = subprocess.run(["sha256sum", str(toolchain_bin / "llama-quantize")], capture_output=True,
                            text=True, check=True).stdout.split()[0]
    assert stamp["llama_quantize_sha256"] == digest
    names = set(stamp["binaries_sha256"])
    assert "llama-imatrix" in names and "libllama-quantize-impl.so" in names
    assert any(n.startswith("libllama.so.") for n in names) and any(n.startswith("libggml-cpu.so.") for n in names)
    assert stamp["convert_script"].endswith("convert_hf_to_gguf.py")
    # The binaries report the vendored commit, so the tools and the stamp agree.
    assert stamp["llama_cpp_commit"][:9] in stamp["tool_version"]


@pytest.mark.toolchain
def test_llama_cpp_python_uses_the_same_library(toolchain_bin):
    code = ("import llama_cpp, sys; print(llama_cpp.llama_cpp._lib._name)")
    out = subprocess.run([sys.executable, "-c", code], env={"LLAMA_CPP_LIB_PATH": str(toolchain_bin)},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(toolchain_bin / "libllama.so")


@pytest.mark.toolchain
def test_the_stamp_records_the_compilers(toolchain_stamp):
    compilers = json.loads(toolchain_stamp.read_text())["compilers"]
    assert set(compilers) == {"c", "cxx"}  # a CPU build compiles no CUDA
    assert all(re.fullmatch(r"/\S+ \(.*\d+\.\d+.*\)", c) for c in compilers.values()), compilers
    assert json.loads(toolchain_stamp.read_text())["libstdcxx"] == "shared"


@pytest.mark.parametrize("flags, linkage", [([], "shared"), (["-static-libstdc++"], "static")])
def test_a_libllama_with_its_own_static_libstdcxx_is_told_apart(tmp_path, flags, linkage):
    """The compiler decides (a host GCC can link libstdc++ into every library): a real C++ library
    built both ways stands in for libllama."""
    source = tmp_path / "lib.cpp"
    source.write_text('#include <sstream>\nstd::string f(long v) { std::ostringstream s; s << v; return s.str(); }\n')
    subprocess.run(["g++", "-shared", "-fPIC", *flags, "-o", str(tmp_path / "libllama.so"), str(source)], check=True)
    assert libstdcxx_linkage(tmp_path) == linkage
    assert libstdcxx_linkage(tmp_path / "missing") == "unknown"


def test_a_compiler_gone_since_the_build_is_recorded_not_fatal(tmp_path):
    silent = tmp_path / "cc"  # answers --version with nothing
    silent.write_text("#!/bin/sh\n")
    silent.chmod(0o755)
    (tmp_path / "CMakeCache.txt").write_text(f"CMAKE_CXX_COMPILER:FILEPATH=/nonexistent/g++\nCMAKE_C_COMPILER:STRING={silent}\n")
    assert configured_compilers(tmp_path) == {"cxx": "/nonexistent/g++ (version unknown)", "c": f"{silent} (version unknown)"}
    assert configured_compilers(tmp_path / "elsewhere") == {}
