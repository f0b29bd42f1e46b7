"""A fake Hugging Face hub: the endpoints ``snapshot_download`` and ``hf_hub_download`` use.

Point huggingface_hub at it with ``HF_ENDPOINT=hub.url`` and it serves model repos from local
directories, so downloads can be tested without any network::

    async with FakeHub({"org/tiny": model_dir}, slow_bytes_per_s=200_000) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        ...
        assert len(hub.file_gets("config.json")) == 1

It runs in its own thread with its own event loop, so blocking huggingface_hub calls made from
the test's thread (or anything else) never stall it, and it works from sync and async tests
alike (``with FakeHub(...)`` / ``async with FakeHub(...)``). What it mimics of the hub
(huggingface_hub 2.x, checked against its source) is documented on :class:`FakeHub`'s handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from mlx_serve.router.query import query_flag
from mlx_serve.workers.process import free_port

__all__ = ["FakeHub", "HubRequest", "closed_port_url"]

_LFS_SUFFIXES = (".safetensors", ".bin", ".npz", ".gguf", ".pt", ".pth", ".onnx")
_LFS_MIN_SIZE = 10 * 1024 * 1024  # any bigger file is LFS too, like on the hub
_CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_SKIP_DIRS = frozenset({".git", ".cache"})


@dataclass(frozen=True)
class HubRequest:
    """One request the fake hub received."""

    method: str
    path: str  # decoded path, without the query
    kind: str  # "info" | "tree" | "resolve" | "cdn" | "other"
    repo_id: str | None
    file: str | None  # the repo file a resolve/cdn request is about
    range: str | None  # the Range header, if any


@dataclass(frozen=True)
class _File:
    name: str
    path: Path
    size: int
    git_oid: str  # what the tree lists as "oid": blob id of the content or of the LFS pointer
    sha256: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass(frozen=True)
class _Repo:
    repo_id: str
    commit: str
    files: dict[str, _File]


class FakeHub:
    """The fake hub server; see the module docstring for its use.

    Knobs for tests, all changeable while it runs: ``slow_bytes_per_s`` (throttle file bodies),
    ``fail_once[file] = n`` (drop the connection after ``n`` body bytes, once), ``corrupt_once``
    (serve wrong bytes for a file, once), ``gated``. ``requests`` records every request;
    ``file_gets()`` and ``bytes_sent()`` count body transfers per file.
    """

    def __init__(
        self,
        repos: Mapping[str, Path],
        *,
        slow_bytes_per_s: float | None = None,
        gated: Iterable[str] = (),
    ) -> None:
        self._repos = {repo_id: _load_repo(repo_id, Path(root)) for repo_id, root in repos.items()}
        self.slow_bytes_per_s = slow_bytes_per_s
        self.gated: set[str] = set(gated)
        self.fail_once: dict[str, int] = {}
        self.corrupt_once: set[str] = set()
        self.url = ""
        self.cdn_url = ""
        self._requests: list[HubRequest] = []
        self._bytes_sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closing = False

    # ---------------------------------------------------------------- inspection

    def commit(self, repo_id: str) -> str:
        """The commit sha ``main`` of ``repo_id`` resolves to."""
        return self._repos[repo_id].commit

    @property
    def requests(self) -> list[HubRequest]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def file_gets(self, name: str, repo_id: str | None = None) -> list[HubRequest]:
        """The GET requests that transferred the body of repo file ``name``.

        For LFS files that is the CDN request (the resolve GET only redirects), for the others
        the resolve request itself.
        """
        out = []
        for req in self.requests:
            if req.method != "GET" or req.file != name:
                continue
            if repo_id is not None and req.repo_id != repo_id:
                continue
            repo = self._repos.get(req.repo_id or "")
            entry = repo.files.get(name) if repo else None
            if entry is None:
                continue
            if req.kind == ("cdn" if entry.lfs else "resolve"):
                out.append(req)
        return out

    def bytes_sent(self, name: str) -> int:
        """Body bytes of repo file ``name`` written to clients so far (all repos)."""
        with self._lock:
            return self._bytes_sent.get(name, 0)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes_sent.clear()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeHub:
        """Start serving in a background thread; returns once both ports listen."""
        if self._thread is not None:
            raise RuntimeError("FakeHub already started")
        self._thread = threading.Thread(target=self._thread_main, name="fake-hub", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake hub did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError("fake hub failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving (in-flight slow transfers are cut) and join the thread."""
        self._closing = True
        loop, stop_event, thread = self._loop, self._stop_event, self._thread
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        if thread is not None:
            thread.join(15)
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeHub:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._startup_error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        hub_app = web.Application()
        hub_app.router.add_route("*", "/{tail:.*}", self._handle_hub)
        cdn_app = web.Application()
        cdn_app.router.add_route("*", "/{tail:.*}", self._handle_cdn)
        runners: list[web.AppRunner] = []
        sockets: list[socket.socket] = []
        try:
            urls = []
            for app in (hub_app, cdn_app):
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                runners.append(runner)
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
                await web.SockSite(runner, sock).start()
                urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
            self.url, self.cdn_url = urls
            self._ready.set()
            await self._stop_event.wait()
        finally:
            for runner in runners:
                await runner.cleanup()
            for sock in sockets:
                sock.close()

    # ---------------------------------------------------------------- handlers

    def _record(
        self, request: web.Request, kind: str, repo_id: str | None, file: str | None
    ) -> None:
        entry = HubRequest(
            method=request.method,
            path=unquote(request.raw_path.split("?", 1)[0]),
            kind=kind,
            repo_id=repo_id,
            file=file,
            range=request.headers.get("Range"),
        )
        with self._lock:
            self._requests.append(entry)

    async def _handle_hub(self, request: web.Request) -> web.StreamResponse:
        """The hub's API and resolve URLs.

        Anything else gets a 404, which is fine for the best-effort extras huggingface_hub 2.x
        requests (it fetches ``/api/agent-harnesses`` once, for telemetry, and ignores
        failures).
        """
        parts = [unquote(p) for p in request.raw_path.split("?", 1)[0].split("/")[1:]]
        if len(parts) >= 3 and parts[:2] == ["api", "models"]:
            return self._handle_api(request, parts[2:])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{parts[0]}/{parts[1]}"
            name = "/".join(parts[4:])
            self._record(request, "resolve", repo_id, name)
            return await self._handle_resolve(request, repo_id, parts[3], name)
        self._record(request, "other", None, None)
        return _error(404, "Not Found")

    def _handle_api(self, request: web.Request, rest: list[str]) -> web.StreamResponse:
        """``/api/models/...``, ``rest`` being the path after it.

        - ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info with
          the commit ``sha`` and ``siblings`` (``HfApi.model_info``/``repo_info``).
        - ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...``: the file listing with
          git blob ids and LFS sha256/size (``HfApi.list_repo_tree``, used by
          ``snapshot_download``).
        """
        if request.method != "GET" or len(rest) < 2:
            self._record(request, "other", None, None)
            return _error(404, "Not Found")
        repo_id, rest = f"{rest[0]}/{rest[1]}", rest[2:]
        kind = "tree" if rest[:1] == ["tree"] and len(rest) >= 2 else "info"
        self._record(request, kind, repo_id, None)
        repo = self._repos.get(repo_id)
        if repo is None:
            return _error(401, "Repository Not Found", "RepoNotFound")
        if not rest:
            revision = "main"
        elif len(rest) >= 2 and (rest[0] == "tree" or (len(rest) == 2 and rest[0] == "revision")):
            revision = rest[1]
        else:
            return _error(404, "Not Found")
        if revision not in ("main", repo.commit):
            return _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if kind == "info":
            return web.json_response(self._model_info(repo))
        sub = "/".join(rest[2:])
        recursive = query_flag(request, "recursive")
        return web.json_response(_tree(repo, sub, recursive=recursive))

    def _model_info(self, repo: _Repo) -> dict[str, Any]:
        namespace = repo.repo_id.split("/")[0]
        return {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": namespace,
            "sha": repo.commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "private": False,
            "disabled": False,
            "gated": "manual" if repo.repo_id in self.gated else False,
            "downloads": 0,
            "likes": 0,
            "tags": ["mlx"],
            "library_name": "mlx",
            "siblings": [{"rfilename": name} for name in sorted(repo.files)],
        }

    async def _handle_resolve(
        self, request: web.Request, repo_id: str, revision: str, name: str
    ) -> web.StreamResponse:
        """``HEAD``/``GET /{repo}/resolve/{rev}/{file}``.

        ``X-Repo-Commit`` and ``ETag`` (the git blob id) for regular files, served directly; LFS
        files (weights) answer ``302`` to a "CDN" with ``X-Linked-Etag`` (sha256) and
        ``X-Linked-Size``, as the real hub does. The CDN is a second port, so huggingface_hub
        treats it as a foreign host exactly like the real CDN (it does not follow the redirect
        on HEAD, and drops the token).
        """
        repo = self._repos.get(repo_id)
        if repo is None:
            return _error(401, "Repository Not Found", "RepoNotFound")
        if revision not in ("main", repo.commit):
            return _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if repo_id in self.gated:
            return _error(403, f"Access to model {repo_id} is restricted.", "GatedRepo")
        entry = repo.files.get(name)
        commit_header = {"X-Repo-Commit": repo.commit}
        if entry is None:
            return _error(404, "Entry not found", "EntryNotFound", headers=commit_header)
        if entry.lfs:
            location = (
                f"{self.cdn_url}/lfs/{quote(repo_id)}/{entry.sha256}?file={quote(entry.name)}"
            )
            return web.Response(
                status=302,
                headers={
                    **commit_header,
                    "Location": location,
                    "ETag": f'"{entry.git_oid}"',
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.size),
                },
            )
        return await self._send_file(request, entry, {**commit_header, "ETag": f'"{entry.etag}"'})

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        parts = [unquote(p) for p in request.raw_path.split("?", 1)[0].split("/")[1:]]
        if len(parts) != 4 or parts[0] != "lfs" or request.method not in ("GET", "HEAD"):
            self._record(request, "other", None, None)
            return _error(404, "Not Found")
        repo_id, sha256 = f"{parts[1]}/{parts[2]}", parts[3]
        repo = self._repos.get(repo_id)
        entry = None
        if repo is not None:
            entry = next((f for f in repo.files.values() if f.sha256 == sha256 and f.lfs), None)
        self._record(request, "cdn", repo_id, entry.name if entry else None)
        if entry is None:
            return _error(404, "Not Found")
        return await self._send_file(request, entry, {"ETag": f'"{entry.sha256}"'})

    async def _send_file(
        self, request: web.Request, entry: _File, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The file's body, or the part of it a ``Range`` request asks for (``206`` with
        ``Content-Range``), which resumed downloads send."""
        start, end = 0, entry.size  # [start, end)
        status = 200
        range_header = request.headers.get("Range")
        if range_header:
            match = _RANGE_RE.fullmatch(range_header.strip())
            if match is None or (not match.group(1) and not match.group(2)):
                return _error(416, "Bad Range", headers={"Content-Range": f"bytes */{entry.size}"})
            first, last = match.group(1), match.group(2)
            if first:
                start = int(first)
                end = min(entry.size, int(last) + 1) if last else entry.size
            else:  # suffix range: the last N bytes
                start = max(0, entry.size - int(last))
            if start >= entry.size or start >= end:
                return _error(416, "Bad Range", headers={"Content-Range": f"bytes */{entry.size}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{entry.size}"}
        response = web.StreamResponse(
            status=status,
            headers={
                **headers,
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            },
        )
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            return response

        fail_after = self.fail_once.pop(entry.name, None)
        corrupt = entry.name in self.corrupt_once
        self.corrupt_once.discard(entry.name)
        sent = 0
        pos = start
        while pos < end:
            if self._closing:
                _abort(request)
                return response
            rate = self.slow_bytes_per_s
            size = _CHUNK if not rate else max(512, min(_CHUNK, int(rate / 20)))
            size = min(size, end - pos)
            if fail_after is not None:
                size = min(size, fail_after - sent)
                if size <= 0:
                    _abort(request)  # the client sees a body shorter than Content-Length
                    return response
            data = _read(entry.path, pos, size)
            if corrupt:
                data = bytes(b ^ 0xFF for b in data)
            try:
                await response.write(data)
            except ConnectionError:
                return response  # the client went away (a killed download)
            pos += len(data)
            sent += len(data)
            with self._lock:
                self._bytes_sent[entry.name] = self._bytes_sent.get(entry.name, 0) + len(data)
            if rate:
                await asyncio.sleep(len(data) / rate)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


def closed_port_url() -> str:
    """An ``http://127.0.0.1:PORT`` where nothing listens (for "hub unreachable" tests)."""
    return f"http://127.0.0.1:{free_port()}"


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def _error(
    status: int,
    message: str,
    error_code: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error with the hub's ``X-Error-Code`` header.

    The ones sent: ``RepoNotFound`` (401, as for anonymous requests), ``RevisionNotFound``
    and ``EntryNotFound`` (404), ``GatedRepo`` (403, on file downloads only, as on the hub).
    """
    all_headers = dict(headers or {})
    if error_code is not None:
        all_headers["X-Error-Code"] = error_code
        all_headers["X-Error-Message"] = message
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=all_headers,
    )


def _load_repo(repo_id: str, root: Path) -> _Repo:
    """The repo served from ``root``: one commit, ``main``; its sha is derived from the files'
    contents."""
    if not root.is_dir():
        raise ValueError(f"repo {repo_id}: {root} is not a directory")
    files: dict[str, _File] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts) or not path.is_file():
            continue
        data = path.read_bytes()
        name = rel.as_posix()
        sha256 = hashlib.sha256(data).hexdigest()
        lfs = name.endswith(_LFS_SUFFIXES) or len(data) >= _LFS_MIN_SIZE
        content = _lfs_pointer(sha256, len(data)) if lfs else data
        files[name] = _File(
            name=name,
            path=path,
            size=len(data),
            git_oid=_git_blob_id(content),
            sha256=sha256,
            lfs=lfs,
        )
    manifest = "".join(f"{f.name}\0{f.git_oid}\n" for f in files.values())
    commit = hashlib.sha1(f"{repo_id}\n{manifest}".encode(), usedforsecurity=False).hexdigest()
    return _Repo(repo_id=repo_id, commit=commit, files=files)


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _git_blob_id(content: bytes) -> str:
    git = hashlib.sha1(f"blob {len(content)}\0".encode(), usedforsecurity=False)
    git.update(content)
    return git.hexdigest()


def _tree(repo: _Repo, sub: str, *, recursive: bool) -> list[dict[str, Any]]:
    """Tree entries under ``sub`` (files and directories), like ``/api/models/.../tree``."""
    prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for entry in repo.files.values():
        if not entry.name.startswith(prefix):
            continue
        rel_parts = entry.name[len(prefix) :].split("/")
        # Directories on the way to the file.
        for depth in range(1, len(rel_parts)):
            if not recursive and depth > 1:
                break
            dir_path = prefix + "/".join(rel_parts[:depth])
            entries.setdefault(
                dir_path,
                {"type": "directory", "oid": _git_blob_id(dir_path.encode()), "size": 0,
                 "path": dir_path},
            )  # fmt: skip
        if not recursive and len(rel_parts) > 1:
            continue
        item: dict[str, Any] = {
            "type": "file",
            "oid": entry.git_oid,
            "size": entry.size,
            "path": entry.name,
        }
        if entry.lfs:
            item["lfs"] = {
                "oid": entry.sha256,
                "size": entry.size,
                "pointerSize": len(_lfs_pointer(entry.sha256, entry.size)),
            }
        entries[entry.name] = item
    return [entries[key] for key in sorted(entries)]
