"""Build, cache and describe the one pinned llama.cpp every stage runs.

The source is the llama.cpp tree vendored in the ``llama-cpp-python`` sdist of the pinned
version, so the command-line tools and the Python binding come from the same code. Builds live
outside the checkout, under a key made of version, backend and CMake flags, so a second
checkout (or CI on the same machine) reuses them. A build is complete only when its
``build-info.json`` exists; an interrupted build is resumed by CMake, never trusted.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gpu import cuda_architectures as detected_cuda_architectures
from workflow_scripts.gpu import host_gpus

TOOLS = (
    "llama-quantize",
    "llama-imatrix",
    "llama-perplexity",
    "llama-bench",
    "llama-completion",
    "llama-gguf-split",
    "llama-server",
)
"""Executables the workflow drives; all must exist in ``<build>/bin``. llama-server renders chat
templates with llama.cpp's own Jinja engine, as it serves chats (workflow_scripts/chat_template.py)."""

DETERMINISTIC_FLAGS = "-ffp-contract=off"


@dataclass(frozen=True)
class SourcePatch:
    """Text appended to one file of the vendored llama.cpp before building (recorded in the stamp)."""

    path: str
    text: str
    why: str


# Deterministic floating point for reproducible quants: without it the compiler may contract
# a*b+c into FMA where the target has it (baseline on aarch64), and some quant types then differ
# across machines. Only ggml-base, which holds the quantization code (ggml-quants.c), gets the
# flag: the inference kernels in ggml-cpu/ggml-cuda are compiled exactly as upstream does.
DETERMINISTIC_FP = SourcePatch(
    "ggml/src/CMakeLists.txt",
    "\n# gguf-forge: deterministic floating point in the quantization code (reproducible quants)\n"
    f"target_compile_options(ggml-base PRIVATE $<$<COMPILE_LANGUAGE:C,CXX>:{DETERMINISTIC_FLAGS}>)\n",
    f"ggml-base (quantization code) compiled with {DETERMINISTIC_FLAGS}",
)
# The tools log through an asynchronous logger that upstream leaks on purpose, so the last lines
# can be lost at exit (llama.cpp issue 22142) — among them llama-perplexity's KL-divergence
# statistics, which exist only as text. Flushing it at normal exit makes the output complete.
LOG_FLUSH = SourcePatch(
    "common/log.cpp",
    "\n// gguf-forge: flush queued log lines at normal exit (the tools' figures are parsed from them)\n"
    "#include <cstdlib>\n#if !defined(_WIN32)\nnamespace {\nstruct gguf_forge_flush_log_at_exit {\n"
    "    gguf_forge_flush_log_at_exit() { std::atexit([] { common_log_pause(common_log_main()); }); }\n"
    "} gguf_forge_flush_log_at_exit_instance;\n}\n#endif\n",
    "common logger flushed at exit, so no tool output line is lost",
)
# Build time: on 2 cores about half of the compile time goes to llama-common (argument parsing,
# chat templates, JSON, grammar, download; its nlohmann::json and parser templates are slow to
# optimise) and the vendored cpp-httplib it links. Neither is on the inference or quantization hot
# path (that is ggml-base, ggml-cpu and libllama, compiled exactly as upstream does), so they are
# compiled with -O1. benchmarks/fp_contract_speed.py --compare measures llama-bench speed and quant
# bytes of such a build against upstream flags.
COLD_OPT_FLAGS = "-O1"
COLD_CODE_O1 = SourcePatch(
    "CMakeLists.txt",
    "\n# gguf-forge: code off the hot path (llama-common, cpp-httplib) compiled with "
    f"{COLD_OPT_FLAGS} (faster build)\n"
    "foreach(gguf_forge_target llama-common cpp-httplib)\n"
    "    if (TARGET ${gguf_forge_target})\n"
    "        target_compile_options(${gguf_forge_target} PRIVATE "
    f"$<$<COMPILE_LANGUAGE:CXX>:{COLD_OPT_FLAGS}>)\n"
    "    endif()\n"
    "endforeach()\n",
    f"llama-common and cpp-httplib (not on the hot path) compiled with {COLD_OPT_FLAGS}",
)
# AMX: a native build on a host that reports AMX compiles ggml-cpu's AMX matrix kernels, and on
# the hosts this project runs on (x86 virtual machines reporting amx_tile/amx_int8) every Q8_0 or
# Q4_0 matrix product of llama-perplexity then dies in tinygemm_kernel_amx on its first tile
# instruction (SIGILL at `tilezero`, or SIGSEGV with two threads), although the kernel grants the
# tile permission. AMX only speeds up prompt processing of those types on such CPUs, so it is left
# out unless asked for with the CMake argument -DGGUF_FORGE_AMX=ON (toolchain.cmake_args).
NO_AMX = SourcePatch(
    "ggml/src/CMakeLists.txt",
    "\n# gguf-forge: no AMX kernels unless -DGGUF_FORGE_AMX=ON (they crashed on AMX-reporting VMs)\n"
    "option(GGUF_FORGE_AMX \"gguf-forge: build ggml-cpu's AMX kernels\" OFF)\n"
    "if (TARGET ggml-cpu AND NOT GGUF_FORGE_AMX AND CMAKE_SYSTEM_PROCESSOR MATCHES \"x86_64|AMD64|amd64\" AND NOT MSVC)\n"
    "    target_compile_options(ggml-cpu PRIVATE -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)\n"
    "endif()\n",
    "ggml-cpu built without AMX kernels (-mno-amx-*) unless -DGGUF_FORGE_AMX=ON",
)
PATCHES = (DETERMINISTIC_FP, LOG_FLUSH, COLD_CODE_O1, NO_AMX)

BACKEND_ARGS = {
    "cpu": [],
    "cuda": ["-DGGML_CUDA=ON"],
}

LOCAL_SOURCE_ENV = "GGUF_FORGE_LLAMA_CPP_SRC"
"""Names a prepared llama.cpp tree (scripts/offline-bundle.sh) used instead of the sdist, for hosts
that cannot download it; the tree says which version and commit it is."""


def cache_root() -> Path:
    """Where builds are cached: ``$GGUF_FORGE_CACHE`` or the user's cache directory."""
    explicit = os.environ.get("GGUF_FORGE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gguf-forge"


def cmake_args(backend: str, extra: list[str], cuda_architectures: str | None = None) -> list[str]:
    """The full, ordered CMake configuration for a build (the cache key hashes it)."""
    if backend not in BACKEND_ARGS:
        raise UserError(f"toolchain.backend: expected one of {sorted(BACKEND_ARGS)}, got {backend!r}")
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        # llama-server for the chat-template check (118 s more of a 166 s build on 2 cores), without
        # its web UI: no download of prebuilt assets, an empty page table instead
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        *BACKEND_ARGS[backend],
    ]
    if backend == "cuda" and cuda_architectures:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}")
    return args + list(extra)


def build_key(version: str, backend: str, args: list[str]) -> str:
    """Directory name of a build: readable prefix plus a hash of the exact configuration."""
    digest = hashlib.sha256(json.dumps([version, backend, args, [p.text for p in PATCHES]]).encode()).hexdigest()[:12]
    return f"{version}-{backend}-{digest}"


def ensure_sdist(version: str, cache: Path, log) -> Path:
    """Return the cached ``llama-cpp-python`` sdist of ``version``, downloading it once."""
    target_dir = cache / "sdist"
    target_dir.mkdir(parents=True, exist_ok=True)
    expected = target_dir / f"llama_cpp_python-{version}.tar.gz"
    if expected.exists():
        return expected
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        # Only llama-cpp-python must come as an sdist: with --no-binary :all: pip also builds the
        # sdist's build dependencies from source to prepare its metadata (39 s instead of 6 s on
        # 2 cores, with an empty pip cache; the same sdist bytes either way).
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", "llama-cpp-python", "--no-deps",
             f"llama-cpp-python=={version}", "-d", tmp],
            stdout=log, stderr=subprocess.STDOUT,
        )
        fetched = Path(tmp) / expected.name
        if proc.returncode != 0 or not fetched.exists():
            raise UserError(
                f"toolchain.llama_cpp_python_version: could not fetch the llama-cpp-python sdist "
                f"{version!r} (pip exit {proc.returncode}); expected a released version such as 0.3.36"
            )
        os.replace(fetched, expected)
    return expected


def apply_patches(src: Path, patches: tuple[SourcePatch, ...] = PATCHES) -> None:
    """Append each patch to its file once (idempotent)."""
    for patch in patches:
        target = src / patch.path
        text = target.read_text()
        if patch.text not in text:
            target.write_text(text + patch.text)


def _extract_llama_cpp(sdist: Path, dest: Path) -> str:
    """Unpack ``vendor/llama.cpp`` of the sdist into ``dest``; return the vendored commit."""
    prefix = sdist.name[: -len(".tar.gz")]
    commit = "unknown"
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(sdist) as tar:
        wanted = [m for m in tar.getmembers()
                  if m.name.startswith(f"{prefix}/vendor/llama.cpp/")
                  or m.name == f"{prefix}/.git/modules/vendor/llama.cpp/HEAD"]
        tar.extractall(tmp, members=wanted, filter="data")
        head = Path(tmp, prefix, ".git/modules/vendor/llama.cpp/HEAD")
        if head.exists():
            commit = head.read_text().strip()
        apply_patches(Path(tmp, prefix, "vendor/llama.cpp"))
        os.replace(Path(tmp, prefix, "vendor/llama.cpp"), dest)
    (dest / ".forge-commit").write_text(commit + "\n")
    return commit


def _copy_llama_cpp(tree: Path, version: str, dest: Path) -> str:
    """Copy a prepared llama.cpp tree into ``dest`` (patched like an unpacked sdist); return its commit.
    The tree must be of ``version``: a bundle of another version would build other code silently."""
    marker = tree / ".forge-version"
    found = marker.read_text().strip() if marker.is_file() else None
    if found != version:
        raise UserError(f"{LOCAL_SOURCE_ENV}={tree}: expected a llama.cpp tree of llama-cpp-python {version} "
                        f"(its .forge-version file), found {found or 'no .forge-version'}")
    commit = (tree / ".forge-commit").read_text().strip()
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staged = Path(tmp, "src")
        shutil.copytree(tree, staged, symlinks=True, ignore=shutil.ignore_patterns(".forge-commit"))
        apply_patches(staged)
        os.replace(staged, dest)
    (dest / ".forge-commit").write_text(commit + "\n")
    return commit


PROGRESS_EVERY = 20.0
"""Seconds between progress lines on stderr while llama.cpp builds (the full output goes to the log)."""

_STEP = re.compile(r"^\[\s*(\d+)/(\d+)\]\s*(.*)")  # Ninja: [57/133] Building CXX object ...
_PERCENT = re.compile(r"^\[\s*(\d+)%\]\s*(.*)")  # CMake's Makefiles: [ 42%] Building CXX object ...


def parse_progress(line: str) -> str | None:
    """The build tool's own counter and step of an output line (``[57/133] Building ... x.cpp.o``, or
    ``[ 42%] Building ...`` from Makefiles), with long paths cut to the file name; None for other lines."""
    match = _STEP.match(line) or _PERCENT.match(line)
    if not match:
        return None
    counter = f"[{match[1]}/{match[2]}]" if match.re is _STEP else f"[{int(match[1]):3d}%]"
    words = [w.rsplit("/", 1)[-1] if "/" in w else w for w in match.groups()[-1].split()]
    what = " ".join(words)
    return f"{counter} {what[:100]}".rstrip()


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``: whole seconds, as the README gives times."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Short progress lines for the console while a step's full output goes to the log: one when the
    step starts, the latest build counter at most every ``every`` seconds (also while one long
    compile prints nothing), and one when it ends with the elapsed time."""

    def __init__(self, out, label: str, log_name: str | None, every: float = PROGRESS_EVERY,
                 clock=time.monotonic):
        self.out, self.label, self.every, self.clock = out, label, every, clock
        self.where = f"log: {log_name}" if log_name else None
        self.started = self.last_line = clock()
        self.latest: str | None = None
        self.shown: str | None = None
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        print(f"{self.label}: {text}" + (f" ({self.where})" if self.where else ""), file=self.out, flush=True)

    def start(self, what: str) -> None:
        self.started = self.last_line = self.clock()
        self.say(f"{what} started")

    def feed(self, line: str) -> None:
        """Take one output line of the build; show the counter when the last progress line is old."""
        step = parse_progress(line)
        with self.lock:
            if step:
                self.latest = step
        self.tick()

    def tick(self) -> None:
        """Show the latest counter if ``every`` seconds passed since the last progress line."""
        with self.lock:
            now = self.clock()
            if now - self.last_line < self.every:
                return
            self.last_line = now
            step = self.latest or "working"
            if step == self.shown:
                step += " (still running)"
            self.shown = self.latest
        self.say(f"{step}, {format_seconds(now - self.started)}")

    def end(self, what: str, ok: bool = True) -> None:
        self.say(f"{what} {'done' if ok else 'FAILED'} in {format_seconds(self.clock() - self.started)}")


def run_with_progress(cmd: list[str], log, progress: Progress | None = None, poll: float = 1.0) -> int:
    """Run ``cmd`` with its output to ``log``; feed each line to ``progress``, which also gets a tick
    every ``poll`` seconds so a long silent compile still shows a progress line. Returns the exit status."""
    if progress is None:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")

    def pump() -> None:
        for line in proc.stdout:
            log.write(line)
            progress.feed(line)
        log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while reader.is_alive():
        reader.join(timeout=poll)
        progress.tick()
    return proc.wait()


def _generator() -> list[str]:
    """Ninja when it is installed (the ``ninja`` package is a dependency), else CMake's default."""
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def _drop_other_generator(build: Path, generator: list[str]) -> None:
    """A build directory configured with another generator (ninja installed or removed since an
    interrupted build) cannot be resumed: CMake refuses it, so it is started again."""
    cache_file = build / "CMakeCache.txt"
    if not cache_file.is_file():
        return
    found = re.search(r"^CMAKE_GENERATOR:INTERNAL=(.*)$", cache_file.read_text(errors="replace"), re.M)
    wanted = generator[1] if generator else "Unix Makefiles"
    if found and found[1].strip() != wanted:
        shutil.rmtree(build)


def ensure_build(version: str, backend: str, extra_args: list[str], jobs: int, log,
                 cuda_architectures: str | None = None, progress_to=None, log_name: str | None = None) -> Path:
    """Build (or reuse) the pinned llama.cpp; return the build root holding ``build-info.json``.
    A CUDA build without configured architectures is built for this host's GPUs. With ``progress_to``
    (a stream: the console), what runs is announced there with the build's [n/N] counter at least
    every PROGRESS_EVERY seconds, and ``log_name`` tells where the full output is."""
    console = Progress(progress_to, "llama.cpp", log_name) if progress_to is not None else None
    if backend == "cuda" and not cuda_architectures:
        cuda_architectures = detected_cuda_architectures() or None  # no GPU here: CMake's default
    cache = cache_root()
    args = cmake_args(backend, extra_args, cuda_architectures)
    root = cache / "llama.cpp" / build_key(version, backend, args)
    root.parent.mkdir(parents=True, exist_ok=True)
    info_path = root / "build-info.json"
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if console:
                console.say(f"waiting for the build of {root.name} under way in another process")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if info_path.exists() and all((root / "build/bin" / t).exists() for t in TOOLS):
            print(f"reusing cached llama.cpp build {root}", file=log, flush=True)
            if console:
                console.say(f"reusing the cached build {root}")
            return root
        root.mkdir(exist_ok=True)
        src = root / "src"
        local = os.environ.get(LOCAL_SOURCE_ENV)
        if not (src / ".forge-commit").exists():
            shutil.rmtree(src, ignore_errors=True)
            if console:
                console.say(f"preparing the source of {root.name}" + ("" if local else f" (llama-cpp-python {version} sdist)"))
            if local:
                _copy_llama_cpp(Path(local), version, src)
            else:
                _extract_llama_cpp(ensure_sdist(version, cache, log), src)
        commit = (src / ".forge-commit").read_text().strip()
        generator = _generator()
        _drop_other_generator(root / "build", generator)
        configure = ["cmake", "-S", str(src), "-B", str(root / "build"), *generator, *args,
                     f"-DLLAMA_BUILD_COMMIT={commit[:9]}"]
        build = ["cmake", "--build", str(root / "build"), "-j", str(jobs), "--target", *TOOLS]
        started = time.monotonic()
        for step, cmd in (("configure", configure), ("build", build)):
            print("+ " + " ".join(cmd), file=log, flush=True)
            if console:
                console.start(f"{step} ({generator[1] if generator else 'make'}, {jobs} jobs) of {root}"
                              if step == "build" else f"{step} of {root.name}")
            status = run_with_progress(cmd, log, console)
            if console:
                console.end(step, status == 0)
            if status != 0:
                raise UserError(f"llama.cpp build failed: `{' '.join(cmd[:3])} ...` (see {log_name or 'the log above'})")
        info = {
            "llama_cpp_python_version": version,
            "llama_cpp_commit": commit,
            "backend": backend,
            "cmake_args": args,
            "deterministic_fp": DETERMINISTIC_FP.why,
            "source_patches": [p.why for p in PATCHES],
            "build_seconds": round(time.monotonic() - started, 1),
            "jobs": jobs,
        }
        if local:
            info["source"] = f"local llama.cpp tree ({LOCAL_SOURCE_ENV}={local})"
        if backend == "cuda":
            info["cuda_architectures"] = cuda_architectures or "CMake default (no GPU detected)"
            info["built_on_gpus"] = host_gpus()
        atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
        return root


def configured_compilers(build: Path) -> dict[str, str]:
    """The compilers CMake chose (from CC, CXX, CUDAHOSTCXX or PATH), each with its version line: the
    binaries depend on them, and a host's own compiler can differ from the system's in ways that
    matter (one that links libstdc++ statically into each library cannot serve llama-cpp-python:
    docs/gpu.md), while the cache key knows only the CMake arguments."""
    cache_file = build / "CMakeCache.txt"
    cache = cache_file.read_text(errors="replace") if cache_file.is_file() else ""  # a build made some other way
    return {lang.lower(): f"{path} ({_version_line(path)})"
            for lang, path in re.findall(r"^CMAKE_(C|CXX|CUDA|CUDA_HOST)_COMPILER:\w+=(.+)$", cache, re.M)}


def _version_line(compiler: str) -> str:
    """The line of ``compiler --version`` that names its release (nvcc's first line does not); a
    compiler gone since the build (an existing build_dir made elsewhere) is "version unknown"."""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "version unknown"
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return next((line for line in lines if "release" in line), lines[0] if lines else "version unknown")


def libstdcxx_linkage(bin_dir: Path) -> str:
    """How the build's libraries (libllama and the ggml backends beside it) hold the C++ runtime:
    ``shared`` (libstdc++ or libc++ among the libraries each needs: the usual case), ``static``
    (one of them carries its own copy: a compiler that links it into every library, e.g. a
    CUDAHOSTCXX for libggml-cuda; llama-cpp-python loading it beside another libstdc++ can crash:
    docs/gpu.md) or ``unknown``. A library that needs no C++ runtime (plain C) does not count; one
    that needs none yet defines std::ostream or std::locale holds its own."""
    found = set()
    for lib in sorted(p for p in bin_dir.glob("lib*.so*") if p.is_file() and not p.is_symlink()):
        try:
            needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True)
            symbols = subprocess.run(["readelf", "--dyn-syms", "-W", str(lib)], capture_output=True, text=True)
        except OSError:
            return "unknown"
        if needed.returncode != 0 or symbols.returncode != 0:
            continue
        if re.search(r"\(NEEDED\).*\[lib(stdc|c)\+\+\.so", needed.stdout):
            found.add("shared")
        elif re.search(r"^\s*\d+:\s+\S+\s+\d+\s+\w+\s+\w+\s+\w+\s+\d+\s+_ZN(So|St6locale)", symbols.stdout, re.M):
            found.add("static")
    return "static" if "static" in found else "shared" if found else "unknown"


def _run_ok(exe: Path) -> bool:
    """True when the tool starts (its shared libraries resolve).

    llama-quantize has no ``--version`` and exits 1 after printing its usage, so it counts as
    running when it printed that usage.
    """
    probe = "--help" if exe.name == "llama-quantize" else "--version"
    try:
        proc = subprocess.run([str(exe), probe], capture_output=True, timeout=60)
    except OSError:
        return False
    return proc.returncode == 0 or b"usage:" in proc.stdout + proc.stderr


def _convert_script(bin_dir: Path) -> str | None:
    """``convert_hf_to_gguf.py`` of the same llama.cpp: ``<root>/src`` for cached builds, else the
    source tree above an existing ``build/bin`` directory."""
    for base in (bin_dir.parent.parent / "src", bin_dir.parent.parent, bin_dir.parent):
        if (base / "convert_hf_to_gguf.py").is_file():
            return str(base / "convert_hf_to_gguf.py")
    return None


def build_bin_dir(build_dir: Path | str) -> Path:
    """Where the tools of an existing build directory are: its bin/, or the directory itself."""
    build_dir = Path(build_dir)
    return build_dir / "bin" if (build_dir / "bin").is_dir() else build_dir


def missing_tools_message(bin_dir: Path) -> str | None:
    """What the tools directory lacks, worded for toolchain.build_dir; None when complete."""
    missing = [t for t in TOOLS if not (bin_dir / t).is_file()]
    if not missing:
        return None
    return (f"{bin_dir} lacks {', '.join(missing)}; expected a llama.cpp build with the tools "
            f"{', '.join(TOOLS)} in its bin/ directory")


def describe(bin_dir: Path, build_info: dict) -> dict:
    """The stamp every downstream rule depends on: what was built, how, and the binaries' digests."""
    missing = missing_tools_message(bin_dir)
    if missing:
        raise UserError(f"toolchain.build_dir: {missing}")
    broken = [t for t in TOOLS if not _run_ok(bin_dir / t)]
    if broken:
        raise UserError(f"toolchain.build_dir: {', '.join(broken)} in {bin_dir} do not run (they exit non-zero on --version/--help)")
    version_text = subprocess.run([str(bin_dir / "llama-bench"), "--version"],
                                  capture_output=True, text=True).stderr.strip()
    return {
        **build_info,
        "bin_dir": str(bin_dir),
        "tool_version": version_text,
        "convert_script": _convert_script(bin_dir),
        "llama_quantize_sha256": sha256_file(bin_dir / "llama-quantize"),
        # The tools are thin launchers around lib<tool>-impl.so and libllama/libggml: all count.
        "binaries_sha256": {p.name: sha256_file(p) for p in sorted(bin_dir.iterdir())
                            if p.is_file() and not p.is_symlink() and (p.name in TOOLS or ".so" in p.name)},
        "host": {"machine": platform.machine(), "system": platform.system()},
        "compilers": configured_compilers(bin_dir.parent),
        "libstdcxx": libstdcxx_linkage(bin_dir),
    }


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema" / "config.schema.yaml"


def configured_toolchain(config_path: Path, schema_path: Path = SCHEMA_PATH) -> dict:
    """The ``toolchain`` section of a config file with the schema's defaults filled, as the workflow
    sees it (Snakemake fills the same defaults from the same schema). Needs only PyYAML, so the build
    can start before the rest of the environment is installed; the workflow checks the whole config
    when it runs."""
    import yaml

    config = yaml.safe_load(config_path.read_text()) or {}
    section = dict(config.get("toolchain") or {})
    schema = yaml.safe_load(schema_path.read_text())
    for key, spec in schema["properties"]["toolchain"]["properties"].items():
        if key not in section and "default" in spec:
            section[key] = spec["default"]
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", type=Path, help="stamp JSON to write")
    parser.add_argument("--log", type=Path, help="build log (default: stderr)")
    parser.add_argument("--version", help="llama-cpp-python version whose vendored llama.cpp to build")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--cmake-arg", action="append", default=[], help="extra CMake argument")
    parser.add_argument("--cuda-architectures")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--build-dir", type=Path, help="use this existing llama.cpp build instead")
    parser.add_argument("--from-config", type=Path, metavar="CONFIG",
                        help="only build (or find cached) the llama.cpp this config file's toolchain section "
                             "names, no stamp: `make run` starts it beside the install")
    ns = parser.parse_args(argv)
    if not ns.stamp and not ns.from_config:
        parser.error("--stamp is required (or --from-config to only build)")
    if ns.log:
        ns.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(ns.log, "a") if ns.log else sys.stderr
    console = sys.stderr if ns.log else None  # the full output goes to the log, a summary to the console
    if ns.from_config:
        tc = configured_toolchain(ns.from_config)
        if tc.get("build_dir"):
            print(f"llama.cpp: {ns.from_config} uses the existing build {tc['build_dir']}; nothing to build",
                  file=sys.stderr)
            return
        ensure_build(tc["llama_cpp_python_version"], tc["backend"], tc["cmake_args"], ns.jobs, log,
                     tc["cuda_architectures"] or None, progress_to=console, log_name=str(ns.log or ""))
        return
    if ns.build_dir:
        stamp = describe(build_bin_dir(ns.build_dir), {"source": "existing build directory", "backend": ns.backend})
    else:
        root = ensure_build(ns.version, ns.backend, ns.cmake_arg, ns.jobs, log, ns.cuda_architectures,
                            progress_to=console, log_name=str(ns.log or ""))
        stamp = describe(root / "build/bin", {"source": "llama-cpp-python sdist",
                                              **json.loads((root / "build-info.json").read_text())})
    atomic_write_text(ns.stamp, json.dumps(stamp, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run_cli(main)
