"""A loopback-only fake of the Hugging Face Hub HTTP API, for offline push/pull tests.

The real ``huggingface_hub`` client and ``transformers`` talk to it unchanged: ``create_repo``, ``upload_file``,
``upload_folder``, ``model.push_to_hub``, ``processor.push_to_hub``, ``ModelCard.push_to_hub``, ``list_repo_files``,
``hf_hub_download``, ``snapshot_download`` and ``from_pretrained(repo_id)``. It is built on the standard library only
(``http.server`` + ``threading``) and binds to 127.0.0.1, so nothing leaves the machine.

What it implements (the endpoints huggingface_hub's client calls for these operations): whoami, repo create/delete, YAML validation, repo
info, preupload (every file is answered ``"regular"``, so contents arrive inline as base64 in the commit: no LFS or
Xet), commit (NDJSON), tree, paths-info, refs, commits and ``resolve`` (GET/HEAD, with ``Range``). Revisions are
``main`` and any full commit sha made here; branches, tags and pull requests are not supported.

Blobs are stored content-addressed under ``root`` (a temporary directory when none is given), written to a temp name
then ``os.replace``-d; repo trees and history are kept in memory. A commit is applied all at once or not at all, so
``fail_commits`` / ``fail_paths_matching`` simulate a push that fails midway (HTTP 500) without a half-written repo.

Example::

    with local_hub(tmp_path) as hub:
        model.push_to_hub("me/tiny")
        assert "model.safetensors" in hub.files("me/tiny")
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHubServer", "local_hub"]

_USER = "local-user"
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _git_blob_sha(data: bytes) -> str:
    """The git blob id of ``data``: what the Hub sends as ``ETag``/``oid`` for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class _Commit:
    oid: str
    title: str
    date: str
    tree: dict[str, str]  # path in repo -> blob sha


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: list[_Commit] = field(default_factory=list)  # oldest first; commits[-1] is "main"

    def resolve(self, revision: str) -> _Commit | None:
        """The commit a revision names: ``main`` or a full sha made here."""
        if revision == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == revision), None)


class _HubError(Exception):
    """An error reply: status, optional ``X-Error-Code`` (which the client maps to its exception types), message."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class LocalHubServer:
    """An in-process fake Hub on ``http://127.0.0.1:<free port>``; use it as a context manager.

    Attributes:
        endpoint: base URL to use as ``HF_ENDPOINT``.
        token: the only token accepted on write endpoints (``Authorization: Bearer <token>``).
        requests: ``(method, path)`` of every request served, for assertions on what the client did.
        fail_paths_matching: a regex; while set, any commit touching a path that matches it gets HTTP 500.
        hf_home: when set (``local_hub`` does), ``env()`` also points ``HF_HOME`` there.
    """

    def __init__(self, root: str | None = None, token: str = "hf_local_test"):
        self._tmp: tempfile.TemporaryDirectory | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hf_unlearn_hub_")
            root = self._tmp.name
        self.root = Path(root)
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.fail_paths_matching: str | None = None
        self.hf_home: str | None = None
        self._fail_commits = 0
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> LocalHubServer:
        """Bind a free loopback port and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll interval so stop() (and each test's teardown) takes ~50 ms, not the default 0.5 s.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="LocalHubServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and remove the temporary storage (a ``root`` passed in is kept)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- test helpers
    def env(self) -> dict[str, str]:
        """Environment variables that point a subprocess's ``huggingface_hub``/``transformers`` at this server."""
        if not self.endpoint:
            raise RuntimeError("LocalHubServer is not running: call start() or use it as a context manager first.")
        no_proxy = ",".join(p for p in (os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost") if p)
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_TOKEN": self.token,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_XET": "1",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }
        if self.hf_home:
            env["HF_HOME"] = self.hf_home
            env["HF_HUB_CACHE"] = os.path.join(self.hf_home, "hub")
        return env

    def fail_commits(self, n: int = 1) -> None:
        """Make the next ``n`` commit requests fail with HTTP 500 (nothing of them is applied)."""
        if n < 0:
            raise ValueError(f"fail_commits(n={n}): n must be >= 0.")
        with self._lock:
            self._fail_commits = n

    def repo_ids(self, repo_type: str = "model") -> list[str]:
        """Ids of the repos of ``repo_type`` that exist on this server."""
        with self._lock:
            return sorted(rid for (rtype, rid) in self._repos if rtype == repo_type)

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """What is committed in ``repo_id`` at ``revision``: path in repo -> bytes."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                known = self.repo_ids(repo_type)
                raise KeyError(f"No {repo_type} repo {repo_id!r} on this LocalHubServer; it has {known}.")
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"Repo {repo_id!r} has no revision {revision!r}; use 'main' or a commit sha.")
            tree = dict(commit.tree)
        return {path: self._read_blob(sha) for path, sha in sorted(tree.items())}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit titles of ``repo_id``, oldest first (the first one is the 'initial commit' of create_repo)."""
        with self._lock:
            return [c.title for c in self._repos[(repo_type, repo_id)].commits]

    # ----------------------------------------------------------------- storage
    def _blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha

    def _write_blob(self, data: bytes) -> str:
        sha = _git_blob_sha(data)
        path = self._blob_path(sha)
        if not path.exists():
            tmp = path.with_name(f".{sha}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # never a half-written blob
        return sha

    def _read_blob(self, sha: str) -> bytes:
        return self._blob_path(sha).read_bytes()

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _get_commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: _Repo, title: str, tree: dict[str, str]) -> _Commit:
        parent = repo.commits[-1].oid if repo.commits else ""
        digest = hashlib.sha1(
            json.dumps([parent, title, sorted(tree.items()), len(repo.commits)]).encode()
        ).hexdigest()
        commit = _Commit(oid=digest, title=title, date=_now(), tree=tree)
        repo.commits.append(commit)
        return commit

    # ----------------------------------------------------------------- API operations
    def _create_repo(self, body: dict) -> dict:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _HubError(400, "'name' is required")
        namespace = body.get("organization") or _USER
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Invalid repo type {repo_type!r}")
        if "/" in name:  # the client sends "ns/name" split, but be lenient
            namespace, name = name.split("/", 1)
        if not (_NAME_RE.match(name) and _NAME_RE.match(namespace)):
            raise _HubError(400, f"Invalid repo name {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise _HubError(409, "You already created this repo", extra={"url": url})
            repo = _Repo(repo_type, repo_id, private=body.get("visibility") == "private" or bool(body.get("private")),
                         created=_now())
            self._new_commit(repo, "initial commit", {".gitattributes": self._write_blob(b"")})
            self._repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": repo_id}

    def _delete_repo(self, body: dict) -> dict:
        repo_type, repo_id = body.get("type") or "model", f"{body.get('organization') or _USER}/{body.get('name')}"
        with self._lock:
            self._get_repo(repo_type, repo_id)  # 404 RepoNotFound if missing (the client's missing_ok relies on it)
            del self._repos[(repo_type, repo_id)]
        return {}

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> dict:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._get_commit(repo, revision)
            siblings = [
                {"rfilename": path, "size": self._blob_path(sha).stat().st_size, "blobId": sha}
                for path, sha in sorted(commit.tree.items())
            ]
        return {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created, "private": repo.private,
            "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0, "siblings": siblings,
        }

    def _preupload(self, repo_type: str, repo_id: str, revision: str, body: dict) -> dict:
        with self._lock:
            tree = self._get_commit(self._get_repo(repo_type, repo_id), revision).tree
        # "regular" everywhere: contents come inline in the commit (no LFS/S3 or Xet round trip to fake);
        # the remote oid lets the client skip files that did not change, as on the real Hub.
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                           "oid": tree.get(f["path"])} for f in body.get("files", [])]}

    def _commit(self, repo_type: str, repo_id: str, revision: str, raw: bytes, query: dict) -> dict:
        if query.get("create_pr", ["0"])[0] not in ("0", "", "false"):
            raise _HubError(400, "LocalHubServer does not support pull requests (create_pr); push to main.")
        items = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not items or items[0].get("key") != "header":
            raise _HubError(400, "Commit payload must start with a 'header' line")
        header = items[0]["value"]
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            head = self._get_commit(repo, revision)
            if head is not repo.commits[-1]:
                raise _HubError(400, "Commits can only be made on 'main'", "RevisionNotFound")
            touched = [str(it.get("value", {}).get("path", "")) for it in items[1:]]
            if self._fail_commits > 0:
                self._fail_commits -= 1
                raise _HubError(500, "Simulated server failure (LocalHubServer.fail_commits)")
            if self.fail_paths_matching and any(re.search(self.fail_paths_matching, p) for p in touched):
                raise _HubError(500, "Simulated server failure (LocalHubServer.fail_paths_matching)")
            parent = header.get("parentCommit")
            if parent and parent != head.oid:
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(head.tree)
            for item in items[1:]:  # build the new tree fully before anything is visible
                key, value = item.get("key"), item.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    data = base64.b64decode(value["content"]) if value.get("encoding", "base64") == "base64" \
                        else str(value["content"]).encode()
                    tree[path] = self._write_blob(data)
                elif key == "deletedFile":
                    if path not in tree:
                        raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    tree = {p: s for p, s in tree.items() if not p.startswith(prefix)}
                else:
                    raise _HubError(400, f"Unsupported commit operation {key!r} (LocalHubServer only asks for "
                                         "regular uploads: no LFS, Xet or copies)")
            commit = self._new_commit(repo, header.get("summary") or "commit", tree)
        return {"commitUrl": f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}",
                "commitOid": commit.oid, "pullRequestUrl": None, "success": True}

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict) -> list[dict]:
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        with self._lock:
            commit = self._get_commit(self._get_repo(repo_type, repo_id), revision)
            tree = dict(commit.tree)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and prefix[:-1] in tree:
            raise _HubError(400, f"{path} is a file, not a folder")
        if prefix and not any(p.startswith(prefix) for p in tree):
            raise _HubError(404, f"{path} does not exist on 'main'", "EntryNotFound")
        files, folders = [], set()
        for p, sha in sorted(tree.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for i in range(1, len(parts)):  # every folder on the way
                if recursive or i == 1:
                    folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                files.append(self._file_entry(p, sha))
        entries = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0}
                   for f in sorted(folders)]
        return entries + files

    def _file_entry(self, path: str, sha: str) -> dict:
        return {"type": "file", "path": path, "oid": sha, "size": self._blob_path(sha).stat().st_size}

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, paths: list[str]) -> list[dict]:
        with self._lock:
            tree = dict(self._get_commit(self._get_repo(repo_type, repo_id), revision).tree)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in tree:
                out.append(self._file_entry(path, tree[path]))
            elif any(p.startswith(path + "/") for p in tree):
                out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
        return out

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> tuple[bytes, _Commit, str]:
        with self._lock:
            commit = self._get_commit(self._get_repo(repo_type, repo_id), revision)
            sha = commit.tree.get(path)
        if sha is None:
            raise _HubError(404, "Entry not found", "EntryNotFound")
        return self._read_blob(sha), commit, sha

    def _check_token(self, headers: Any) -> None:
        auth = headers.get("Authorization", "")
        if auth != f"Bearer {self.token}":
            raise _HubError(401, "Invalid credentials in Authorization header" if auth else
                            f"A token is required: set HF_TOKEN={self.token}")


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to ``LocalHubServer``; ``hub`` is bound per server by ``LocalHubServer.start``."""

    hub: LocalHubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every reply carries Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: tests read hub.requests instead

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    # ----------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode())

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((method, url.path))
        body = self._body()  # DELETE /api/repos/delete carries a JSON body too
        try:
            self._route(method, url.path, parse_qs(url.query), body)
        except _HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers)
        except Exception as err:  # a bug here must reach the test as a 500, not hang the client
            message = f"LocalHubServer internal error: {type(err).__name__}: {err}"
            self._send(500, json.dumps({"error": message}).encode(), {"X-Error-Message": message})

    def _route(self, method: str, path: str, query: dict, body: bytes) -> None:
        parts = path.strip("/").split("/")  # split before unquoting: a quoted revision may hold "%2F"
        if parts[:1] == ["api"]:
            return self._route_api(method, parts[1:], query, body)
        # File downloads: /{ns}/{name}/resolve/{rev}/{path}, /datasets/{ns}/{name}/resolve/..., /spaces/...
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = _REPO_TYPES[parts[0]], parts[1:]
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision = f"{parts[0]}/{parts[1]}", unquote(parts[3])
            file_path = unquote("/".join(parts[4:]))
            data, commit, sha = self.hub._resolve(repo_type, repo_id, revision, file_path)
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
            status, match = 200, re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
            return self._send(status, data, headers, "application/octet-stream")
        raise _HubError(404, f"LocalHubServer has no route for {method} {path}")

    def _route_api(self, method: str, parts: list[str], query: dict, body: bytes) -> None:
        hub = self.hub
        load = (lambda: json.loads(body or b"{}"))
        if parts == ["whoami-v2"] and method == "GET":
            hub._check_token(self.headers)
            return self._json({"type": "user", "id": "0" * 24, "name": _USER, "fullname": "Local Test User",
                               "email": None, "orgs": [], "isPro": False,
                               "auth": {"type": "access_token",
                                        "accessToken": {"displayName": "local", "role": "write"}}})
        if parts == ["repos", "create"] and method == "POST":
            hub._check_token(self.headers)
            return self._json(hub._create_repo(load()))
        if parts == ["repos", "delete"] and method in ("DELETE", "POST"):
            hub._check_token(self.headers)
            return self._json(hub._delete_repo(load()))
        if parts == ["validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if len(parts) < 3 or parts[0] not in _REPO_TYPES:
            raise _HubError(404, f"LocalHubServer has no route for {method} /api/{'/'.join(parts)}")
        repo_type, repo_id, rest = _REPO_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
        action = rest[0] if rest else ""
        revision = unquote(rest[1]) if len(rest) > 1 else "main"
        if method == "GET" and action in ("", "revision"):
            return self._json(hub._repo_info(repo_type, repo_id, revision))
        if method == "POST" and action == "preupload":
            hub._check_token(self.headers)
            return self._json(hub._preupload(repo_type, repo_id, revision, load()))
        if method == "POST" and action == "commit":
            hub._check_token(self.headers)
            return self._json(hub._commit(repo_type, repo_id, revision, body, query))
        if method == "GET" and action == "tree":
            sub_path = unquote("/".join(rest[2:]))
            return self._json(hub._tree(repo_type, repo_id, revision, sub_path, query))
        if method == "POST" and action == "paths-info":
            ctype = self.headers.get("Content-Type", "")
            paths = load().get("paths", []) if "json" in ctype else parse_qs(body.decode()).get("paths", [])
            return self._json(hub._paths_info(repo_type, repo_id, revision, paths))
        if method == "GET" and action == "refs":
            info = hub._repo_info(repo_type, repo_id, "main")
            return self._json({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": info["sha"]}],
                               "converts": [], "tags": []})
        if method == "GET" and action == "commits":
            with hub._lock:
                repo = hub._get_repo(repo_type, repo_id)
                upto = repo.commits.index(hub._get_commit(repo, revision))
                history = [{"id": c.oid, "title": c.title, "message": "", "date": c.date,
                            "authors": [{"user": _USER}]} for c in reversed(repo.commits[:upto + 1])]
            return self._json(history)
        raise _HubError(404, f"LocalHubServer has no route for {method} /api/{'/'.join(parts)}")


# --------------------------------------------------------------------- in-process client redirection
# ``huggingface_hub.constants`` reads the environment once, at import; several values are also copied into other
# modules and objects at import (the module-level ``HfApi`` behind ``create_repo``/``upload_folder``/...,
# transformers' shared ``HfApi``, the cache paths). Setting env vars alone is therefore not enough in-process: each
# copy is patched here and restored on exit.
_CONSTANT_NAMES = (
    "ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_URL_HOSTS", "HF_HOME", "default_cache_path",
    "default_assets_cache_path", "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_HUB_CACHE",
    "HF_ASSETS_CACHE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_HUB_DISABLE_XET",
)
_ENV_NAMES = (
    "HF_ENDPOINT", "HF_TOKEN", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_HUB_DISABLE_UPDATE_CHECK", "HF_HUB_DISABLE_XET",
    "NO_PROXY", "no_proxy", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE",
)


def _reset_transformers_api() -> None:
    """transformers caches one ``HfApi`` (with the endpoint of its creation time): drop it so it is rebuilt."""
    hub_mod = sys.modules.get("transformers.utils.hub")
    if hub_mod is not None and hasattr(hub_mod, "_hf_api"):
        hub_mod._hf_api = None


@contextlib.contextmanager
def local_hub(tmp_dir: str | os.PathLike) -> Iterator[LocalHubServer]:
    """Start a ``LocalHubServer`` and point ``huggingface_hub``/``transformers`` in this process at it.

    Inside the block: ``HF_ENDPOINT``/``HF_TOKEN`` name the server, ``HF_HOME`` is ``<tmp_dir>/hf_home`` (an isolated
    cache and token file) and offline mode is off, for ``huggingface_hub``, ``transformers`` and ``datasets``
    (``load_dataset("org/name")``; ``Dataset.push_to_hub`` is not supported: upload parquet files with ``HfApi``).
    Everything is restored on exit, even on error. Not thread-safe against other code changing the same globals
    concurrently (tests run it one at a time).
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import hf_api as hf_api_mod
    from huggingface_hub.utils import _hf_uris, _http

    tmp = Path(tmp_dir)
    hf_home = tmp / "hf_home"
    hf_home.mkdir(parents=True, exist_ok=True)
    server = LocalHubServer(root=str(tmp / "hub_storage"))
    server.hf_home = str(hf_home)
    saved_env = {name: os.environ.get(name) for name in _ENV_NAMES}
    saved_constants = {name: getattr(constants, name) for name in _CONSTANT_NAMES if hasattr(constants, name)}
    saved_pkg_template = huggingface_hub.__dict__.get("HUGGINGFACE_CO_URL_TEMPLATE")
    saved_api_endpoint = hf_api_mod.api.endpoint
    saved_origins = getattr(_http, "_HUB_ORIGINS", None)
    extra_modules = [(m, name) for m, name in (("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE"),
                                               ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE"))
                     if m in sys.modules]
    saved_extra = [getattr(sys.modules[m], name) for m, name in extra_modules]
    # `datasets` copies the endpoint, offline mode and its cache path at import (load_dataset("org/name")).
    import datasets.config as datasets_config

    datasets_names = ("HF_ENDPOINT", "HUB_DATASETS_URL", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_DATASETS_CACHE")
    saved_datasets = {name: getattr(datasets_config, name) for name in datasets_names if hasattr(datasets_config, name)}
    with server:
        try:
            for name in ("HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
                os.environ.pop(name, None)
            os.environ.update(server.env())
            endpoint, cache = server.endpoint, os.path.join(hf_home, "hub")
            patched = {
                "ENDPOINT": endpoint,
                "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                "HF_URL_HOSTS": frozenset(saved_constants["HF_URL_HOSTS"] | {"127.0.0.1"}),
                "HF_HOME": str(hf_home), "default_cache_path": cache, "HUGGINGFACE_HUB_CACHE": cache,
                "HF_HUB_CACHE": cache, "default_assets_cache_path": os.path.join(hf_home, "assets"),
                "HUGGINGFACE_ASSETS_CACHE": os.path.join(hf_home, "assets"),
                "HF_ASSETS_CACHE": os.path.join(hf_home, "assets"),
                "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
                "HF_STORED_TOKENS_PATH": os.path.join(hf_home, "stored_tokens"),
                "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
                "HF_HUB_DISABLE_XET": True,
            }
            for name, value in patched.items():
                if name in saved_constants:
                    setattr(constants, name, value)
            if saved_pkg_template is not None:
                huggingface_hub.HUGGINGFACE_CO_URL_TEMPLATE = patched["HUGGINGFACE_CO_URL_TEMPLATE"]
            hf_api_mod.api.endpoint = endpoint
            if saved_origins is not None:
                _http._HUB_ORIGINS = frozenset(saved_origins | {endpoint})
            extra_values = {"HF_HUB_CACHE": cache, "HF_ASSETS_CACHE": patched["HF_ASSETS_CACHE"]}
            for m, name in extra_modules:
                setattr(sys.modules[m], name, extra_values[name])
            datasets_patch = {
                "HF_ENDPOINT": endpoint, "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
                "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False, "HF_DATASETS_CACHE": hf_home / "datasets",
            }
            for name in saved_datasets:
                setattr(datasets_config, name, datasets_patch[name])
            _hf_uris.parse_hf_uri.cache_clear()
            _reset_transformers_api()
            yield server
        finally:
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            for name, value in saved_constants.items():
                setattr(constants, name, value)
            if saved_pkg_template is not None:
                huggingface_hub.HUGGINGFACE_CO_URL_TEMPLATE = saved_pkg_template
            hf_api_mod.api.endpoint = saved_api_endpoint
            if saved_origins is not None:
                _http._HUB_ORIGINS = saved_origins
            for (m, name), value in zip(extra_modules, saved_extra):
                setattr(sys.modules[m], name, value)
            for name, value in saved_datasets.items():
                setattr(datasets_config, name, value)
            _hf_uris.parse_hf_uri.cache_clear()
            _reset_transformers_api()
