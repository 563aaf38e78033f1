"""What a user sees when something is wrong: one clear message, no traceback, nothing half-made."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.stub_sources import LLAMA_CONFIG, safetensors_bytes
from tests.test_config_names import REFUSED, SMALL_TEXTS, TEXT
from tests.workflow_run import snakemake, write_config
from workflow_scripts.errors import UserError
from workflow_scripts.tool_step import run_tool
from workflow_scripts.toolchain import LOCAL_SOURCE_ENV


def _tiny_gguf() -> bytes:
    """A complete one-tensor GGUF (the header says where its data ends, so a cut is visible)."""
    import tempfile

    import numpy as np
    from gguf import GGUFWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.gguf"
        writer = GGUFWriter(path, "llama")
        writer.add_tensor("w", np.zeros(256, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


TINY_GGUF = _tiny_gguf()
WEIGHTS = safetensors_bytes({"w": 64})
WORDS = " ".join(f"w{i}" for i in range(2000))  # 2000 distinct words: no overlap with the shipped texts
TIER = {"name": "t", "threads": 4, "ram_gb": 8, "latency_budget_s": 5}
BASE = {"models": [{"name": "m", "source": {"type": "gguf", "path": "m.gguf"}}], "quants": ["Q8_0"]}


def model(name="m", **fields):
    return {"name": name, "source": {"type": "gguf", "path": "m.gguf"}, **fields}


def local(path="hf", **source):
    return {"models": [{"name": "m", "source": {"type": "local", "path": path, **source}}]}


class Link(str):
    """A ``files`` entry that is a symbolic link to this target."""


FIFO = object()  # a ``files`` entry that is a named pipe


def nested(depth: int) -> list:
    return [nested(depth - 1)] if depth else []


def alias_bomb(levels: int = 9) -> str:
    """Under 1 KB of YAML whose models[0].note, every alias written out, is 9**levels strings."""
    anchors = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return f"quants: [Q8_0]\nmodels:\n  - name: m\n    source: {{type: gguf, path: m.gguf}}\n    note: [{', '.join(anchors)}]\n"


def hf_files(**replace) -> dict:
    """An HF directory's files: config.json and weights, with ``replace`` (None removes one)."""
    files = {"hf/config.json": LLAMA_CONFIG, "hf/model.safetensors": WEIGHTS, **replace}
    return {name: data for name, data in files.items() if data is not None}


class Case(NamedTuple):
    """One bad input: the config laid over BASE (a str is the config file's raw text), extra files,
    the text the message must contain, extra snakemake arguments, and whether the message comes
    from the config check (then it names the config file and nothing under results/ may exist)."""

    name: str
    expected: str
    config: dict | str = {}
    files: dict = {}
    args: tuple = ()
    from_config: bool = True


BAD_INPUT = [
    # the file itself (read by Snakemake before the workflow: its words, without the file name)
    Case("yaml-malformed", "not valid JSON or YAML", "models:\n  - name: [unclosed\n", from_config=False),
    Case("yaml-tabs", "not valid JSON or YAML", "models:\n\t- name: m\n", from_config=False),
    Case("yaml-top-level-list", "keys at top level", "- models\n- quants\n", from_config=False),
    # wrong types
    Case("string-for-int", "calibration.ctx: '512' is not of type 'integer'", {"calibration": {"ctx": "512"}}),
    Case("list-for-mapping", "calibration: ['cal.txt'] is not of type 'object'", {"calibration": ["cal.txt"]}),
    Case("mapping-for-list", "models: {'m': 'm.gguf'} is not of type 'array'", {"models": {"m": "m.gguf"}}),
    Case("string-for-list", "quants: 'Q8_0' is not of type 'array'", {"quants": "Q8_0"}),
    Case("string-for-bool", "imatrix: 'yes' is not of type 'boolean'", {"imatrix": "yes"}),
    # unknown keys
    Case("unknown-top-level-key", "(top level): unknown key(s) 'colour'; expected one of", {"colour": "blue"}),
    Case("unknown-model-key", "models[0]: unknown key(s) 'quant'; expected one of", {"models": [model(quant=["Q8_0"])]}),
    Case("unknown-source-key", "models[0].source: unknown key(s) 'revision'", local(revision="main"), hf_files()),
    Case("unknown-tier-key", "tiers[0]: unknown key(s) 'cores'", {"tiers": [{**TIER, "cores": 4}]}),
    Case("unknown-calibration-key", "calibration: unknown key(s) 'txt'; expected one of chunks, ctx, text",
         {"calibration": {"txt": "cal.txt"}}),
    Case("missing-source-key", "models[0].source: 'revision' is a required property (Commit sha",
         {"models": [{"name": "m", "source": {"type": "hf", "repo_id": "o/m"}}]}),
    # quant types
    Case("unknown-quant", "quants[0]: 'Q4_K_Z' is not allowed; expected one of", {"quants": ["Q4_K_Z"]}),
    Case("quant-alias", "models[0].quants[0]: 'Q4_K' is not allowed", {"models": [model(quants=["Q4_K"])]}),
    Case("duplicate-quant", "quants: ['Q8_0', 'Q8_0'] lists an entry more than once", {"quants": ["Q8_0", "Q8_0"]}),
    Case("imatrix-quant-without-imatrix", "quant IQ2_XS needs an importance matrix (IQ2_XS cannot be made without "
         "one) but imatrix is false", {"imatrix": False, "quants": ["IQ2_XS"]}),
    Case("variant-tensor-types-need-imatrix", "quant Q4-tiny needs an importance matrix (IQ2_XXS cannot be made "
         "without one) but variants.Q4-tiny.imatrix is false", {"quants": ["Q4-tiny"], "variants": {
             "Q4-tiny": {"type": "Q4_K_M", "imatrix": False, "tensor_types": {"ffn_down": "IQ2_XXS"}}}}),
    # models
    Case("no-models", "models: [] should be non-empty", {"models": []}),
    Case("duplicate-model-names", "models[1].name: 'm' is already used by models[0].name; expected unique model "
         "names", {"models": [model(), model()]}),
    *[Case(f"model-name-{name}", f"models[0].name: {name!r} does not match", {"models": [model(name)]})
      for name in ("../x", "/abs", "a/b", ".", "..")],
    # names and bounds (plan-time checks)
    Case("variant-named-like-a-quant-type", "variants.Q4_K_M: a variant may not be named like the quant type Q4_K_M; "
         "expected another name (e.g. Q4_K_M_static)", {"quants": ["Q4_K_M"], "variants": {"Q4_K_M": {"type": "Q4_K_M"}}}),
    Case("model-name-trailing-newline", "models[0].name: 'm\\n' does not match '^[A-Za-z0-9][A-Za-z0-9._-]*$'",
         {"models": [model("m\n")]}),
    Case("model-name-control-character", "models[0].name: 'm\\x1b' does not match", {"models": [model("m\x1b")]}),
    Case("tier-name-trailing-newline", "tiers[0].name: 't\\n' does not match", {"tiers": [{**TIER, "name": "t\n"}]}),
    Case("variant-name-trailing-newline", "variants: 'v\\n' does not match", {"variants": {"v\n": {"type": "Q8_0"}}}),
    Case("remedy-name-trailing-newline", "fallback.remedies[0].name: 's\\n' does not match",
         {"fallback": {"remedies": [{"name": "s\n"}]}}),
    Case("model-named-like-results-folder", "models[0].name: 'package' is the name of results/package; expected a "
         "model name other than benchmarks, logs, package, quality.csv, summary, toolchain",
         {"models": [model("package")]}),
    Case("model-names-differ-in-case", "models[1].name: 'M' is already used by models[0].name as 'm'",
         {"models": [model("m"), model("M")]}),
    Case("variant-named-like-fallback-try", "quants[1]: 'Q4_K_M-measured' is already used by "
         "fallback.remedies[0].name; expected build names unique per model",
         {"quants": ["Q4_K_M", "Q4_K_M-measured"], "variants": {"Q4_K_M-measured": {"type": "Q4_K_M"}}}),
    Case("duplicate-remedy-names", "fallback.remedies[1].name: 'Q4_K_M-a' is already used by fallback.remedies[0].name",
         {"quants": ["Q4_K_M"], "fallback": {"remedies": [{"name": "a", "tensor_types": {"attn_v": "Q8_0"}},
                                                          {"name": "a", "output_tensor_type": "Q8_0"}]}}),
    Case("variant-named-reference", "quants[0]: 'reference' names the reference's own files",
         {"quants": ["reference"], "variants": {"reference": {"type": "Q8_0"}}}),
    Case("variant-named-like-another-builds-file", "quants[1]: 'Q8_0.sanity' makes validate/Q8_0.sanity.json, a file "
         "of build 'Q8_0'", {"quants": ["Q8_0", "Q8_0.sanity"], "variants": {"Q8_0.sanity": {"type": "Q8_0"}}}),
    Case("model-names-run-together", "models[1].name: 'a-b' + 'Q8_0' and 'a' + 'b-Q8_0' both make "
         "results/logs/sanity/a-b-Q8_0.log", {"models": [model("a"), model("a-b")], "quants": ["Q8_0", "b-Q8_0"],
                                              "variants": {"b-Q8_0": {"type": "Q8_0"}}}),
    Case("tensor-pattern-not-a-regex", "quant_options.Q8_0.tensor_types: pattern 'attn_(v': not a regular expression",
         {"quant_options": {"Q8_0": {"tensor_types": {"attn_(v": "Q8_0"}}}}),
    Case("tensor-pattern-python-only", "variants.v.tensor_types: pattern '(?<!x)attn': '(?<': llama.cpp's std::regex "
         "(ECMAScript) knows only the groups", {"quants": ["v"], "variants": {
             "v": {"type": "Q8_0", "tensor_types": {"(?<!x)attn": "Q8_0"}}}}),
    Case("hub-repo-id-double-dash", "models[0].source.repo_id: Cannot have -- or .. in repo_id: 'a--b/c'",
         {"models": [{"name": "m", "source": {"type": "hf", "repo_id": "a--b/c", "revision": "main"}}]}),
    Case("hub-revision-leaves-the-cache", "models[0].source.revision: '../../x' is not a git branch or tag name",
         {"models": [{"name": "m", "source": {"type": "hf", "repo_id": "o/m", "revision": "../../x"}}]}),
    Case("base-model-not-a-hub-id", "models[0].base_model: Repo_id cannot end by '.git'",
         {"models": [model(base_model="o/m.git")]}),
    Case("ctx-out-of-bounds", "calibration.ctx: 1000000000000 is greater than the maximum of 131072",
         {"calibration": {"ctx": 10**12}}),
    Case("threads-out-of-bounds", "tiers[0].threads: 1000000000000 is greater than the maximum of 1024",
         {"tiers": [{**TIER, "threads": 10**12}]}),
    Case("repetitions-out-of-bounds", "benchmark.repetitions: 1000000 is greater than the maximum of 100",
         {"benchmark": {"repetitions": 10**6}}),
    Case("gate-not-a-number", "gates.default.max_mean_kld: nan is not of type 'number'",
         {"gates": {"default": {"max_mean_kld": float("nan")}}}),
    # sources
    Case("gguf-missing", "models[0].source.path: file 'nope.gguf' does not exist",
         {"models": [{"name": "m", "source": {"type": "gguf", "path": "nope.gguf"}}]}),
    Case("gguf-truncated", "models[0].source.path: m.gguf: truncated GGUF: its header says the tensor data ends at "
         f"byte {len(TINY_GGUF)}, the file has {len(TINY_GGUF) - 100} bytes", files={"m.gguf": TINY_GGUF[:-100]}),
    Case("gguf-header-cut", "models[0].source.path: m.gguf: damaged or truncated GGUF header",
         files={"m.gguf": TINY_GGUF[:40]}),
    Case("gguf-is-text", "models[0].source.path: m.gguf: not a GGUF file (starts with b'hell', expected b'GGUF')",
         files={"m.gguf": "hello, I am a text file\n"}),
    Case("gguf-package-missing", "models[0].source: package 'no_such_package' is not installed",
         {"models": [{"name": "m", "source": {"type": "gguf", "package": "no_such_package", "file": "x.gguf"}}]}),
    Case("local-dir-missing", "models[0].source.path: directory 'nodir' does not exist", local("nodir")),
    Case("local-without-config-json", "models[0].source.path: hf: no config.json; expected an HF-format model "
         "directory", local(), hf_files(**{"hf/config.json": None})),
    Case("local-config-json-broken", "models[0].source.path: hf/config.json: not valid JSON", local(),
         hf_files(**{"hf/config.json": "{'not': json"})),
    Case("local-config-without-architectures", "models[0].source.path: hf/config.json: no architectures; expected "
         'the model class the checkpoint was saved as, e.g. "architectures": ["LlamaForCausalLM"]', local(),
         hf_files(**{"hf/config.json": '{"model_type": "llama", "architectures": []}'})),
    Case("local-without-weights", "models[0].source.path: hf: no weights; expected *.safetensors files", local(),
         hf_files(**{"hf/model.safetensors": None})),
    Case("local-only-pickle-weights", "hf: only pickle weights (pytorch_model.bin)", local(),
         hf_files(**{"hf/model.safetensors": None, "hf/pytorch_model.bin": b"\x80\x04"})),
    Case("safetensors-truncated", f"hf/model.safetensors: truncated: the header says the data ends at byte "
         f"{len(WEIGHTS)}, the file has {len(WEIGHTS) - 10} bytes", local(),
         hf_files(**{"hf/model.safetensors": WEIGHTS[:-10]})),
    Case("safetensors-header-corrupt", "hf/model.safetensors: damaged safetensors header (JSONDecodeError", local(),
         hf_files(**{"hf/model.safetensors": WEIGHTS[:8] + b"#" * (len(WEIGHTS) - 8)})),
    Case("safetensors-length-garbage", "hf/model.safetensors: damaged safetensors header (its length field says",
         local(), hf_files(**{"hf/model.safetensors": b"\xff" * 64})),
    # texts
    Case("calibration-missing", "calibration.text: file 'nope.txt' does not exist", {"calibration": {"text": "nope.txt"}}),
    Case("calibration-empty", "calibration.text: cal.txt: calibration text has 0 characters; expected at least 1000",
         {"calibration": {"text": "cal.txt"}}, {"cal.txt": ""}),
    Case("calibration-not-utf8", "calibration.text: cal.txt: calibration text is not UTF-8",
         {"calibration": {"text": "cal.txt"}}, {"cal.txt": WORDS.encode() + b"\xff"}),
    Case("calibration-shorter-than-chunks", f"calibration: the text 'cal.txt' has {len(WORDS)} bytes, so at most {len(WORDS)} "
         "tokens, but chunks × ctx = 20 × 1024 needs 20480", {"calibration": {"text": "cal.txt", "ctx": 1024}}, {"cal.txt": WORDS}),
    Case("model-calibration-shorter-than-chunks", "models[0].calibration: the text",
         {"models": [model(calibration={"text": "cal.txt", "chunks": 30})]}, {"cal.txt": WORDS}),
    Case("evaluation-empty", "evaluation.text: eval.txt: evaluation text has 0 characters; expected at least 1000",
         {"evaluation": {"text": "eval.txt"}}, {"eval.txt": "\n"}),
    Case("evaluation-shorter-than-chunks", f"evaluation: the text 'eval.txt' has {len(WORDS)} bytes",
         {"evaluation": {"text": "eval.txt", "chunks": 40}}, {"eval.txt": WORDS}),
    Case("evaluation-overlaps-calibration", "of the evaluation text 'eval.txt' also occurs in the calibration text "
         "'cal.txt'; expected at most 2.0% (evaluation.max_overlap)",
         {"calibration": {"text": "cal.txt", "chunks": 10}, "evaluation": {"text": "eval.txt", "chunks": 10}},
         {"cal.txt": WORDS, "eval.txt": WORDS}),
    # file kinds and bounded planning
    Case("calibration-is-a-directory", "calibration.text: 'cal' is a directory; expected a file",
         {"calibration": {"text": "cal"}}, {"cal/cal.txt": WORDS}),
    Case("calibration-is-a-device", "calibration.text: '/dev/null' is a character device; expected a file",
         {"calibration": {"text": "/dev/null"}}),
    Case("calibration-is-a-fifo", "calibration.text: 'cal.txt' is a named pipe (FIFO); expected a file",
         {"calibration": {"text": "cal.txt"}}, {"cal.txt": FIFO}),
    Case("evaluation-is-a-symlink-loop", "evaluation.text: 'eval.txt' is a symbolic link loop; expected a file",
         {"evaluation": {"text": "eval.txt"}}, {"eval.txt": Link("eval.txt")}),
    Case("gguf-is-a-dangling-symlink", "models[0].source.path: 'link.gguf' is a symbolic link to 'gone.gguf', which "
         "does not exist; expected a file", {"models": [{"name": "m", "source": {"type": "gguf", "path": "link.gguf"}}]},
         {"link.gguf": Link("gone.gguf")}),
    Case("local-source-is-a-file", "models[0].source.path: 'hf' is a file; expected a directory", local(),
         {"hf": "config.json"}),
    Case("build-dir-is-a-file", "toolchain.build_dir: 'build' is a file; expected a directory",
         {"toolchain": {"build_dir": "build"}}, {"build": "#!/bin/sh\n"}),
    Case("note-alias-bomb", "models[0].note[8][8][8][8]", alias_bomb()),
    Case("note-nested-deep", f"models[0].note{'[0]' * 14}: nested more than 16 levels deep",
         {"models": [model(note=nested(20))]}),
    Case("note-huge", "models[0].note: too large to check", {"models": [model(note="x" * 2_000_000)]}),
    # tiers, benchmark, gates
    Case("duplicate-tier-names", "tiers[1].name: 't' is already used by tiers[0].name; expected unique tier names",
         {"tiers": [TIER, TIER]}),
    Case("negative-threads", "tiers[0].threads: -1 is less than the minimum of 1", {"tiers": [{**TIER, "threads": -1}]}),
    Case("zero-latency-budget", "tiers[0].latency_budget_s: 0 is less than or equal to the minimum of 0",
         {"tiers": [{**TIER, "latency_budget_s": 0}]}),
    Case("zero-ram", "tiers[0].ram_gb: 0 is less than or equal to the minimum of 0", {"tiers": [{**TIER, "ram_gb": 0}]}),
    Case("zero-benchmark-repetitions", "benchmark.repetitions: 0 is less than the minimum of 1",
         {"benchmark": {"repetitions": 0}}),
    Case("negative-gate", "gates.default.max_mean_kld: -0.1 is less than the minimum of 0",
         {"gates": {"default": {"max_mean_kld": -0.1}}}),
    Case("negative-per-quant-gate", "gates.per_quant.Q8_0.max_delta_ppl_pct: -1 is less than the minimum of 0",
         {"gates": {"per_quant": {"Q8_0": {"max_delta_ppl_pct": -1}}}}),
    Case("gate-for-unknown-quant", "gates.per_quant: 'Q9' is not allowed; expected one of",
         {"gates": {"per_quant": {"Q9": {"max_mean_kld": 1}}}}),
    # toolchain
    Case("version-not-a-version", "toolchain.llama_cpp_python_version: 'latest' does not match",
         {"toolchain": {"llama_cpp_python_version": "latest"}}),
    Case("backend-unknown", "toolchain.backend: 'rocm' is not allowed; expected one of cpu, cuda",
         {"toolchain": {"backend": "rocm"}}),
    Case("build-dir-missing", "toolchain.build_dir: directory 'nobuild' does not exist", {"toolchain": {"build_dir": "nobuild"}}),
    Case("build-dir-without-tools", "toolchain.build_dir: build/bin lacks llama-quantize", {"toolchain": {"build_dir": "build"}},
         {"build/bin/llama-cli": "#!/bin/sh\n"}),
    # found out only when the toolchain job asks the package index (no heavy work has started then)
    Case("version-does-not-exist", "toolchain.llama_cpp_python_version: could not fetch the llama-cpp-python sdist "
         "'9.9.9'", {"toolchain": {"llama_cpp_python_version": "9.9.9"}}, args=("results/toolchain/llama.cpp.json",),
         from_config=False),
    # every refusal of the plan-time name, pattern, Hub reference and bound checks, through Snakemake too
    *[Case(f"plan-time-{index}", expected, {**SMALL_TEXTS, **config}, {"cal.txt": TEXT, "eval.txt": TEXT.replace("w", "v")})
      for index, (config, expected) in enumerate(REFUSED)],
]


def _write_case(tmp_path: Path, config, files: dict) -> Path:
    (tmp_path / "m.gguf").write_bytes(TINY_GGUF)
    for name, data in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is FIFO:
            os.mkfifo(path)
        elif isinstance(data, Link):
            path.symlink_to(data)
        else:
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
    if isinstance(config, str):
        (tmp_path / "config.yaml").write_text(config)
        return tmp_path / "config.yaml"
    return write_config(tmp_path, {**BASE, **config})


def _assert_nothing_looks_complete(results: Path) -> None:
    """No GGUF without its checksum sidecar (what every consumer takes as 'finished')."""
    for gguf in results.rglob("*.gguf"):
        assert Path(f"{gguf}.sha256").exists(), f"{gguf} looks complete"


CASES = {c.name: c for c in BAD_INPUT}


@pytest.fixture(scope="module")
def refusals(request, tmp_path_factory) -> dict:
    """The selected cases' runs, side by side: each is a snakemake process that spends most of its
    time starting up, so one after another they would take most of the fast test suite's time."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.originalname == "test_bad_input_is_refused_with_one_clear_message"]

    # Never the machine's llama.cpp build or a prepared tree: a toolchain case must meet the package index.
    env = {k: v for k, v in os.environ.items() if k != LOCAL_SOURCE_ENV}
    env["GGUF_FORGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))

    def run(name: str):
        workdir = tmp_path_factory.mktemp("case")
        configfile = _write_case(workdir, CASES[name].config, CASES[name].files)
        return workdir, configfile, snakemake(workdir, configfile, *CASES[name].args, check=False, env=env)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return dict(zip(selected, pool.map(run, selected)))


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_refused_with_one_clear_message(refusals, name):
    workdir, configfile, proc = refusals[name]
    assert proc.returncode != 0
    assert CASES[name].expected in proc.stderr
    assert "Traceback" not in proc.stderr
    if CASES[name].from_config:
        assert f"invalid configuration: {configfile}" in proc.stderr
        assert not (workdir / "results").exists()
    _assert_nothing_looks_complete(workdir / "results")


def test_a_bad_config_leaves_earlier_results_alone(tmp_path):
    earlier = tmp_path / "results" / "m" / "quant" / "m-Q8_0.gguf"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(TINY_GGUF)
    Path(f"{earlier}.sha256").write_text("checksum  m-Q8_0.gguf\n")
    before = {p: p.read_bytes() for p in (tmp_path / "results").rglob("*") if p.is_file()}
    configfile = _write_case(tmp_path, {"quants": ["Q4_K_Z"]}, {})
    assert snakemake(tmp_path, configfile, check=False).returncode != 0
    assert {p: p.read_bytes() for p in (tmp_path / "results").rglob("*") if p.is_file()} == before


def test_a_second_run_in_a_locked_directory_is_refused_until_unlocked(tmp_path):
    """A live run holds .snakemake/locks/ (written as Snakemake 9 writes it: one path per line);
    a second run that would write the same files stops with Snakemake's lock message."""
    configfile = _write_case(tmp_path, {}, {})
    target = "results/m/source/source.json"  # cheap: only the source manifest
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(target + "\n")
    proc = snakemake(tmp_path, configfile, target, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Directory cannot be locked" in proc.stderr and "--unlock" in proc.stderr
    assert not (tmp_path / target).exists()
    # Once no other run is alive, --unlock clears the lock and the run goes ahead.
    snakemake(tmp_path, configfile, "--unlock")
    snakemake(tmp_path, configfile, target)
    assert (tmp_path / target).exists()


def _stamp(tmp_path, tool_body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "fake-tool"
    tool.write_text("#!/bin/sh\n" + tool_body)
    tool.chmod(0o755)
    stamp = tmp_path / "stamp.json"
    stamp.write_text(f'{{"bin_dir": "{bin_dir}"}}')
    return stamp


def test_a_failing_tool_leaves_no_output_and_shows_its_last_lines(tmp_path):
    stamp = _stamp(tmp_path, 'echo "half" > "$1"\necho "loading model"\necho "error: out of memory"\nexit 3\n')
    out, log = tmp_path / "q.gguf", tmp_path / "q.log"
    with pytest.raises(UserError) as err:
        run_tool(stamp, "fake-tool", ["{out}"], out, log, [])
    assert "exited with status 3" in str(err.value) and "error: out of memory" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_a_tool_killed_by_a_signal_fails_the_step_saying_so(tmp_path):
    stamp = _stamp(tmp_path, 'echo "half" > "$1"\necho "allocating 80 GiB"\nkill -9 $$\n')
    out, log = tmp_path / "q.gguf", tmp_path / "q.log"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.tool_step", "--stamp", str(stamp), "--output",
                           str(out), "--log", str(log), "--", "fake-tool", "{out}"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "fake-tool was killed by signal 9 (SIGKILL)" in proc.stderr and "allocating 80 GiB" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".*partial")) and not Path(f"{out}.sha256").exists()


def test_a_successful_tool_output_is_renamed_and_checksummed(tmp_path):
    from workflow_scripts.checksums import verify

    stamp = _stamp(tmp_path, 'printf GGUFdata > "$1"\n')
    out = tmp_path / "q.gguf"
    run_tool(stamp, "fake-tool", ["{out}"], out, tmp_path / "q.log", [])
    assert out.read_bytes() == b"GGUFdata"
    verify(out)


def test_module_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.calibration", str(tmp_path / "none.txt"),
                           str(tmp_path / "out.txt")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"gguf-forge error: {tmp_path / 'none.txt'}: calibration text does not exist; expected a file\n"
