"""Publish a model's package to a Hugging Face Hub repository: a checked package, only what changed.

``python -m workflow_scripts.publish --package results/package/{model} --repo-id owner/name ...``
refuses a package that ``verify_package`` refuses (a file changed or not listed in SHA256SUMS: a
dirty package), creates the repository if needed, compares the repository's files with the
package's (an LFS file by the sha256 the Hub keeps for it, a small file by its git blob id) and
makes one commit with only the files that differ, deleting in it the repository's GGUFs that the
package does not hold when ``--replace-foreign`` says so (else such a repository is refused). A
package already there makes no commit and sends no file. The result goes to ``published.json``.

The upload is huggingface_hub's ``create_commit``: per file an LFS (or, on a Xet-enabled Hub, Xet)
upload, then the commit. An upload cut off leaves the objects already uploaded in the Hub's storage,
where the next run's LFS batch call finds them and sends them no more (Xet also keeps the chunks of a
file cut halfway), so a re-run resumes file by file. ``upload_large_folder`` is not used: it keeps
its state in ``.cache/`` inside the folder (the package), spreads a package over several commits with
its own messages, and cannot delete files; a package is a few files, each of them under the Hub's
50 GB limit (``package.split_max_mb``).

The token is HF_TOKEN or the login ``hf auth login`` saved, as huggingface_hub finds it; it is
passed to huggingface_hub only, never written and never shown.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import sha256_file
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.hub import check_repo_id, hub_failure
from workflow_scripts.verify_package import PUBLISH_RECORD, read_sums, verify_package

WRITE_ACCESS = "a token with write access to this repository (HF_TOKEN, or else the login `hf auth login` saved)"
UPLOAD_RETRY = ("re-run: the files the Hub already holds are not sent again",
                "re-run later: the files the Hub already holds are not sent again")


def package_files(package: Path) -> dict[str, str]:
    """{file: sha256} of what is published: the files SHA256SUMS lists and SHA256SUMS itself, once
    ``verify_package`` passed (every file listed and matching, manifest and provenance agreeing)."""
    verify_package(package)
    others = sorted(p.name for p in package.iterdir() if not p.is_file())
    if others:
        raise UserError(f"{package}: {', '.join(others)} is not a file of the package; expected only the files "
                        "SHA256SUMS lists (remove it, or rebuild the package)")
    return {**read_sums(package), "SHA256SUMS": sha256_file(package / "SHA256SUMS")}


def unchanged(remote, path: Path, digest: str) -> bool:
    """Whether the repository's file (a huggingface_hub RepoFile, or None) has ``path``'s content."""
    from huggingface_hub.utils.sha import git_hash

    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == digest
    return remote.size == path.stat().st_size and remote.blob_id == git_hash(path.read_bytes())


def changes(files: dict[str, str], package: Path, remote: dict, replace_foreign: bool,
            where: str) -> tuple[list[str], list[str], list[str]]:
    """(files to upload, files already there, repository GGUFs to delete); refuses a repository
    holding GGUFs the package does not, unless they are to be replaced."""
    foreign = sorted(name for name in remote if name.endswith(".gguf") and name not in files)
    if foreign and not replace_foreign:
        raise UserError(f"{where}: the repository holds GGUF files this package does not: {', '.join(foreign)}; "
                        "expected a repository of this model's package only (set publish.replace_foreign: true to "
                        "delete them in the publishing commit, or publish to another repo_id)")
    upload = [name for name in sorted(files) if not unchanged(remote.get(name), package / name, files[name])]
    return upload, sorted(set(files) - set(upload)), foreign


def publish(package: Path, repo_id: str, private: bool, message: str, replace_foreign: bool) -> dict[str, Any]:
    """Upload what differs and return the record written to published.json."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile

    where = f"publish {package} to {repo_id}"
    check_repo_id(repo_id, f"{where}: repo_id")
    files = package_files(package)
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{where}: HF_HUB_OFFLINE is set; unset it to publish (it keeps huggingface_hub off the network)")
    token = get_token()
    if not token:
        raise UserError(f"{where}: no Hugging Face token; set HF_TOKEN or log in with `hf auth login` (a token with "
                        "write access to the repository)")
    api, started = HfApi(token=token), time.monotonic()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.model_info(repo_id, revision="main")
        if info.private is not None and info.private != private:
            raise UserError(f"{where}: the repository is {'private' if info.private else 'public'} but publish.private "
                            f"is {str(private).lower()}; expected the same visibility (change it on the Hub or in "
                            "the config: publishing never changes it)")
        remote = {} if info.sha is None else {
            entry.path: entry for entry in api.list_repo_tree(repo_id, revision=info.sha, recursive=True)
            if isinstance(entry, RepoFile)}
        upload, kept, deleted = changes(files, package, remote, replace_foreign, where)
        commit, commit_url = info.sha, f"{api.endpoint}/{repo_id}/commit/{info.sha}"
        if upload or deleted:
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(package / name)) for name in upload]
            operations += [CommitOperationDelete(path_in_repo=name) for name in deleted]
            done = api.create_commit(repo_id, operations, commit_message=message, parent_commit=info.sha)
            commit, commit_url = done.oid, done.commit_url
    except RuntimeError as err:  # huggingface_hub: "Error while uploading '<file>' to the Hub." from the cause
        name = re.search(r"'(.+)'", str(err))
        broken = f"the upload of {name.group(1) if name else 'a file'} broke off"
        raise hub_failure(where, err.__cause__ or err, broken, WRITE_ACCESS, UPLOAD_RETRY) from None
    except (HfHubHTTPError, OSError) as err:  # requests' errors are OSErrors
        raise hub_failure(where, err, "the Hub could not be reached", WRITE_ACCESS, UPLOAD_RETRY) from None
    except ValueError as err:  # what huggingface_hub makes of an answer it refuses (LFS batch errors, README metadata)
        raise UserError(f"{where}: {err}") from None
    sizes = {name: (package / name).stat().st_size for name in upload}
    return {"repo_id": repo_id, "url": f"{api.endpoint}/{repo_id}", "commit": commit, "commit_url": commit_url,
            "private": private, "uploaded": [{"file": name, "bytes": sizes[name]} for name in upload],
            "unchanged": kept, "deleted": deleted, "uploaded_bytes": sum(sizes.values()),
            "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True, help="results/package/{model}")
    parser.add_argument("--repo-id", required=True, help="Hub model repository owner/name")
    parser.add_argument("--private", action=argparse.BooleanOptionalAction, default=True,
                        help="visibility of a repository created here (an existing one must already have it)")
    parser.add_argument("--message", required=True, help="commit summary")
    parser.add_argument("--replace-foreign", action="store_true",
                        help="delete the repository's GGUFs that the package does not hold, in the same commit")
    parser.add_argument("--out", type=Path, required=True, help=f"the record, {PUBLISH_RECORD} in the package")
    ns = parser.parse_args(argv)
    record = publish(ns.package, ns.repo_id, ns.private, ns.message, ns.replace_foreign)
    atomic_write_text(ns.out, json.dumps(record, indent=2) + "\n")
    sent = ", ".join(f["file"] for f in record["uploaded"]) or "nothing (the repository holds this package)"
    print(f"{record['url']} @ {record['commit']}: uploaded {sent}; {record['uploaded_bytes']} bytes")


if __name__ == "__main__":
    run_cli(main)
