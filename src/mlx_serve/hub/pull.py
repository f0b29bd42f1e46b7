"""``pull``: download a hub repo into the Hugging Face cache, as an async stream of progress.

The download runs in a child process (:mod:`mlx_serve.hub.download`, started through
:mod:`mlx_serve.workers.guard` in its own session) that reports JSON lines on stdout:

- ``{"event": "manifest", "commit": sha, "files": [{"name", "size"}]}``
- ``{"event": "progress", "file", "completed", "total"}`` (throttled per file)
- ``{"event": "verifying", "file"}``
- ``{"event": "done", "path", "commit", "bytes", "downloaded"}``
- ``{"event": "error", "code", "message"}`` (``code`` names a :class:`HubError` subclass)

Why a process: huggingface_hub downloads with blocking calls that no thread can interrupt.
Cancelling a pull (the consumer closes the generator, or its task is cancelled) SIGKILLs the
child's process group and returns as soon as it is reaped, typically in milliseconds. The
kill can only ever leave ``blobs/<etag>.incomplete`` behind, never a blob or a snapshot
entry, because those appear only after a file is complete and verified; the next pull
resumes the ``.incomplete`` file with a Range request. If the server process itself dies,
the guard sees its stdin pipe close and kills the download too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from mlx_serve.workers.process import end_group

from .cache import hub_cache_dir
from .errors import (
    ChecksumMismatch,
    DiskFull,
    DownloadFailed,
    GatedRepo,
    HubError,
    HubOffline,
    HubUnreachable,
    InvalidRepoId,
    InvalidRevision,
    RepoNotFound,
    RevisionNotFound,
)
from .ids import validate_repo_id, validate_revision

__all__ = ["hub_offline", "pull"]

_ERRORS: dict[str, type[HubError]] = {
    cls.code: cls
    for cls in (
        ChecksumMismatch,
        DiskFull,
        DownloadFailed,
        GatedRepo,
        HubOffline,
        HubUnreachable,
        InvalidRepoId,
        InvalidRevision,
        RepoNotFound,
        RevisionNotFound,
    )
}
# A manifest line lists every file of the repo; allow big repos.
_LINE_LIMIT = 64 * 1024 * 1024
_TRUE = frozenset({"1", "ON", "YES", "TRUE"})
_REAP_TIMEOUT = 5.0


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now.

    Same truthy values as huggingface_hub, which only reads them when it is first imported.
    """
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


async def pull(
    repo_id: str, revision: str | None = None, *, cache_dir: Path | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    """Download ``repo_id`` at ``revision`` into the HF cache, yielding NDJSON-ready progress.

    Yields, in order:

    - ``{"status": "pulling manifest", "revision": sha, "files": n, "total": bytes}``, once
      the hub has confirmed the repo and revision. Nothing is yielded before that, so every
      error about the request itself (``InvalidRepoId``, ``InvalidRevision``,
      ``RepoNotFound``, ``RevisionNotFound``, ``GatedRepo``, ``HubUnreachable``,
      ``HubOffline``, and ``DiskFull`` when the missing files cannot fit) is raised by the
      first ``__anext__``: a route can await the first item before it commits to a
      streaming 200.
    - per file, ``{"status": "downloading", "file", "completed", "total"}`` at most every
      0.25 s while bytes arrive: first the bytes already on disk (0, or where an interrupted
      pull stopped), last the full size. ``completed`` only counts bytes written to disk. A
      file already in the cache gets a single line with ``completed == total``;
    - ``{"status": "verifying", "file"}`` before a downloaded file's hash is checked;
    - ``{"status": "success", "path": snapshot dir, "revision": commit sha, "bytes": size of
      the snapshot, "downloaded_bytes": bytes transferred by this pull}``.

    Later failures raise ``DownloadFailed`` (or ``ChecksumMismatch``/``DiskFull``) or
    ``HubUnreachable``; a new pull resumes. The cache ends up exactly as
    ``huggingface_hub.snapshot_download(repo_id, revision=revision)`` would leave it.

    The return type is an async generator (an ``AsyncIterator`` with ``aclose``). Close it
    when you stop early (``async with contextlib.aclosing(pull(...)) as events``): that, or
    cancelling the task iterating it, kills the download within milliseconds. ``async for``
    does not close an iterator it leaves by ``break`` or an exception; a generator that is
    merely dropped is closed by asyncio's async-generator finalizer, later.
    """
    repo_id = validate_repo_id(repo_id)
    if revision is not None:
        revision = validate_revision(revision)
    if hub_offline():
        raise HubOffline(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set in the server's environment: "
            "downloads from the hub are disabled (unset it to pull models)"
        )
    cache = hub_cache_dir(cache_dir)
    argv = [
        sys.executable, "-m", "mlx_serve.workers.guard", "mlx_serve.hub", "download", repo_id,
        "--cache-dir", str(cache),
    ]  # fmt: skip
    if revision is not None:
        argv += ["--revision", revision]
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,  # the guard pipe: closing it kills the child
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=env,
        limit=_LINE_LIMIT,
    )
    stderr_tail: deque[str] = deque(maxlen=30)
    assert proc.stdout is not None and proc.stderr is not None
    drain = asyncio.create_task(_drain(proc.stderr, stderr_tail))
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    try:
        while line := await proc.stdout.readline():
            event = _parse(line)
            kind = event.get("event")
            if kind == "manifest":
                files = event.get("files") or []
                yield {
                    "status": "pulling manifest",
                    "revision": event.get("commit"),
                    "files": len(files),
                    "total": sum(int(f.get("size") or 0) for f in files),
                }
            elif kind == "progress":
                yield {
                    "status": "downloading",
                    "file": event.get("file"),
                    "completed": event.get("completed"),
                    "total": event.get("total"),
                }
            elif kind == "verifying":
                yield {"status": "verifying", "file": event.get("file")}
            elif kind == "done":
                done = event
            elif kind == "error":
                error = event
        returncode = await proc.wait()
        await drain
        if error is not None:
            cls = _ERRORS.get(str(error.get("code")), DownloadFailed)
            raise cls(str(error.get("message") or "download failed"))
        if done is None:
            tail = "\n".join(stderr_tail)
            raise DownloadFailed(
                f"the download process exited with code {returncode} without finishing"
                + (f":\n{tail}" if tail else "")
            )
        yield {
            "status": "success",
            "path": done.get("path"),
            "revision": done.get("commit"),
            "bytes": done.get("bytes"),
            "downloaded_bytes": done.get("downloaded"),
        }
    finally:
        await _reap(proc, drain)


def _parse(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}  # not a protocol line; the child never writes these on purpose
    return event if isinstance(event, dict) else {}


async def _drain(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    """Keep reading stderr so the child never blocks on a full pipe; remember the end.

    Reads chunks, not lines: a huge line (a traceback of a huge repr) must not end the drain.
    """
    pending = b""
    while chunk := await stream.read(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        pending = pending[-65536:]
        tail.extend(line.decode("utf-8", errors="replace").rstrip() for line in lines)
    if pending:
        tail.append(pending.decode("utf-8", errors="replace").rstrip())


async def _reap(proc: asyncio.subprocess.Process, drain: asyncio.Task[None]) -> None:
    """Kill the child's whole group (still running or not), reap it, release its pipes.

    Reaping survives one more cancellation (a server shutting down cancels its tasks, and an
    abandoned generator is closed by a task that shutdown cancels too): the child is
    SIGKILLed at once and exits within milliseconds, so waiting for it, bounded, costs
    nothing and leaves no zombie or open pipe to a closing event loop.
    """
    job = asyncio.ensure_future(_finish(proc, drain))
    try:
        await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(job, _REAP_TIMEOUT)
        raise
    finally:
        drain.cancel()
        if not job.done():
            # Abandoned before the reap finished (cancelled again while waiting, or the loop
            # is going away): SIGKILL the group now, synchronously, so no child outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            proc.stdin.close()


async def _finish(proc: asyncio.subprocess.Process, drain: asyncio.Task[None]) -> None:
    """End the child's group and wait for the exit and for EOF on every pipe, so asyncio
    closes the transport now.

    SIGKILL, not SIGTERM (``term=False``): nothing the child could clean up is worth waiting
    for, since partial files are meant to stay for the next pull; the whole group, so
    anything it started goes too. asyncio closes a subprocess transport only once the exit
    and every pipe's EOF have been processed; returning earlier leaves that to a later loop
    iteration that a shutting-down loop may never run ("unclosed transport" warnings).
    """
    await end_group(proc, 0, term=False)
    if proc.stdin is not None:
        proc.stdin.close()
    if proc.stdout is not None:
        await proc.stdout.read()
    await drain
    await asyncio.sleep(0)  # let the stdin pipe's close callback run
