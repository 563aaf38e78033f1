"""A stand-in for the Hugging Face Hub on 127.0.0.1, so huggingface_hub runs unchanged in tests.

It answers the calls ``model_info`` and ``snapshot_download``/``hf_hub_download`` make
(``HF_ENDPOINT=hub.url``): ``GET /api/models/{repo}/revision/{rev}`` and ``HEAD``/``GET
/{repo}/resolve/{rev}/{file}`` with the headers the client checks (X-Repo-Commit, ETag,
X-Linked-Etag/-Size, Content-Length) and ``Range`` for resumed downloads. A repository is a set of
commits (a dict of files each) and branches that can be moved; a gated one wants
``Authorization: Bearer <token>`` (401 without, 403 with another). Knobs for the tests: cut a
file's body short once, a hook called on every request before it is answered, and the log of
every request with the headers received.

The upload side answers what ``create_repo`` and ``create_commit``/``upload_folder`` call:
``POST /api/repos/create``, ``GET /api/models/{repo}/tree/{rev}`` (with each file's LFS sha256),
``POST /api/validate-yaml``, ``POST /api/models/{repo}/preupload/{rev}`` (LFS or regular per file,
and the remote oid of a file already there), the LFS batch API ``POST /{repo}.git/info/lfs/objects/batch``
with the basic transfer (``PUT`` the object, ``POST`` verify), and the NDJSON commit ``POST
/api/models/{repo}/commit/{rev}``. The batch answer always picks ``basic``: this stand-in does not
speak Xet, so a client with hf_xet installed (which offers "xet") takes the LFS path. LFS objects
live in one store apart from commits, as on the Hub: an object uploaded by a run that was cut off
before its commit is still there, and the batch call then asks for no upload. Writes need a bearer
token of ``tokens`` with "write" (401 without a known one, 403 for a "read" one); an upload can be
cut after some bytes, once; every request records the body bytes it brought.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # gated: files need this bearer token
    private: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names title-cased: Authorization, Range
    body_bytes: int = 0  # file bytes sent
    received: int = 0  # request body bytes received (an upload, a commit, a JSON call)
    body: bytes = b""  # the body of a JSON or NDJSON call (not of an upload)


class HubStandin:
    """The server and its repositories; use as a context manager (``stop`` may come earlier)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.cuts: dict[tuple[str, str], int] = {}  # (repo, file) → bytes sent before the next GET breaks off
        self.hook: Callable[[Request], None] | None = None
        self.tokens: dict[str, str] = {}  # bearer token → "write" or "read"
        self.lfs: dict[str, bytes] = {}  # LFS object store: sha256 → bytes, apart from any commit
        self.upload_cuts: dict[str, int] = {}  # sha256 → bytes received before that upload's connection drops (once)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.handle_error = self._handle_error
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handle_error(self, request, client_address) -> None:
        """A client that went away (a killed upload) is expected; anything else is reported as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            ThreadingHTTPServer.handle_error(self._server, request, client_address)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", token: str | None = None) -> str:
        """Add a commit of ``files`` (creating the repository) and point ``branch`` at it; return its sha."""
        repo = self.repos.setdefault(repo_id, Repo(token=token))
        digests = sorted((name, hashlib.sha256(data).hexdigest()) for name, data in files.items())
        sha = hashlib.sha1(json.dumps([repo_id, digests]).encode()).hexdigest()
        repo.commits[sha] = dict(files)
        repo.branches[branch] = sha
        return sha

    def bytes_received(self, since: int = 0) -> int:
        """Request body bytes received by every request from index ``since`` of ``requests`` on."""
        return sum(r.received for r in self.requests[since:])

    def uploads(self, since: int = 0) -> list[Request]:
        """The LFS object uploads (PUT), from request index ``since`` on."""
        return [r for r in self.requests[since:] if r.method == "PUT"]

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The files of a branch's head commit."""
        repo = self.repos[repo_id]
        return repo.commits[repo.branches[branch]]

    def file_requests(self, repo_id: str, name: str, method: str = "GET") -> list[Request]:
        """The requests for one file of one repository, at any revision, in order."""
        return [r for r in self.requests if r.method == method and r.path.startswith(f"/{repo_id}/resolve/")
                and r.path.endswith(f"/{name}")]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, *args) -> None:  # quiet
        pass

    @property
    def hub(self) -> HubStandin:
        return self.server.hub

    def do_HEAD(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def _answer(self) -> None:
        headers = {key.title(): value for key, value in self.headers.items()}  # huggingface_hub sends "authorization"
        request = Request(self.command, unquote(urlsplit(self.path).path), headers)
        self.hub.requests.append(request)
        parts = request.path.strip("/").split("/")
        if self.command == "PUT" and len(parts) == 2 and parts[0] == "lfs-upload":
            self._lfs_upload(parts[1], request)
            return
        if self.command == "POST":
            request.body = self._read_body(request)
            self._post(parts, request)
            return
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
            self._api("/".join(parts[2:4]), "/".join(parts[5:]), request)
        elif parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            self._tree("/".join(parts[2:4]), parts[5], "/".join(parts[6:]), request)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), request)
        else:
            self._send(404, request, {"X-Error-Code": "RepoNotFound"})

    def _commit(self, repo_id: str, revision: str, request: Request) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._send(404, request, {"X-Error-Code": "RepoNotFound"})
            return None
        sha = revision if revision in repo.commits else repo.branches.get(unquote(revision))
        if sha is None:
            self._send(404, request, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo, sha

    def _api(self, repo_id: str, revision: str, request: Request) -> None:
        found = self._commit(repo_id, revision, request)
        if found:
            repo, sha = found
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                    "gated": "manual" if repo.token else False,
                    "siblings": [{"rfilename": name} for name in sorted(repo.commits[sha])]}
            self._send(200, request, {"Content-Type": "application/json"}, json.dumps(info).encode())

    def _file(self, repo_id: str, revision: str, name: str, request: Request) -> None:
        found = self._commit(repo_id, revision, request)
        if not found:
            return
        repo, sha = found
        if repo.token and request.headers.get("Authorization") != f"Bearer {repo.token}":
            status = 403 if "Authorization" in request.headers else 401
            self._send(status, request, {"X-Error-Code": "GatedRepo"})
            return
        data = repo.commits[sha].get(name)
        if data is None:
            self._send(404, request, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
            return
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {"X-Repo-Commit": sha, "ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(len(data)),
                   "Accept-Ranges": "bytes"}
        status, start = 200, 0
        if "Range" in request.headers and self.command == "GET":
            start = int(request.headers["Range"].removeprefix("bytes=").split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        cut = self.hub.cuts.pop((repo_id, name), None) if self.command == "GET" else None
        self._send(status, request, headers, data[start:], cut)

    def _read_body(self, request: Request, cut: int | None = None) -> bytes:
        """The request body (Content-Length), or its first ``cut`` bytes, counted in ``request.received``."""
        length = int(self.headers.get("Content-Length", 0))
        want = length if cut is None else min(cut, length)
        chunks = []
        while request.received < want:
            chunk = self.rfile.read(min(1 << 20, want - request.received))
            if not chunk:
                break
            chunks.append(chunk)
            request.received += len(chunk)
        return b"".join(chunks)

    def _json(self, request: Request, status: int, value, headers: dict[str, str] | None = None) -> None:
        self._send(status, request, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode())

    def _may_write(self, request: Request) -> bool:
        """A known bearer token with write rights; else answer 401 (none or unknown) or 403 (read only)."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        right = self.hub.tokens.get(token)
        if right == "write":
            return True
        status = 403 if right else 401
        self._json(request, status, {"error": "You don't have the rights to write to this repository" if right
                                     else "Invalid credentials in Authorization header"})
        return False

    def _post(self, parts: list[str], request: Request) -> None:
        if parts == ["api", "validate-yaml"]:
            self._json(request, 200, {"errors": [], "warnings": []})
        elif parts == ["api", "repos", "create"]:
            self._create_repo(json.loads(request.body), request)
        elif parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("preupload", "commit"):
            method = self._preupload if parts[4] == "preupload" else self._commit_ndjson
            method("/".join(parts[2:4]), "/".join(parts[5:]), request)
        elif len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            self._lfs_batch(json.loads(request.body), request)
        elif len(parts) == 2 and parts[0] == "lfs-verify":
            payload = json.loads(request.body)
            stored = self.hub.lfs.get(parts[1])
            ok = stored is not None and len(stored) == payload["size"]
            self._json(request, 200 if ok else 404, {"success": ok})
        else:
            self._send(404, request, {"X-Error-Code": "RepoNotFound"})

    def _create_repo(self, payload: dict, request: Request) -> None:
        if not self._may_write(request):
            return
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.hub.repos:
            self._json(request, 409, {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"})
            return
        self.hub.commit(repo_id, {".gitattributes": GITATTRIBUTES})
        self.hub.repos[repo_id].private = bool(payload.get("private"))
        self._json(request, 200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _tree(self, repo_id: str, revision: str, prefix: str, request: Request) -> None:
        found = self._commit(repo_id, revision, request)
        if found:
            files = found[0].commits[found[1]]
            entries = [tree_entry(name, data) for name, data in sorted(files.items())
                       if not prefix or name.startswith(prefix.rstrip("/") + "/")]
            self._json(request, 200, entries)

    def _preupload(self, repo_id: str, revision: str, request: Request) -> None:
        if not self._may_write(request):
            return
        found = self._commit(repo_id, revision, request)
        if found:
            files = found[0].commits[found[1]]
            answer = []
            for item in json.loads(request.body)["files"]:
                lfs = is_lfs(item["path"], item["size"], base64.b64decode(item["sample"]))
                there = files.get(item["path"])
                answer.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                               "oid": remote_oid(item["path"], there) if there is not None else None})
            self._json(request, 200, {"files": answer, "commitOid": found[1]})

    def _lfs_batch(self, payload: dict, request: Request) -> None:
        if not self._may_write(request):
            return
        objects = []
        for item in payload["objects"]:
            stored = self.hub.lfs.get(item["oid"])
            entry = {"oid": item["oid"], "size": item["size"]}
            if stored is None or len(stored) != item["size"]:
                entry["authenticated"] = True
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{item['oid']}", "header": {}},
                                    "verify": {"href": f"{self.hub.url}/lfs-verify/{item['oid']}"}}
            objects.append(entry)
        self._json(request, 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, oid: str, request: Request) -> None:
        """A basic-transfer PUT (a presigned URL: no token); cut off once where ``upload_cuts`` says so."""
        cut = self.hub.upload_cuts.pop(oid, None)
        data = self._read_body(request, cut)
        if cut is not None:
            if self.hub.hook:
                self.hub.hook(request)
            self.close_connection = True  # no answer: the client sees the connection drop mid-upload
            return
        if hashlib.sha256(data).hexdigest() != oid:
            self._json(request, 400, {"error": "sha256 of the uploaded bytes differs from the object id"})
            return
        self.hub.lfs[oid] = data
        self._send(200, request, {})

    def _commit_ndjson(self, repo_id: str, revision: str, request: Request) -> None:
        if not self._may_write(request):
            return
        found = self._commit(repo_id, revision, request)
        if not found:
            return
        repo, head = found
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit", head) != head:
            self._json(request, 412, {"error": "A commit has happened since. Please refresh and try again."})
            return
        files = dict(repo.commits[head])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.hub.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    self._json(request, 422, {"error": f"LFS object {value['oid']} of {value['path']} was not uploaded"})
                    return
                files[value["path"]] = data
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    self._json(request, 404, {"error": "A file with this name doesn't exist"},
                               {"X-Error-Code": "EntryNotFound"})
                    return
            else:
                self._json(request, 400, {"error": f"unsupported operation {key}"})
                return
        digests = sorted((name, hashlib.sha256(data).hexdigest()) for name, data in files.items())
        sha = hashlib.sha1(json.dumps([repo_id, head, header["summary"], digests]).encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[unquote(revision)] = sha
        self._json(request, 200, {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                                  "pullRequestUrl": None})

    def _send(self, status: int, request: Request, headers: dict[str, str], body: bytes = b"",
              cut: int | None = None) -> None:
        """Answer (after the hook); with ``cut``, send that many body bytes and close the connection."""
        if self.hub.hook:
            self.hub.hook(request)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            sent = body if cut is None else body[:cut]
            self.wfile.write(sent)
            request.body_bytes = len(sent) if "/resolve/" in request.path else 0
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True


def is_lfs(name: str, size: int, head: bytes) -> bool:
    """Stored as LFS as the Hub decides it: a GGUF (its default .gitattributes), 10 MB or more, or
    binary (a NUL in the first 512 bytes, the sample preupload sends)."""
    return name.endswith(".gguf") or size >= 10_000_000 or b"\0" in head[:512]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def remote_oid(name: str, data: bytes) -> str:
    """What preupload reports of a file already there: its sha256 if LFS, else its git blob id."""
    return hashlib.sha256(data).hexdigest() if is_lfs(name, len(data), data) else git_blob_id(data)


def tree_entry(name: str, data: bytes) -> dict:
    """A file as GET /api/models/{repo}/tree/{rev} lists it (an LFS file with its pointer's blob id)."""
    if not is_lfs(name, len(data), data):
        return {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}
    sha = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
    return {"type": "file", "oid": git_blob_id(pointer), "size": len(data), "path": name,
            "lfs": {"oid": sha, "size": len(data), "pointerSize": len(pointer)}}


GITATTRIBUTES = b"*.gguf filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
"""What a repository created through the API starts with (the Hub's default is longer)."""
