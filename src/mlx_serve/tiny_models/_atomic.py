"""Build a model directory once, atomically, safely across processes.

A build goes into ``DEST.tmp-<pid>`` and is renamed into place with a marker written last, so
a crashed build never leaves a directory that looks complete. A directory whose marker matches
is reused as is (a cache); a stale build of ours is replaced; any other non-empty directory is
refused, so a wrong path can never wipe someone's files. A file lock serialises builders of
the same directory (parallel test workers).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MARKER_FILE = ".complete"


def build_once(dest: Path, marker: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Return ``dest`` holding what ``write(tmp_dir)`` produces for ``marker``; build if needed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _read_marker(dest) == marker:
        return dest
    with _build_lock(dest):
        # Another process may have finished the same build while we waited.
        if _read_marker(dest) == marker:
            return dest
        if dest.exists() and _read_marker(dest) is None and _is_nonempty(dest):
            raise FileExistsError(
                f"{dest} exists and is not a tiny model built by mlx_serve; refusing to replace it"
            )
        _remove_stale_temporaries(dest)
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        try:
            tmp.mkdir()
            write(tmp)
            (tmp / MARKER_FILE).write_text(
                json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8"
            )
            _move_into_place(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _read_marker(dest: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((dest / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_nonempty(path: Path) -> bool:
    return not path.is_dir() or any(path.iterdir())


@contextlib.contextmanager
def _build_lock(dest: Path) -> Iterator[None]:
    """Serialise builders of the same ``dest`` across processes (e.g. test workers)."""
    lock_path = dest.with_name(f".{dest.name}.lock")
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_stale_temporaries(dest: Path) -> None:
    # Only called under the build lock, so any leftover belongs to a crashed build.
    name = glob.escape(dest.name)
    for pattern in (f"{name}.tmp-*", f"{name}.old-*"):
        for leftover in dest.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _move_into_place(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        tmp.rename(dest)
        return
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
        tmp.rename(dest)
        return
    # A stale build of ours: swap it out, then delete it.
    old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
    dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
