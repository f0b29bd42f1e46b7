"""The server's pid file (``<data_dir>/mlx-serve.pid``): how ``stop`` finds a server and how
a second ``start`` knows one is already running."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

PID_FILE = "mlx-serve.pid"


def pid_path(data_dir: Path) -> Path:
    return data_dir / PID_FILE


def running_pid(data_dir: Path) -> int | None:
    """The pid in the file if that process is alive and is an mlx-serve server, else None.

    The command-line check guards against a stale file whose pid was reused by another
    program after a crash: ``stop`` must never signal a stranger.
    """
    try:
        pid = int(pid_path(data_dir).read_text().strip())
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    if proc.status() == psutil.STATUS_ZOMBIE or "mlx" not in cmdline or "start" not in cmdline:
        return None
    return pid


def write_pid(data_dir: Path, pid: int | None = None) -> Path:
    path = pid_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid or os.getpid()}\n")
    tmp.replace(path)
    return path


def remove_pid(data_dir: Path, pid: int | None = None) -> None:
    """Remove the file if it still names ``pid`` (default: this process)."""
    path = pid_path(data_dir)
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == (pid or os.getpid()):
            path.unlink()
