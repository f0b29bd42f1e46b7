"""Writing files so that no reader (or crash) ever sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


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
