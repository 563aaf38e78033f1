"""A stand-in for the Hugging Face Hub on 127.0.0.1, so huggingface_hub runs unchanged in tests.

It answers the calls ``model_info`` and ``snapshot_download``/``hf_hub_download`` make
(``HF_ENDPOINT=hub.url``): ``GET /api/models/{repo}/revision/{rev}`` and ``HEAD``/``GET
/{repo}/resolve/{rev}/{file}`` with the headers the client checks (X-Repo-Commit, ETag,
X-Linked-Etag/-Size, Content-Length) and ``Range`` for resumed downloads. A repository is a set of
commits (a dict of files each) and branches that can be moved; a gated one wants
``Authorization: Bearer <token>`` (401 without, 403 with another). Knobs for the tests: cut a
file's body short once, a hook called on every request before it is answered, and the log of
every request with the headers received.
"""

from __future__ import annotations

import hashlib
import json
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


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names title-cased: Authorization, Range
    body_bytes: int = 0  # file bytes sent


class HubStandin:
    """The server and its repositories; use as a context manager (``stop`` may come earlier)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.cuts: dict[tuple[str, str], int] = {}  # (repo, file) → bytes sent before the next GET breaks off
        self.hook: Callable[[Request], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

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

    def _answer(self) -> None:
        headers = {key.title(): value for key, value in self.headers.items()}  # huggingface_hub sends "authorization"
        request = Request(self.command, unquote(urlsplit(self.path).path), headers)
        self.hub.requests.append(request)
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
            self._api("/".join(parts[2:4]), "/".join(parts[5:]), request)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), request)
        else:
            self._send(404, request, {"X-Error-Code": "RepoNotFound"})

    def _commit(self, repo_id: str, revision: str, request: Request) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._send(404, request, {"X-Error-Code": "RepoNotFound"})
            return None
        sha = revision if revision in repo.commits else repo.branches.get(revision)
        if sha is None:
            self._send(404, request, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo, sha

    def _api(self, repo_id: str, revision: str, request: Request) -> None:
        found = self._commit(repo_id, revision, request)
        if found:
            repo, sha = found
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
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
        if self.command == "GET":
            sent = body if cut is None else body[:cut]
            self.wfile.write(sent)
            request.body_bytes = len(sent) if "/resolve/" in request.path else 0
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
