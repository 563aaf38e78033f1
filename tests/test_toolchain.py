"""The pinned llama.cpp: cache key, stamp contents, and refusal of a build without the tools."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.errors import UserError
from workflow_scripts.toolchain import (COLD_CODE_O1, DETERMINISTIC_FP, NO_AMX, PATCHES, TOOLS, Progress, apply_patches,
                                      build_key, cmake_args, configured_compilers, configured_toolchain, describe,
                                      format_seconds, libstdcxx_linkage, parse_progress, run_with_progress)

ROOT = Path(__file__).resolve().parent.parent


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
    built both ways stands in for libllama; a plain C library beside it (ggml's base) changes nothing."""
    source = tmp_path / "lib.cpp"
    source.write_text('#include <sstream>\nstd::string f(long v) { std::ostringstream s; s << v; return s.str(); }\n')
    subprocess.run(["g++", "-shared", "-fPIC", *flags, "-o", str(tmp_path / "libllama.so"), str(source)], check=True)
    (tmp_path / "c.c").write_text("int g(int x) { return x + 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libggml-base.so.0.25.3"), str(tmp_path / "c.c")],
                   check=True)
    assert libstdcxx_linkage(tmp_path) == linkage
    assert libstdcxx_linkage(tmp_path / "missing") == "unknown"


def test_a_backend_library_with_its_own_libstdcxx_is_found_beside_a_shared_libllama(tmp_path):
    """The 8B crash on the H200 host: CUDAHOSTCXX (a GCC that links libstdc++ statically) built
    libggml-cuda, while CXX built libllama against the system's libstdc++.so.6."""
    source = tmp_path / "lib.cpp"
    source.write_text('#include <sstream>\nstd::string f(long v) { std::ostringstream s; s << v; return s.str(); }\n')
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(tmp_path / "libllama.so.0.5.0"), str(source)], check=True)
    assert libstdcxx_linkage(tmp_path) == "shared"
    subprocess.run(["g++", "-shared", "-fPIC", "-static-libstdc++", "-o", str(tmp_path / "libggml-cuda.so"),
                    str(source)], check=True)
    assert libstdcxx_linkage(tmp_path) == "static"


def test_a_compiler_gone_since_the_build_is_recorded_not_fatal(tmp_path):
    silent = tmp_path / "cc"  # answers --version with nothing
    silent.write_text("#!/bin/sh\n")
    silent.chmod(0o755)
    (tmp_path / "CMakeCache.txt").write_text(f"CMAKE_CXX_COMPILER:FILEPATH=/nonexistent/g++\nCMAKE_C_COMPILER:STRING={silent}\n")
    assert configured_compilers(tmp_path) == {"cxx": "/nonexistent/g++ (version unknown)", "c": f"{silent} (version unknown)"}
    assert configured_compilers(tmp_path / "elsewhere") == {}


# Captured build output: Ninja (what the toolchain uses when ninja is installed) and CMake's
# Makefiles (without ninja); the counters are the build tools' own.
NINJA_OUTPUT = """\
[1/155] Generating build details from Git
[11/155] Linking CXX shared library bin/libggml-base.so.0.25.3
warning: some compiler note without a counter
[102/155] Building CXX object common/CMakeFiles/llama-common.dir/arg.cpp.o
[155/155] Linking CXX executable bin/llama-bench
"""
MAKE_OUTPUT = """\
[  1%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o
gmake[2]: Entering directory '/tmp/build'
[ 42%] Building CXX object src/CMakeFiles/llama.dir/llama-model.cpp.o
[100%] Built target llama-quantize
"""


def test_build_progress_is_read_from_ninja_and_make_counters():
    steps = [parse_progress(line) for line in NINJA_OUTPUT.splitlines()]
    assert steps == ["[1/155] Generating build details from Git",
                     "[11/155] Linking CXX shared library libggml-base.so.0.25.3", None,
                     "[102/155] Building CXX object arg.cpp.o", "[155/155] Linking CXX executable llama-bench"]
    steps = [parse_progress(line) for line in MAKE_OUTPUT.splitlines()]
    assert steps == ["[  1%] Building C object ggml.c.o", None, "[ 42%] Building CXX object llama-model.cpp.o",
                     "[100%] Built target llama-quantize"]
    assert format_seconds(42.4) == "42 s" and format_seconds(185) == "3 min 05 s"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_reaches_the_console_every_20_seconds_with_the_log_path():
    clock, console = FakeClock(), io.StringIO()
    progress = Progress(console, "llama.cpp build", "results/logs/toolchain/llama.cpp.log", clock=clock)
    progress.start("build")
    shown_at = []
    for i in range(1, 156):  # 155 steps, one every 0.5 s
        clock.now += 0.5
        before = console.getvalue().count("\n")
        progress.feed(f"[{i}/155] Building CXX object common/CMakeFiles/llama-common.dir/f{i}.cpp.o\n")
        if console.getvalue().count("\n") > before:
            shown_at.append(i)
    clock.now += 25  # one long compile that prints nothing: the poll still shows a line
    progress.tick()
    progress.end("build")
    lines = console.getvalue().splitlines()
    assert shown_at == [40, 80, 120]  # 20 s apart, not one line per step
    assert lines[0] == "llama.cpp build: build started (log: results/logs/toolchain/llama.cpp.log)"
    assert lines[1] == ("llama.cpp build: [40/155] Building CXX object f40.cpp.o, 20 s "
                        "(log: results/logs/toolchain/llama.cpp.log)")
    assert lines[4].startswith("llama.cpp build: [155/155] Building CXX object f155.cpp.o, 1 min 42 s")
    assert lines[-1] == "llama.cpp build: build done in 1 min 42 s (log: results/logs/toolchain/llama.cpp.log)"
    progress.tick()
    clock.now += 20
    progress.tick()  # nothing new since the last line: said so
    assert console.getvalue().splitlines()[-1].startswith("llama.cpp build: [155/155] Building CXX object f155.cpp.o"
                                                          " (still running), 2 min 02 s")


def test_a_build_step_logs_everything_and_shows_a_summary(tmp_path):
    script = ("import time\nfor i in range(1, 31):\n    print(f'[{i}/30] Building CXX object x/f{i}.cpp.o', flush=True)\n"
              "    print('  compiler chatter', flush=True)\n    time.sleep(0.02)\n")
    console = io.StringIO()
    progress = Progress(console, "llama.cpp", "build.log", every=0.2)
    with open(tmp_path / "build.log", "w") as log:
        status = run_with_progress([sys.executable, "-c", script], log, progress, poll=0.05)
    assert status == 0
    logged = (tmp_path / "build.log").read_text().splitlines()
    assert len(logged) == 60 and logged[-2] == "[30/30] Building CXX object x/f30.cpp.o"
    shown = console.getvalue().splitlines()
    assert 1 <= len(shown) < 15 and all(line.endswith("(log: build.log)") for line in shown)
    assert all(re.match(r"llama\.cpp: \[\d+/30\] Building CXX object f\d+\.cpp\.o", line) for line in shown)
    with open(tmp_path / "fail.log", "w") as log:
        assert run_with_progress([sys.executable, "-c", "raise SystemExit(3)"], log, progress) == 3


# The toolchain defaults, written out (the schema's, as docs/config.md lists them).
TOOLCHAIN_DEFAULTS = {"llama_cpp_python_version": "0.3.36", "backend": "cpu", "cmake_args": [], "cuda_architectures": "",
                      "gpu_layers": 999, "build_dir": None}
CUDA = {"backend": "cuda", "cmake_args": ["-DGGML_NATIVE=OFF"], "cuda_architectures": "90"}


@pytest.mark.parametrize("toolchain, expected", [(None, TOOLCHAIN_DEFAULTS), ({}, TOOLCHAIN_DEFAULTS),
                                                 (CUDA, {**TOOLCHAIN_DEFAULTS, **CUDA})])
def test_make_builds_the_llama_cpp_the_workflow_will_use(tmp_path, toolchain, expected):
    """`make run` starts the build from the config file with PyYAML alone, before Snakemake is
    installed: the defaults it fills, and so the cache key, are those Snakemake's validation fills."""
    from workflow_scripts.config import fill_defaults

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    if toolchain is not None:
        config["toolchain"] = toolchain
    else:
        del config["toolchain"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    ours = configured_toolchain(path)
    assert ours == expected
    fill_defaults(config)
    assert config["toolchain"] == expected


def test_cold_code_is_built_with_lower_optimisation_and_hot_code_is_not(tmp_path):
    root = tmp_path / "CMakeLists.txt"
    root.write_text("add_subdirectory(common)\n")
    apply_patches(tmp_path, (COLD_CODE_O1,))
    text = root.read_text()
    # Only these targets: ggml-base, ggml-cpu, libllama and the tools keep upstream's flags.
    assert re.findall(r"foreach\(gguf_forge_target ([^)]*)\)", text) == ["llama-common cpp-httplib"]
    assert "$<$<COMPILE_LANGUAGE:CXX>:-O1>" in text
    assert COLD_CODE_O1 in PATCHES
    assert build_key("0.3.36", "cpu", cmake_args("cpu", [])) != build_key_without(COLD_CODE_O1)


def build_key_without(patch):
    import workflow_scripts.toolchain as toolchain

    saved = toolchain.PATCHES
    toolchain.PATCHES = tuple(p for p in saved if p is not patch)
    try:
        return toolchain.build_key("0.3.36", "cpu", cmake_args("cpu", []))
    finally:
        toolchain.PATCHES = saved


@pytest.mark.toolchain
def test_the_cpu_kernels_have_no_amx_instructions(toolchain_bin):
    """NO_AMX: no tile instruction in ggml-cpu (they crashed every Q8_0 matrix product on AMX-reporting
    virtual machines); a library built with them has tinygemm_kernel_amx and tilezero/tdpbssd."""
    library = next(toolchain_bin.glob("libggml-cpu.so*"))
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                          check=True).stdout
    assert "vfmadd" in code or "vpdpbusd" in code  # the disassembly was read: the SIMD kernels are there
    assert not re.search(r"\b(ldtilecfg|tilezero|tdpbssd|tdpbf16ps)\b", code)


def test_amx_kernels_are_left_out_unless_asked_for(tmp_path):
    cmake = tmp_path / "ggml" / "src" / "CMakeLists.txt"
    cmake.parent.mkdir(parents=True)
    cmake.write_text("add_subdirectory(ggml-cpu)\n")
    apply_patches(tmp_path, (NO_AMX,))
    text = cmake.read_text()
    assert "option(GGUF_FORGE_AMX" in text and text.index("add_subdirectory(ggml-cpu)") < text.index("-mno-amx-int8")
    assert NO_AMX in PATCHES and build_key("0.3.36", "cpu", cmake_args("cpu", [])) != build_key_without(NO_AMX)
