"""The download child process: ``python -m mlx_serve.hub download REPO_ID --cache-dir DIR``.

:func:`mlx_serve.hub.pull` runs this in its own process so that cancelling a pull is a
``SIGKILL``: huggingface_hub's downloads are blocking calls in threads, which nothing can
interrupt from outside, while a killed process stops at once and its partial files stay on
disk for the next pull to resume.

It fetches each file itself rather than just calling ``snapshot_download``, so that an
interrupted file resumes and progress is reported per file: :meth:`Downloader.run` has the
steps, :meth:`Downloader._download_blob` the reasons; :func:`main` the protocol.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import (
    HfApi,
    RepoFile,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import HfFileMetadata, http_get, repo_folder_name

# Lazily exported by huggingface_hub.utils, which mypy cannot see through.
from huggingface_hub.utils import (  # type: ignore[attr-defined]
    WeakFileLock,
    build_hf_headers,
)

from .errors import DiskFull, HubError
from .ids import validate_repo_id, validate_revision

__all__ = ["ChecksumError", "Downloader", "classify", "main"]

Emit = Callable[[dict[str, Any]], None]

_HASH_CHUNK = 8 * 1024 * 1024
#: Bodies are read in 256 KiB chunks instead of huggingface_hub's 10 MiB, so progress is
#: frequent and a cancel loses little.
_DOWNLOAD_CHUNK = 256 * 1024


class ChecksumError(Exception):
    """A finished download does not match the hash the hub listed for it."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the commit being pulled, as the hub's tree listing describes it."""

    name: str
    size: int
    blob_id: str
    sha256: str | None  # LFS files: sha256 of the content; others: None (use the git blob id)


class Emitter:
    """Writes protocol lines; shared by the download threads, hence the lock."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


class FileProgress:
    """Throttled progress of one file: a line at most every ``interval`` s, plus start and end.

    ``completed`` counts bytes that are on disk: it is advanced by :class:`ProgressFile`
    after each write, never by huggingface_hub's progress bar (which counts a chunk before
    writing it), so a reported number is always what a killed pull leaves to resume from.
    """

    def __init__(
        self, emit: Emit, name: str, total: int | None, interval: float, counter: ByteCounter
    ) -> None:
        self._emit = emit
        self.name = name
        self.total = total
        self.completed = 0
        self._interval = interval
        self._counter = counter
        self._last_emit = 0.0
        self._last_value = -1
        self._lock = threading.Lock()

    def set(self, completed: int, *, force: bool = False, transferred: bool = False) -> None:
        """Set the bytes on disk; ``transferred``: the change came over the network."""
        with self._lock:
            if transferred:
                self._counter.add(completed - self.completed)
            self.completed = completed
            self._maybe_emit(force)

    def finish(self) -> None:
        with self._lock:
            if self.total is not None:
                self.completed = self.total
            self._maybe_emit(True)

    def _maybe_emit(self, force: bool) -> None:
        now = time.monotonic()
        done = self.total is not None and self.completed >= self.total
        if self.completed == self._last_value:
            return
        if force or done or now - self._last_emit >= self._interval:
            self._last_emit = now
            self._last_value = self.completed
            self._emit(
                {
                    "event": "progress",
                    "file": self.name,
                    "completed": self.completed,
                    "total": self.total,
                }
            )


class ProgressFile:
    """The partial file handed to ``http_get``: reports progress after each write lands.

    Each write is flushed to the OS before it is reported, so the bytes survive a SIGKILL.
    ``http_get`` only calls ``write``, ``tell``, ``seek`` and ``truncate`` (the last two
    when a server ignores a Range request and the file must start over).
    """

    def __init__(self, raw: BinaryIO, progress: FileProgress) -> None:
        self._raw = raw
        self._progress = progress

    def write(self, data: bytes) -> int:
        written = self._raw.write(data)
        self._raw.flush()
        self._progress.set(self._raw.tell(), transferred=True)
        return written

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        new_size = self._raw.truncate(size)
        self._progress.set(new_size, force=True, transferred=True)
        return new_size

    def flush(self) -> None:
        self._raw.flush()


class _SilentBar:
    """A do-nothing tqdm stand-in: progress is reported by :class:`ProgressFile` instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _SilentBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class ByteCounter:
    """Bytes actually transferred by this pull, across threads."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


class Downloader:
    """Fetches one commit of a model repo into the cache; :meth:`run` says how."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None,
        cache_dir: Path,
        emit: Emit,
        *,
        workers: int = 4,
        progress_interval: float = 0.25,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = cache_dir
        self.storage = cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")
        self._emit = emit
        self._workers = workers
        self._interval = progress_interval
        self.downloaded = ByteCounter()
        self._metadata: dict[str, HfFileMetadata] = {}

    def run(self) -> None:
        """Pull the commit in three steps, each through huggingface_hub so the cache ends up
        exactly as ``snapshot_download`` leaves it.

        1. ``model_info`` resolves the revision to a commit; ``list_repo_tree`` lists its files.
        2. Every file not yet in ``snapshots/<commit>/`` is fetched (a few in parallel): a
           ``HEAD`` (``get_hf_file_metadata``) gives its ETag, which names the blob; the body is
           appended to ``blobs/<etag>.incomplete`` with huggingface_hub's ``http_get``, resuming
           with a ``Range`` request from whatever an earlier, interrupted pull left there; it is
           verified against the sha256 (LFS) or git blob id the hub listed, and only then
           renamed to ``blobs/<etag>``. ``hf_hub_download`` then finds the blob and creates the
           snapshot symlink itself (:meth:`_fetch`).
        3. ``snapshot_download`` runs last. Every file is in place, so it downloads nothing, but
           it writes ``refs/<revision>`` and its cached tree listing (``trees/<commit>.json``)
           exactly as it always does, so mlx_lm and friends find the model offline later.
        """
        api = HfApi()
        info = api.model_info(self.repo_id, revision=self.revision)
        commit = info.sha
        if not commit:
            raise RuntimeError("the hub did not say which commit this revision is")
        files = [
            RemoteFile(
                name=entry.path,
                size=entry.size,
                blob_id=entry.blob_id,
                sha256=entry.lfs.sha256 if entry.lfs is not None else None,
            )
            for entry in api.list_repo_tree(self.repo_id, revision=commit, recursive=True)
            if isinstance(entry, RepoFile)
        ]
        # Fail before the manifest if the files themselves are off limits (a gated repo lists
        # its files to anyone but serves them only with a token): the parent then raises
        # before its first yield, so the route can still answer with a proper status.
        missing = [f for f in files if not self._pointer(commit, f).exists()]
        if missing:
            self._metadata[missing[0].name] = self._file_metadata(commit, missing[0].name)
        _check_free_space(self.cache_dir, sum(f.size for f in missing))
        self._emit(
            {
                "event": "manifest",
                "commit": commit,
                "files": [{"name": f.name, "size": f.size} for f in files],
            }
        )
        self._fetch_all(commit, files)
        # Everything is in place: this writes refs/<revision> and the tree cache and
        # downloads nothing (each file is found by its commit-pinned snapshot path).
        path = snapshot_download(
            self.repo_id,
            revision=self.revision,
            cache_dir=self.cache_dir,
            max_workers=self._workers,
        )
        snapshot = Path(path)
        self._emit(
            {
                "event": "done",
                "path": str(snapshot),
                "commit": snapshot.name,
                "bytes": sum(f.size for f in files),
                "downloaded": self.downloaded.value,
            }
        )

    def _fetch_all(self, commit: str, files: list[RemoteFile]) -> None:
        """Fetch files in parallel; the first failure stops the pull (the rest is resumable)."""
        if not files:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(self._workers, len(files))))
        try:
            pending: set[Future[None]] = {pool.submit(self._fetch, commit, f) for f in files}
            while pending:
                done, pending = wait(pending, return_when="FIRST_EXCEPTION")
                for future in done:
                    future.result()  # re-raises the first failure
        finally:
            # On failure, main() exits the process without joining the threads still busy.
            pool.shutdown(wait=False, cancel_futures=True)

    def _file_metadata(self, commit: str, name: str) -> HfFileMetadata:
        """HEAD the file (retrying 5xx/timeouts with backoff, as a download should)."""
        url = hf_hub_url(self.repo_id, name, revision=commit)
        return get_hf_file_metadata(url, retry_on_errors=True)

    def _pointer(self, commit: str, remote: RemoteFile) -> Path:
        return self.storage / "snapshots" / commit / Path(*remote.name.split("/"))

    def _fetch(self, commit: str, remote: RemoteFile) -> None:
        progress = FileProgress(
            self._emit, remote.name, remote.size, self._interval, self.downloaded
        )
        if self._pointer(commit, remote).exists():  # the link resolves: the blob is complete
            progress.finish()
            return
        meta = self._metadata.pop(remote.name, None) or self._file_metadata(commit, remote.name)
        if meta.etag is None:
            raise RuntimeError(f"the hub sent no ETag for {remote.name}")
        size = meta.size if meta.size is not None else remote.size
        progress.total = size
        blob = self.storage / "blobs" / meta.etag
        if not blob.exists():
            url = hf_hub_url(self.repo_id, remote.name, revision=commit)
            # Like huggingface_hub: download from where HEAD was redirected (the CDN), except
            # for Xet-backed files, whose resolve URL is followed afresh. They are fetched over
            # plain HTTP too (the resolve URL redirects to a server that serves them whole,
            # which is huggingface_hub's own fallback without hf_xet), trading hf_xet's speed
            # for resumability.
            location = meta.location if meta.xet_file_data is None and meta.location else url
            self._download_blob(url, location, blob, remote, size=size, progress=progress)
        progress.finish()
        # The blob exists now, so this only creates the snapshot symlink, with
        # huggingface_hub's own logic (relative link, or a copy where links are unsupported).
        hf_hub_download(self.repo_id, remote.name, revision=commit, cache_dir=self.cache_dir)

    def _download_blob(
        self,
        url: str,
        location: str,
        blob: Path,
        remote: RemoteFile,
        *,
        size: int,
        progress: FileProgress,
    ) -> None:
        """Append the body to ``blobs/<etag>.incomplete``, verify it, then rename it to the blob.

        Why not just call ``snapshot_download``: in huggingface_hub 2.x (checked against 2.4.0)
        every download goes to a temporary file with a random suffix that is deleted on failure
        (and orphaned when the process is killed), so an interrupted file always starts again
        from byte 0; its Range requests only happen inside one call, when a connection drops
        mid-file. It also reports no per-file progress. The blob lock
        (``.locks/<repo>/<etag>.lock``) is the same one huggingface_hub takes, so a concurrent
        ``hf_hub_download`` of the same file waits for us and vice versa.
        """
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = self.cache_dir / ".locks" / self.storage.name / f"{blob.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):
            if blob.exists():  # another process finished it while we waited for the lock
                return
            partial = blob.with_name(blob.name + ".incomplete")
            resume = partial.stat().st_size if partial.exists() else 0
            if resume > size:
                partial.unlink()
                resume = 0
            progress.set(resume, force=True)
            headers = build_hf_headers()
            if urlsplit(location).netloc != urlsplit(url).netloc:
                # A redirect to a CDN (signed URL): the token must not leave the hub.
                headers.pop("authorization", None)
            with partial.open("ab") as fh:
                http_get(
                    location,
                    cast(BinaryIO, ProgressFile(fh, progress)),
                    resume_size=resume,
                    headers=headers,
                    expected_size=size,
                    displayed_filename=remote.name,
                    tqdm_class=_SilentBar,
                )
            self._emit({"event": "verifying", "file": remote.name})
            try:
                _verify(partial, remote, size)
            except ChecksumError:
                partial.unlink(missing_ok=True)  # corrupt: the next pull starts it afresh
                raise
            _match_cache_permissions(partial)
            partial.replace(blob)


def _check_free_space(cache_dir: Path, needed: int) -> None:
    """Refuse up front when the files still missing cannot fit (partial files ignored).

    huggingface_hub only warns, then fails with ENOSPC somewhere in the middle; refusing
    before the manifest lets the caller report it as a plain error instead of a broken stream.
    """
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # cannot tell: let the download try
    if needed > free:
        raise DiskFull(
            f"not enough disk space for the download: {needed / 1e9:.2f} GB needed, "
            f"{free / 1e9:.2f} GB free in {cache_dir}"
        )


def _verify(path: Path, remote: RemoteFile, size: int) -> None:
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ChecksumError(f"{remote.name}: expected {size} bytes, got {actual_size}")
    if remote.sha256 is not None:
        digest = hashlib.sha256()
        for chunk in _chunks(path):
            digest.update(chunk)
        if digest.hexdigest() != remote.sha256:
            raise ChecksumError(f"{remote.name}: sha256 does not match the hub's")
        return
    git = hashlib.sha1(f"blob {actual_size}\0".encode(), usedforsecurity=False)
    for chunk in _chunks(path):
        git.update(chunk)
    if git.hexdigest() != remote.blob_id:
        raise ChecksumError(f"{remote.name}: git blob id does not match the hub's")


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            yield chunk


def _match_cache_permissions(path: Path) -> None:
    """Give a finished blob the mode a fresh file in its folder gets, like huggingface_hub.

    The partial file was opened by us with the process umask, which is what huggingface_hub
    also ends up with; probing a new file keeps a shared cache's group permissions intact.
    """
    probe = path.parent / f"tmp_{uuid.uuid4()}"
    try:
        probe.touch()
        path.chmod(probe.stat().st_mode & 0o7777)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            probe.unlink()


def classify(exc: BaseException, repo_id: str, revision: str | None) -> tuple[str, str]:
    """Map an exception from the download to ``(code, user-facing message)``.

    The codes are the ``code`` attributes of :mod:`mlx_serve.hub.errors`; the parent turns
    them back into exception classes. huggingface_hub's own messages are multi-line and
    mention its Python API, so they are replaced, keeping only a short cause.
    """
    rev = revision or "main"
    if isinstance(exc, HubError):
        return exc.code, exc.message
    if isinstance(exc, GatedRepoError):
        return "gated_repo", (
            f"{repo_id} is gated: accept its terms on the hub, then set HF_TOKEN to a token of "
            "that account"
        )
    if isinstance(exc, RevisionNotFoundError):
        return "revision_not_found", f"revision {rev!r} not found in {repo_id}"
    if isinstance(exc, (RepositoryNotFoundError, DisabledRepoError)):
        return "repo_not_found", (
            f"{repo_id} not found on the hub (if it is private, set HF_TOKEN to a token with "
            "access to it)"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return "hub_offline", "HF_HUB_OFFLINE is set: downloads from the hub are disabled"
    if isinstance(exc, RemoteEntryNotFoundError):
        return "download_failed", f"a file listed by the hub for {repo_id} could not be fetched"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and (status >= 500 or status == 429):
            return "hub_unreachable", f"the hub answered HTTP {status}; try again later"
        if status in (401, 403):
            return "repo_not_found", f"access to {repo_id} was denied (HTTP {status}); set HF_TOKEN"
        return "download_failed", f"the hub answered HTTP {status}: {_first_line(exc)}"
    if isinstance(exc, httpx2.TransportError):
        return "hub_unreachable", (
            f"cannot reach the hub at {hf_constants.ENDPOINT}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        )
    if isinstance(exc, ChecksumError):
        return "checksum_mismatch", f"{exc}; the file was discarded, pull again to retry"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full", "no space left on the device that holds the Hugging Face cache"
    return "download_failed", f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point of the child process; exits 0 after a ``done`` line, 1 after ``error``.

    Protocol: one JSON object per line on stdout (see :mod:`mlx_serve.hub.pull`), ``"event"``
    one of ``manifest``, ``progress``, ``verifying``, ``done``, ``error``. Anything
    huggingface_hub prints goes to stderr, which the parent keeps for error messages.
    """
    parser = argparse.ArgumentParser(prog="python -m mlx_serve.hub")
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download a model repo into the HF cache (JSON lines)")
    dl.add_argument("repo_id")
    dl.add_argument("--revision")
    dl.add_argument("--cache-dir", required=True, type=Path)
    dl.add_argument("--workers", type=int, default=4)
    dl.add_argument("--progress-interval", type=float, default=0.25)
    dl.add_argument("--chunk-size", type=int, default=_DOWNLOAD_CHUNK)
    args = parser.parse_args(argv)
    # http_get reads the body in chunks of this many bytes and only then writes and reports
    # them; huggingface_hub's 10 MiB means no progress for 10 MiB at a time and up to 10 MiB
    # lost by a cancel. It is read at each call, and this process is ours alone.
    hf_constants.DOWNLOAD_CHUNK_SIZE = max(4096, args.chunk_size)

    # The protocol owns the real stdout; anything else printing to stdout (a library's
    # print, a progress bar) is sent to stderr so it can never corrupt a protocol line.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    emit = Emitter(protocol)
    code = 0
    try:
        repo_id = validate_repo_id(args.repo_id)
        revision = validate_revision(args.revision) if args.revision is not None else None
        Downloader(
            repo_id,
            revision,
            args.cache_dir,
            emit,
            workers=args.workers,
            progress_interval=args.progress_interval,
        ).run()
    except BaseException as exc:  # report everything, even KeyboardInterrupt
        kind, message = classify(exc, args.repo_id, args.revision)
        emit({"event": "error", "code": kind, "message": message})
        print(f"mlx_serve.hub download failed: {exc!r}", file=sys.stderr, flush=True)
        code = 1
    with suppress(OSError):
        protocol.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: after a failure, download threads may still be running and
    # would be joined; their partial files are meant to stay as they are.
    os._exit(code)
