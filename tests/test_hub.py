"""Hub sources against a local stand-in of the Hub (tests/hub_standin.py), huggingface_hub unchanged.

Every fetch runs the real command (``python -m workflow_scripts.sources manifest``) in a fresh
process with HF_ENDPOINT pointing at the stand-in and HF_HOME in a scratch directory, so the
user's Hugging Face cache and token are never used. The first tests need no stand-in: which files
a download takes, and an endpoint where nothing listens.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CALIBRATION
from tests.hub_standin import HubStandin
from tests.stub_sources import safetensors_bytes
from tests.workflow_run import snakemake, write_config
from workflow_scripts.errors import UserError
from workflow_scripts.hub import check_hub_listing, hub_allow_patterns

ROOT = Path(__file__).resolve().parent.parent
REPO = "org/tiny"
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}'
TOKEN = "hf_standinSecret0123456789"


@pytest.fixture
def hub():
    with HubStandin() as standin:
        yield standin


@pytest.fixture(scope="module")
def tiny_files(tiny_hf) -> dict[str, bytes]:
    """The tiny real Llama's files, as the content of one commit."""
    return {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()}


def hub_env(hub: HubStandin, home: Path, **extra: str) -> dict[str, str]:
    """The environment without the user's HF_* settings: the stand-in, a scratch HF_HOME, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra}


def fetch(env: dict, out: Path, revision: str, repo_id: str = REPO, **source) -> subprocess.CompletedProcess:
    """The source step: ``out/hf`` gets the files, ``out/source.json`` the manifest."""
    spec = {"type": "hf", "repo_id": repo_id, "revision": revision, **source}
    return subprocess.run([sys.executable, "-m", "workflow_scripts.sources", "manifest", "--source-json",
                           json.dumps(spec), "--dest", str(out / "hf"), "--out", str(out / "source.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def fetched(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "source.json").read_text())


def assert_nothing_fetched(out: Path) -> None:
    """No manifest and no files directory (complete or partial) after a failed fetch."""
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


def test_hub_patterns_and_pickle_refusal():
    assert "*.safetensors" in hub_allow_patterns(False) and "tokenizer.model" in hub_allow_patterns(False)
    assert not {"*.bin", "*.pt", "*.pth"} & set(hub_allow_patterns(False))
    assert "*.bin" in hub_allow_patterns(True)
    check_hub_listing("o/m", ["config.json", "model.safetensors", "pytorch_model.bin"], False)
    with pytest.raises(UserError, match="o/m: only pickle weights"):
        check_hub_listing("o/m", ["config.json", "pytorch_model.bin"], False)
    with pytest.raises(UserError, match="o/m: only pickle weights"):  # weights in a subfolder are not used
        check_hub_listing("o/m", ["config.json", "pytorch_model.bin", "onnx/model.safetensors"], False)
    check_hub_listing("o/m", ["config.json", "pytorch_model.bin"], True)
    with pytest.raises(UserError, match="no \\*.safetensors"):
        check_hub_listing("o/m", ["config.json"], True)


def test_unreachable_hub_is_a_user_error_and_the_token_is_not_shown(tmp_path):
    """The real download code path, against an endpoint where nothing listens."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_secretvalue123",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    proc = fetch(env, tmp_path, "main", repo_id="org/model")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gguf-forge error: hf repository org/model@main: the Hub could not be reached")
    assert "set HF_HUB_OFFLINE=1 to use what the Hugging Face cache holds" in proc.stderr
    assert "hf_secretvalue123" not in proc.stdout + proc.stderr
    assert not (tmp_path / "source.json").exists() and not (tmp_path / "hf").exists()


def test_a_branch_is_resolved_once_and_a_pinned_commit_keeps_its_bytes(hub, tiny_files, tmp_path):
    first = hub.commit(REPO, tiny_files)
    weights = tiny_files["model.safetensors"]
    changed = {**tiny_files, "model.safetensors": weights[:-1] + bytes([weights[-1] ^ 1])}
    moved = []

    def move_main_after_the_first_lookup(request):
        if request.path.startswith("/api/") and not moved:
            moved.append(hub.commit(REPO, changed))

    hub.hook = move_main_after_the_first_lookup
    run = fetch(hub_env(hub, tmp_path / "home"), tmp_path / "a", "main")
    manifest = fetched(run, tmp_path / "a")
    hub.hook = None
    # main moved while the fetch ran; it still got, and recorded, the commit it resolved first.
    assert moved and moved[0] != first
    assert manifest["resolved_revision"] == first and manifest["identity"]["pinned"] is False
    assert (tmp_path / "a" / "hf" / "model.safetensors").read_bytes() == weights
    assert all(f"/resolve/{first}/" in r.path for r in hub.requests if "/resolve/" in r.path)
    assert f"resolved to commit {first}; pin that sha" in run.stdout
    # Pinned to that commit later, from a cold cache: the old weights, not main's.
    pinned = fetched(fetch(hub_env(hub, tmp_path / "cold"), tmp_path / "b", first), tmp_path / "b")
    assert pinned["resolved_revision"] == first and pinned["identity"]["pinned"] is True
    assert (tmp_path / "b" / "hf" / "model.safetensors").read_bytes() == weights
    latest = fetched(fetch(hub_env(hub, tmp_path / "cold"), tmp_path / "c", "main"), tmp_path / "c")
    assert latest["resolved_revision"] == moved[0]
    assert (tmp_path / "c" / "hf" / "model.safetensors").read_bytes() == changed["model.safetensors"]


@pytest.mark.toolchain
@pytest.mark.slow
def test_a_gated_repository_needs_hf_token_which_is_never_written(hub, tiny_files, tmp_path, toolchain_root):
    """The real workflow: refused without the token or with another, converted with it; the token
    is in no file of the working directory (results, logs, .snakemake, the HF cache) nor any output."""
    hub.commit("org/gated", tiny_files, token=TOKEN)
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = write_config(workdir, {
        "calibration": {"text": str(CALIBRATION), "chunks": 4, "ctx": 128}, "quants": ["Q8_0"],
        "models": [{"name": "tiny", "source": {"type": "hf", "repo_id": "org/gated", "revision": "main"}}]})
    home, source = workdir / "hf-home", workdir / "results" / "tiny" / "source"
    log = workdir / "results" / "logs" / "source" / "tiny.log"
    outputs = []
    for token, status in ((None, 401), ("hf_someoneElsesToken", 403)):
        env = hub_env(hub, home, **({"HF_TOKEN": token} if token else {}))
        proc = snakemake(workdir, config, "results/tiny/source/source.json", check=False, env=env)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode != 0
        assert log.read_text().strip() == (
            f"gguf-forge error: hf repository org/gated@main: the Hub answered {status} (no access); check HF_TOKEN: "
            "it must be set to a token that can read this repository (for a gated one, accept its terms on the Hub "
            "first)")
        assert_nothing_fetched(source)
    proc = snakemake(workdir, config, "results/tiny/reference/tiny-F16.gguf", env=hub_env(hub, home, HF_TOKEN=TOKEN))
    outputs.append(proc.stdout + proc.stderr)
    assert (workdir / "results" / "tiny" / "reference" / "tiny-F16.gguf").stat().st_size > 100_000
    assert hub.file_requests("org/gated", "model.safetensors")[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    leaks = [p for p in workdir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaks and not [o for o in outputs if TOKEN in o]


def test_a_download_cut_short_resumes_on_the_next_run(hub, tmp_path):
    # Larger than huggingface_hub's 10 MiB write chunk, so the cut leaves part of the file behind.
    weights = safetensors_bytes({"w": 12_000_000})
    hub.commit(REPO, {"config.json": CONFIG, "model.safetensors": weights})
    hub.cuts[REPO, "model.safetensors"] = 11_000_000
    env, out = hub_env(hub, tmp_path / "home"), tmp_path / "s"
    broken = fetch(env, out, "main")
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"gguf-forge error: hf repository {REPO}@main: the download broke off "
                                    "(ChunkedEncodingError); check the network or HF_ENDPOINT and re-run (a "
                                    "download resumes)")
    assert_nothing_fetched(out)
    fetched(fetch(env, out, "main"), out)
    first, second = hub.file_requests(REPO, "model.safetensors")
    assert "Range" not in first.headers and first.body_bytes == 11_000_000
    start = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 11_000_000 and second.body_bytes == len(weights) - start
    assert (out / "hf" / "model.safetensors").read_bytes() == weights


def test_pickle_weights_are_fetched_only_with_allow_pickle(hub, tmp_path):
    env = hub_env(hub, tmp_path / "home")
    hub.commit("org/pickled", {"config.json": CONFIG, "pytorch_model.bin": b"pickled weights"})
    refused = fetch(env, tmp_path / "a", "main", "org/pickled")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "gguf-forge error: hf repository org/pickled: only pickle weights (pytorch_model.bin); refused unless the "
        "source sets allow_pickle: true (unpickling runs code)")
    assert not hub.file_requests("org/pickled", "pytorch_model.bin") and not hub.file_requests("org/pickled", "config.json")
    assert_nothing_fetched(tmp_path / "a")
    allowed = fetched(fetch(env, tmp_path / "b", "main", "org/pickled", allow_pickle=True), tmp_path / "b")
    assert [Path(f["path"]).name for f in allowed["files"]] == ["config.json", "pytorch_model.bin"]
    assert (tmp_path / "b" / "hf" / "pytorch_model.bin").read_bytes() == b"pickled weights"
    # Beside safetensors, a pickle is not even downloaded.
    hub.commit("org/both", {"config.json": CONFIG, "model.safetensors": safetensors_bytes({"w": 4}),
                            "pytorch_model.bin": b"pickled weights"})
    both = fetched(fetch(env, tmp_path / "c", "main", "org/both"), tmp_path / "c")
    assert [Path(f["path"]).name for f in both["files"]] == ["config.json", "model.safetensors"]
    assert not hub.file_requests("org/both", "pytorch_model.bin", "HEAD") and not (tmp_path / "c" / "hf" / "pytorch_model.bin").exists()


def test_offline_mode_fetches_from_a_warm_cache(hub, tiny_files, tmp_path):
    commit = hub.commit(REPO, tiny_files)
    home = tmp_path / "home"
    fetched(fetch(hub_env(hub, home), tmp_path / "online", "main"), tmp_path / "online")
    hub.stop()  # from here on, nothing answers at HF_ENDPOINT
    offline = hub_env(hub, home, HF_HUB_OFFLINE="1")
    for revision in (commit, "main"):  # a branch resolves through the cache's refs
        out = tmp_path / revision
        manifest = fetched(fetch(offline, out, revision), out)
        assert manifest["resolved_revision"] == commit
        files = {p.name: p for p in (out / "hf").iterdir()}
        assert {name: p.read_bytes() for name, p in files.items()} == tiny_files
        assert not [p for p in files.values() if p.is_symlink()]  # plain files, usable without the cache
    cold = fetch(hub_env(hub, tmp_path / "cold", HF_HUB_OFFLINE="1"), tmp_path / "cold-out", "main")
    assert cold.returncode == 2
    assert cold.stderr.startswith(f"gguf-forge error: hf repository {REPO}@main: HF_HUB_OFFLINE is set and the "
                                  f"Hugging Face cache ({tmp_path / 'cold' / 'hub'}) does not hold this revision")
    assert_nothing_fetched(tmp_path / "cold-out")


def test_hf_hub_cache_is_where_the_download_goes_and_what_offline_reads(hub, tiny_files, tmp_path):
    """HF_HUB_CACHE set apart from HF_HOME: the blobs (named by their sha256, the stand-in's ETag)
    and the branch's ref land there and nowhere in HF_HOME; the source files are those blobs, hard
    linked; offline, that cache serves the revision, and a cache without it is named in the error."""
    import hashlib

    commit = hub.commit(REPO, tiny_files)
    home, cache = tmp_path / "home", tmp_path / "elsewhere" / "hub-cache"
    fetched(fetch(hub_env(hub, home, HF_HUB_CACHE=str(cache)), tmp_path / "online", "main"), tmp_path / "online")
    repo = cache / "models--org--tiny"
    blobs = {p.name: p for p in (repo / "blobs").iterdir()}
    assert set(blobs) == {hashlib.sha256(data).hexdigest() for data in tiny_files.values()}
    assert (repo / "refs" / "main").read_text() == commit
    assert not (home / "hub").exists() and not [p for p in home.rglob("*") if p.is_file()]
    for name, data in tiny_files.items():
        fetched_file = tmp_path / "online" / "hf" / name
        assert fetched_file.stat().st_ino == blobs[hashlib.sha256(data).hexdigest()].stat().st_ino, name
    hub.stop()
    offline = fetch(hub_env(hub, home, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1"), tmp_path / "offline", "main")
    assert fetched(offline, tmp_path / "offline")["resolved_revision"] == commit
    empty = tmp_path / "empty-cache"
    refused = fetch(hub_env(hub, home, HF_HUB_CACHE=str(empty), HF_HUB_OFFLINE="1"), tmp_path / "refused", "main")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"gguf-forge error: hf repository {REPO}@main: HF_HUB_OFFLINE is set and the "
                                     f"Hugging Face cache ({empty}) does not hold this revision")
    assert_nothing_fetched(tmp_path / "refused")
