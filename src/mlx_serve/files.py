"""Writing files so that no reader (or crash) ever sees half of one."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

__all__ = ["append_line", "atomic_write", "atomic_write_text", "warn_storage_once"]

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


def atomic_write(path: Path, data: bytes, mode: int | None) -> None:
    """Replace ``path`` with ``data`` so that no reader ever sees a partial file.

    The bytes go to a temporary file in the same directory (same file system, so
    :func:`os.replace` is an atomic rename), get ``mode`` *before* any byte is written (a
    file holding a secret is never briefly world-readable), are fsynced, and only then take
    the real name. ``mode`` None gives the file the mode any new file gets (0666 less the
    umask), as a plain ``open()`` would. The temporary name ends in ``.tmp``, which neither
    launchd (``*.plist``) nor systemd (``*.service``) would pick up if a crash left it behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600 until the fchmod when a mode is given; else the kernel applies the umask to 0666.
    fd, tmp = _new_temp(path, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
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


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8; by default with the mode a new file gets."""
    atomic_write(path, text.encode("utf-8"), mode)


def _new_temp(path: Path, create_mode: int) -> tuple[int, Path]:
    """A new empty file ``.<name>.<random>.tmp`` next to ``path``, open for writing (what
    :func:`tempfile.mkstemp` does, but with ``create_mode`` instead of its fixed 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, create_mode), tmp
        except FileExistsError:
            continue
