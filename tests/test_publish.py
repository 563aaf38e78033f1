"""Publishing a package to the Hub, against the local stand-in (tests/hub_standin.py) speaking the
upload protocol huggingface_hub really uses: create_repo, preupload, the LFS batch API with basic
transfer, the NDJSON commit. The package is the tiny scenario's, made by the real workflow; every
publish runs the real command in a fresh process with HF_ENDPOINT at the stand-in and a scratch
HF_HOME, so the user's token and cache are never used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.dag import planned_jobs
from tests.hub_standin import GITATTRIBUTES, HubStandin, is_lfs
from tests.stub_sources import EMPTY_GGUF
from tests.test_hub import hub_env
from tests.workflow_run import copy_run, snakemake
from workflow_scripts.config import build_plan
from workflow_scripts.errors import UserError
from workflow_scripts.summary import published_md

ROOT = Path(__file__).resolve().parent.parent
REPO = "org/tiny-gguf"
MESSAGE = "Publish the tiny package"
WRITE = "hf_writerSecret0123456789abcdef"
READ = "hf_readerSecret0123456789abcdef"
ACCESS = ("check HF_TOKEN: it must be a token with write access to this repository (HF_TOKEN, or else the login "
          "`hf auth login` saved)")


@pytest.fixture
def hub():
    with HubStandin() as standin:
        standin.tokens = {WRITE: "write", READ: "read"}
        yield standin


@pytest.fixture
def package(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run's package (a publish writes published.json into it)."""
    return Path(shutil.copytree(tiny_run.workdir / "results" / "package" / "tiny", tmp_path / "package" / "tiny"))


def contents(package: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in package.iterdir() if p.name != "published.json"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def command(package: Path, *extra: str, repo: str = REPO) -> list[str]:
    return [sys.executable, "-m", "workflow_scripts.publish", "--package", str(package), "--repo-id", repo,
            "--message", MESSAGE, "--out", str(package / "published.json"), *extra]


def publish(hub: HubStandin, package: Path, *extra: str, token: str | None = WRITE, **env: str):
    environment = hub_env(hub, package.parent / "hf-home", **({"HF_TOKEN": token} if token else {}), **env)
    return subprocess.run(command(package, *extra), cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)


def record(package: Path) -> dict:
    return json.loads((package / "published.json").read_text())


def commits(hub: HubStandin, since: int = 0) -> list[list[dict]]:
    """The NDJSON commit calls from request ``since`` on, each as its lines."""
    return [[json.loads(line) for line in r.body.splitlines()] for r in hub.requests[since:]
            if r.method == "POST" and "/commit/" in r.path]


@pytest.mark.toolchain
def test_a_package_is_uploaded_once_and_a_second_run_sends_nothing(hub, package):
    files = contents(package)
    ggufs = {name: data for name, data in files.items() if name.endswith(".gguf")}
    lfs = {name: data for name, data in files.items() if is_lfs(name, len(data), data)}  # the GGUFs, any binary
    assert len(ggufs) >= 3 and set(ggufs) <= set(lfs) and "SHA256SUMS" in files
    started = time.monotonic()
    first = publish(hub, package)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    head = hub.repos[REPO].branches["main"]
    assert hub.files(REPO) == {**files, ".gitattributes": GITATTRIBUTES} and hub.repos[REPO].private
    done = record(package)
    assert done["commit"] == head and done["url"] == f"{hub.url}/{REPO}"
    assert done["commit_url"] == f"{hub.url}/{REPO}/commit/{head}"
    assert sorted(f["file"] for f in done["uploaded"]) == sorted(files) and done["unchanged"] == []
    assert done["uploaded_bytes"] == sum(map(len, files.values()))
    # The GGUFs went through LFS, each once, byte for byte; the small text files inside the one commit.
    uploads = hub.uploads()
    assert sorted(r.path for r in uploads) == sorted(f"/lfs-upload/{sha256(d)}" for d in lfs.values())
    assert sum(r.received for r in uploads) == sum(map(len, lfs.values()))
    [commit] = commits(hub)
    assert commit[0]["value"]["summary"] == MESSAGE
    assert sorted(op["value"]["path"] for op in commit if op["key"] == "lfsFile") == sorted(lfs)
    # hf_xet is installed, so the client offers Xet; the stand-in picks basic LFS transfer.
    batch = [json.loads(r.body) for r in hub.requests if r.path.endswith("/info/lfs/objects/batch")]
    assert batch and all(b["transfers"] == ["basic", "multipart", "xet"] for b in batch)
    assert not [r for r in hub.requests if "xet" in r.path]
    sent_first = hub.bytes_received()

    mark = len(hub.requests)
    started = time.monotonic()
    second = publish(hub, package)
    took_again = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    again = record(package)
    assert again["commit"] == head and again["uploaded"] == [] and again["uploaded_bytes"] == 0
    assert again["unchanged"] == sorted(files) and again["deleted"] == []
    assert not hub.uploads(mark) and not commits(hub, mark) and hub.repos[REPO].branches["main"] == head
    sent_again = hub.bytes_received(mark)
    assert sent_again < 200  # create_repo's JSON, nothing else
    print(f"\npublish tiny package: {len(files)} files, {sum(map(len, files.values()))} bytes; first run "
          f"{took:.2f} s, {sent_first} bytes received by the Hub; second run {took_again:.2f} s, {sent_again} bytes")


@pytest.mark.toolchain
def test_only_files_that_differ_from_the_repository_are_uploaded(hub, package):
    files = contents(package)
    changed = sorted(name for name in files if name.endswith(".gguf"))[0]
    hub.commit(REPO, {**files, changed: files[changed][:-1] + bytes([files[changed][-1] ^ 1])})
    proc = publish(hub, package, "--no-private")
    assert proc.returncode == 0, proc.stderr
    assert [r.path for r in hub.uploads()] == [f"/lfs-upload/{sha256(files[changed])}"]
    [commit] = commits(hub)
    assert [op["value"]["path"] for op in commit[1:]] == [changed]
    assert hub.files(REPO) == files and record(package)["unchanged"] == sorted(set(files) - {changed})


@pytest.mark.toolchain
def test_an_upload_cut_off_is_sent_again_within_the_run(hub, package):
    files = contents(package)
    largest = max((n for n in files if n.endswith(".gguf")), key=lambda n: len(files[n]))
    oid, cut = sha256(files[largest]), len(files[largest]) // 2
    hub.upload_cuts[oid] = cut
    proc = publish(hub, package)
    assert proc.returncode == 0, proc.stderr
    tries = [r.received for r in hub.uploads() if r.path == f"/lfs-upload/{oid}"]
    assert tries == [cut, len(files[largest])]  # huggingface_hub retries a dropped connection once the Hub is back
    assert hub.files(REPO) == {**files, ".gitattributes": GITATTRIBUTES}


@pytest.mark.toolchain
def test_a_killed_upload_resumes_without_sending_what_the_hub_holds(hub, package):
    """The publishing process killed while the largest GGUF is half uploaded: no commit, no record;
    the next run sends only the objects the Hub did not get whole, each once."""
    files = contents(package)
    ggufs = {name: data for name, data in files.items() if is_lfs(name, len(data), data)}  # the GGUFs, any binary
    largest = max(ggufs, key=lambda n: len(ggufs[n]))
    hub.upload_cuts[sha256(ggufs[largest])] = len(ggufs[largest]) // 2
    env = hub_env(hub, package.parent / "hf-home", HF_TOKEN=WRITE)
    proc = subprocess.Popen(command(package), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_at_the_cut(request):
        if request.method == "PUT" and request.path.endswith(sha256(ggufs[largest])):
            proc.kill()

    hub.hook = kill_at_the_cut
    assert proc.wait(timeout=300) != 0
    assert not (package / "published.json").exists()
    assert hub.files(REPO) == {".gitattributes": GITATTRIBUTES} and not commits(hub)
    mark, snapshots = len(hub.requests), []
    # What the Hub holds when the next run starts (uploads in flight at the kill have ended by then).
    hub.hook = lambda request: snapshots or snapshots.append(set(hub.lfs))
    resumed = publish(hub, package)
    assert resumed.returncode == 0, resumed.stderr
    held = snapshots[0]
    assert sha256(ggufs[largest]) not in held
    missing = {sha256(d): len(d) for d in ggufs.values() if sha256(d) not in held}
    assert sorted((r.path.rsplit("/", 1)[1], r.received) for r in hub.uploads(mark)) == sorted(missing.items())
    assert hub.files(REPO) == {**files, ".gitattributes": GITATTRIBUTES}
    print(f"\nkilled upload resumed: {len(held)} of {len(ggufs)} GGUFs already held; re-sent "
          f"{sum(missing.values())} of {sum(map(len, ggufs.values()))} GGUF bytes")


@pytest.mark.toolchain
@pytest.mark.parametrize("token,status", [(None, None), ("hf_unknownToken000", 401), (READ, 403)])
def test_no_write_access_is_refused_in_one_line(hub, package, token, status):
    proc = publish(hub, package, token=token)
    where = f"gguf-forge error: publish {package} to {REPO}:"
    assert proc.returncode == 2
    if status is None:
        assert proc.stderr.strip() == (f"{where} no Hugging Face token; set HF_TOKEN or log in with `hf auth login` "
                                       "(a token with write access to the repository)")
        assert not hub.requests
    else:
        assert proc.stderr.strip() == f"{where} the Hub answered {status} (no access); {ACCESS}"
    assert "Traceback" not in proc.stderr and not (package / "published.json").exists() and REPO not in hub.repos


@pytest.mark.toolchain
def test_a_cached_login_is_used_and_the_token_is_written_nowhere(hub, package):
    """No HF_TOKEN: the token `hf auth login` saved (HF_HOME/token) is what the Hub sees; it is in
    no file of the package, the record or the output."""
    home = package.parent / "hf-home"
    home.mkdir()
    (home / "token").write_text(WRITE)
    proc = publish(hub, package, token=None)
    assert proc.returncode == 0, proc.stderr
    writes = [r for r in hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert writes and writes[0].headers["Authorization"] == f"Bearer {WRITE}"
    leaks = [p for p in package.rglob("*") if p.is_file() and WRITE.encode() in p.read_bytes()]
    assert not leaks and WRITE not in proc.stdout + proc.stderr


@pytest.mark.toolchain
def test_foreign_ggufs_are_refused_unless_replaced_in_the_same_commit(hub, package):
    files = contents(package)
    foreign = {"other-Q4_0.gguf": b"GGUF\0someone else's"}
    before = hub.commit(REPO, {".gitattributes": GITATTRIBUTES, **foreign})
    refused = publish(hub, package, "--no-private")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"gguf-forge error: publish {package} to {REPO}: the repository holds GGUF files this package does not: "
        "other-Q4_0.gguf; expected a repository of this model's package only (set publish.replace_foreign: true to "
        "delete them in the publishing commit, or publish to another repo_id)")
    assert not hub.uploads() and hub.repos[REPO].branches["main"] == before
    replaced = publish(hub, package, "--no-private", "--replace-foreign")
    assert replaced.returncode == 0, replaced.stderr
    [commit] = commits(hub)
    assert {"key": "deletedFile", "value": {"path": "other-Q4_0.gguf"}} in commit
    assert hub.files(REPO) == {**files, ".gitattributes": GITATTRIBUTES}
    assert record(package)["deleted"] == ["other-Q4_0.gguf"]


@pytest.mark.toolchain
def test_a_repository_of_the_other_visibility_is_refused(hub, package):
    hub.commit(REPO, {".gitattributes": GITATTRIBUTES})  # public
    proc = publish(hub, package)  # private by default
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("the repository is public but publish.private is true; expected the same "
                                        "visibility (change it on the Hub or in the config: publishing never changes it)")
    assert not hub.uploads() and not commits(hub)


@pytest.mark.toolchain
@pytest.mark.parametrize("dirt", ["extra", "changed", "directory"])
def test_a_dirty_package_is_refused_before_any_request(hub, package, dirt):
    gguf = sorted(p for p in package.iterdir() if p.name.endswith(".gguf"))[0]
    if dirt == "extra":
        (package / "notes.txt").write_text("not in SHA256SUMS")
        expected = f"{package}: notes.txt not listed in SHA256SUMS; expected every file of the package to be listed"
    elif dirt == "changed":
        data = gguf.read_bytes()
        gguf.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        expected = f"{gguf}: sha256 does not match SHA256SUMS; the file was changed or damaged"
    else:
        (package / ".cache").mkdir()
        expected = (f"{package}: .cache is not a file of the package; expected only the files SHA256SUMS lists "
                    "(remove it, or rebuild the package)")
    proc = publish(hub, package)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"gguf-forge error: {expected}"
    assert not hub.requests and not (package / "published.json").exists()


@pytest.mark.toolchain
@pytest.mark.slow
def test_the_publish_target_uploads_and_the_summary_names_the_commit(hub, tiny_run, tmp_path):
    """The workflow: off by default (the default target plans no upload and `snakemake publish` is
    refused); switched on, the publish target uploads the package once, the summary names the
    commit, and HF_TOKEN is in no file of the working directory nor any output."""
    workdir = copy_run(tiny_run.workdir, tmp_path / "work")
    env = hub_env(hub, tmp_path / "hf-home", HF_TOKEN=WRITE)
    off = snakemake(workdir, workdir / "config.yaml", "publish", check=False, env=env)
    assert off.returncode != 0 and "publish.enabled is false in the config" in off.stderr
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["publish"] = {"enabled": True, "commit_message": MESSAGE, "private": False}
    config["models"][0]["publish"] = {"repo_id": REPO}
    on = workdir / "publish.yaml"
    on.write_text(yaml.safe_dump(config))
    outputs = [snakemake(workdir, on, "publish", env=env)]
    package = workdir / "results" / "package" / "tiny"
    done = record(package)
    assert done["commit"] == hub.repos[REPO].branches["main"] and hub.files(REPO) == {
        **contents(package), ".gitattributes": GITATTRIBUTES}
    outputs.append(snakemake(workdir, on, env=env))  # the default target now: the summary, no second upload
    assert len(commits(hub)) == 1
    summary = (workdir / "results" / "summary" / "summary.md").read_text()
    assert f"- [{REPO}]({hub.url}/{REPO}) at commit [{done['commit'][:12]}]({done['commit_url']})" in summary
    leaks = [p for p in workdir.rglob("*") if p.is_file() and not p.is_symlink() and WRITE.encode() in p.read_bytes()]
    assert not leaks and not [o for o in outputs if WRITE in o.stdout + o.stderr]


def _config(tmp_path, publish=None, models=None):
    (tmp_path / "a.gguf").write_bytes(EMPTY_GGUF)
    config = {"calibration": {"text": str(ROOT / "config" / "data" / "calibration.txt")},
              "models": models or [{"name": "a", "source": {"type": "gguf", "path": str(tmp_path / "a.gguf")}}]}
    if publish is not None:
        config["publish"] = publish
    return config


def test_publishing_is_off_by_default_and_planned_only_when_enabled(tmp_path):
    config = _config(tmp_path)
    config["models"][0]["publish"] = {"repo_id": "org/a-gguf"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert "publish_package" not in planned_jobs(tmp_path, path)
    config["publish"] = {"enabled": True}
    path.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tmp_path, path)
    assert jobs["publish_package"] == 1 and jobs["package"] == 1


def test_publish_settings_are_checked_and_merged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = [{"name": "a", "source": {"type": "gguf", "path": "a.gguf"}, "publish": {"repo_id": "org/a"}},
              {"name": "b", "source": {"type": "gguf", "path": "a.gguf"},
               "publish": {"repo_id": "org/b", "private": False, "commit_message": "b"}},
              {"name": "c", "source": {"type": "gguf", "path": "a.gguf"}}]
    plan = build_plan(_config(tmp_path, {"enabled": True, "replace_foreign": True}, models), "c.yaml")
    assert plan.publish == {
        "a": {"repo_id": "org/a", "private": True, "commit_message": "Upload GGUF package made by gguf-forge",
              "replace_foreign": True},
        "b": {"repo_id": "org/b", "private": False, "commit_message": "b", "replace_foreign": True}}
    assert build_plan(_config(tmp_path, None, models), "c.yaml").publish == {}
    with pytest.raises(UserError, match=r"^c.yaml: publish.enabled is true but no model sets publish.repo_id"):
        build_plan(_config(tmp_path, {"enabled": True}, [models[2]]), "c.yaml")
    twice = [models[0], {**models[2], "publish": {"repo_id": "Org/A"}}]
    with pytest.raises(UserError, match=r"^c.yaml: models\[1\].publish.repo_id: 'Org/A' is already used by "
                                        r"models\[0\].publish.repo_id"):
        build_plan(_config(tmp_path, {"enabled": True}, twice), "c.yaml")
    bad = [{**models[0], "publish": {"repo_id": "org/a--b"}}]
    with pytest.raises(UserError, match=r"^c.yaml: models\[0\].publish.repo_id: .*expected a Hub repository id"):
        build_plan(_config(tmp_path, None, bad), "c.yaml")


@pytest.mark.toolchain
def test_an_unreachable_hub_is_one_line_and_nothing_is_recorded(package, tmp_path):
    env = hub_env(SimpleNamespace(url="http://127.0.0.1:9"), tmp_path / "home", HF_TOKEN=WRITE)  # nothing listens
    proc = subprocess.run(command(package), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"gguf-forge error: publish {package} to {REPO}: the Hub could not be reached (ConnectionError); check the "
        "network or HF_ENDPOINT and re-run: the files the Hub already holds are not sent again")
    offline = subprocess.run(command(package), cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                             text=True, timeout=300)
    assert offline.returncode == 2 and offline.stderr.strip() == (
        f"gguf-forge error: publish {package} to {REPO}: HF_HUB_OFFLINE is set; unset it to publish (it keeps "
        "huggingface_hub off the network)")
    assert not (package / "published.json").exists()


def test_the_summary_names_each_published_repository_and_commit():
    sha = "0123456789abcdef" * 2 + "01234567"
    base = {"repo_id": "org/m", "url": "https://hub/org/m", "commit": sha, "commit_url": f"https://hub/org/m/commit/{sha}"}
    text = published_md([{**base, "uploaded": [{"file": "m-Q8_0.gguf", "bytes": 3 * 2**20}], "uploaded_bytes": 3 * 2**20},
                         {**base, "repo_id": "org/n", "uploaded": [], "uploaded_bytes": 0}])
    assert text.splitlines()[-2:] == [
        f"- [org/m](https://hub/org/m) at commit [0123456789ab](https://hub/org/m/commit/{sha}) (1 file(s), 3.0 MiB uploaded)",
        f"- [org/n](https://hub/org/m) at commit [0123456789ab](https://hub/org/m/commit/{sha}) (unchanged)"]
    assert published_md([]) == ""
