"""Hub sources: fetch a repository at a revision resolved once to a commit, through the normal
Hugging Face cache (offline with HF_HUB_OFFLINE), into plain files under results/.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text, partial_path
from workflow_scripts.errors import UserError
from workflow_scripts.hf_dir import PICKLE_SUFFIXES

SAFETENSORS_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.py"]
PICKLE_PATTERNS = [f"*{s}" for s in PICKLE_SUFFIXES]
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# What git check-ref-format refuses in a branch or tag name: control characters, space, ~ ^ : ? * [ \,
# '..', '@{', a leading '-' or '/', '//', a trailing '/' or '.', a part that starts with '.' or
# ends with '.lock', and '@' alone.
NOT_IN_GIT_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|^[-/]|//|[/.]$|(?:^|/)\.|\.lock(?:/|$)|^@$")


def check_repo_id(repo_id: str, where: str) -> None:
    """Refuse what huggingface_hub refuses as a repository id (at most 96 characters, no '--' or
    '..', ...): the id names the repository's folder in the Hugging Face cache
    (models--{owner}--{name}), where 'a--b/c' and 'a/b--c' would be one."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"{where}: {str(err).rstrip('.')}; expected a Hub repository id owner/name") from None


def check_revision(revision: str, where: str) -> None:
    """A commit sha or a branch or tag name by git's rules: a name becomes a file of the Hugging
    Face cache (refs/{revision}, written by huggingface_hub and by remember_ref), so a revision such
    as '../x' would address a path outside it."""
    if COMMIT_SHA.fullmatch(revision):
        return
    if bad := NOT_IN_GIT_REF.search(revision):
        raise UserError(f"{where}: {revision!r} is not a git branch or tag name ({bad.group()!r} at position "
                        f"{bad.start()}); expected a 40-hex commit sha (recommended) or a branch or tag name")


def hub_allow_patterns(allow_pickle: bool) -> list[str]:
    """Files fetched from a Hub repository: safetensors, json and tokenizer files; pickles only when allowed."""
    return SAFETENSORS_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])


def check_hub_listing(repo_id: str, files: list[str], allow_pickle: bool) -> None:
    """Refuse a repository whose only weights are pickles (unless allowed), before downloading."""
    top = [f for f in files if "/" not in f]  # convert reads the top level only
    if any(f.endswith(".safetensors") for f in top):
        return
    pickles = [f for f in top if f.endswith(PICKLE_SUFFIXES)]
    if not pickles:
        raise UserError(f"hf repository {repo_id}: no *.safetensors weights in the repository")
    if not allow_pickle:
        raise UserError(f"hf repository {repo_id}: only pickle weights ({pickles[0]}); refused unless the "
                        "source sets allow_pickle: true (unpickling runs code)")


def hub_token() -> str | bool:
    """HF_TOKEN from the environment, or False: never a token cached on disk by another tool."""
    return os.environ.get("HF_TOKEN") or False


READ_ACCESS = "set to a token that can read this repository (for a gated one, accept its terms on the Hub first)"
DOWNLOAD_RETRY = ("re-run (a download resumes), or set HF_HUB_OFFLINE=1 to use what the Hugging Face cache holds",
                  "re-run later (a download resumes)")


def hub_failure(where: str, err: Exception, broken: str, access: str = READ_ACCESS,
                retry: tuple[str, str] = DOWNLOAD_RETRY) -> UserError:
    """A failed Hub call in the project's words, by HTTP status: what to check; never the token.
    ``access``: what HF_TOKEN must be; ``retry``: what to do after a network failure, after a 5xx."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        what = f"the Hub answered {status} (no access); check HF_TOKEN: it must be {access}"
    elif status == 404:
        what = "the Hub answered 404; check repo_id and revision"
    elif status:
        what = f"the Hub answered {status}; {retry[1]}"
    else:
        what = f"{broken} ({type(err).__name__}); check the network or HF_ENDPOINT and {retry[0]}"
    return UserError(f"{where}: {what}")


def download_snapshot(repo_id: str, revision: str, allow_pickle: bool, where: str) -> Path:
    """Resolve ``revision`` to a commit, check the listing, download that commit into the HF cache.

    Downloading by commit, not by branch, means a branch that moves during the download cannot
    mix two states; the cache keeps an interrupted file, so a re-run resumes it.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    token = hub_token()
    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token)
    except (HfHubHTTPError, OSError) as err:  # requests' errors are OSErrors
        raise hub_failure(where, err, "the Hub could not be reached") from None
    if not info.sha:
        raise UserError(f"{where}: the Hub returned no commit for this revision")
    check_hub_listing(repo_id, [s.rfilename for s in info.siblings or []], allow_pickle)
    try:
        snapshot = snapshot_download(repo_id, revision=info.sha, allow_patterns=hub_allow_patterns(allow_pickle),
                                     token=token)
    except (HfHubHTTPError, OSError) as err:
        raise hub_failure(where, err, "the download broke off") from None
    remember_ref(repo_id, revision, info.sha)
    return Path(snapshot)


def remember_ref(repo_id: str, revision: str, commit: str) -> None:
    """Record branch/tag → commit in the cache (``refs/``, as huggingface_hub does for what it
    downloads by name), so an offline run can resolve the same name: we download by commit."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if revision != commit:
        repo_dir = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
        atomic_write_text(repo_dir / "refs" / revision, commit)


def cached_snapshot(repo_id: str, revision: str, allow_pickle: bool, where: str) -> Path:
    """The snapshot of ``revision`` already in the HF cache (HF_HUB_OFFLINE): a commit sha, or a
    branch/tag resolved through the cache's refs as huggingface_hub does offline."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(f"{where}: HF_HUB_OFFLINE is set and the Hugging Face cache ({constants.HF_HUB_CACHE}) does "
                        "not hold this revision; fetch it once online, or set HF_HOME/HF_HUB_CACHE to a cache "
                        "that holds it") from None
    check_hub_listing(repo_id, [p.name for p in snapshot.iterdir()], allow_pickle)
    return snapshot


def materialize(snapshot: Path, dest: Path, patterns: list[str]) -> None:
    """Hard-link (copy across file systems) the snapshot's files matching ``patterns`` into ``dest``:
    real files, not symlinks into a cache that a package or another node may not see. Built in a
    partial sibling and renamed, so ``dest`` is either complete or absent."""
    from huggingface_hub.utils import filter_repo_objects

    names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    partial = partial_path(dest)
    shutil.rmtree(partial, ignore_errors=True)
    for name in filter_repo_objects(names, allow_patterns=patterns):
        blob, target = (snapshot / name).resolve(), partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(blob, target)
        except OSError:
            shutil.copyfile(blob, target)
    if dest.exists():
        try:
            dest.rmdir()  # an empty directory left by a scheduler; anything else is not ours to remove
        except OSError:
            raise UserError(f"{dest}: exists and is not empty; remove it to fetch the repository again") from None
    os.replace(partial, dest)


def fetch_hub(repo_id: str, revision: str, dest: Path | str, allow_pickle: bool = False) -> dict[str, Any]:
    """Fetch ``repo_id`` at ``revision`` through the Hugging Face cache into ``dest``; return repo,
    requested and resolved revision.

    The normal cache (HF_HOME / HF_HUB_CACHE) is shared with every other Hub user on the machine
    and is what HF_HUB_OFFLINE=1 reads; ``dest`` gets plain files, so results/ stands alone.
    """
    from huggingface_hub import constants

    where = f"hf repository {repo_id}@{revision}"
    if constants.HF_HUB_OFFLINE:
        snapshot = cached_snapshot(repo_id, revision, allow_pickle, where)
    else:
        snapshot = download_snapshot(repo_id, revision, allow_pickle, where)
    materialize(snapshot, Path(dest), hub_allow_patterns(allow_pickle))
    return {"repo_id": repo_id, "requested_revision": revision, "resolved_revision": snapshot.name,
            "pinned": bool(COMMIT_SHA.fullmatch(revision))}
