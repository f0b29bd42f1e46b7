"""Writing files so that no reader (or crash) ever sees half of one."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

__all__ = ["append_line", "atomic_write", "warn_storage_once"]

log = logging.getLogger("mlx_serve")
_warned: set[str] = set()


def warn_storage_once(what: str, path: Path, exc: OSError) -> None:
    """Log (once per ``what`` for the life of the process) that a file could not be written.

    A full disk or an unwritable data dir must not take the server down: logs, events and
    learned footprints are worth less than answering requests. But the user must hear of it,
    once, not on every request.
    """
    if what in _warned:
        return
    _warned.add(what)
    log.warning("cannot write %s (%s): %s; serving goes on without it", what, path, exc)


def append_line(path: Path, line: str, *, what: str) -> bool:
    """Append ``line`` to ``path`` (creating its directory); False, warned once, on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(line)
    except OSError as exc:
        warn_storage_once(what, path, exc)
        return False
    return True


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` so that no reader ever sees a partial file.

    The bytes go to a temporary file in the same directory (same file system, so
    :func:`os.replace` is an atomic rename), get ``mode`` *before* any byte is written (a
    file holding a secret is never briefly world-readable), are fsynced, and only then take
    the real name. The temporary name ends in ``.tmp``, which neither launchd (``*.plist``)
    nor systemd (``*.service``) would pick up if a crash left it behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where supported
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
