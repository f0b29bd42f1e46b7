"""One server per data dir: the instance lock (``<data_dir>/mlx-serve.lock``) and the pid file
(``<data_dir>/mlx-serve.pid``).

The lock decides who runs: ``start`` takes an exclusive, non-blocking ``flock`` on the lock file
before anything else and holds it for the server's lifetime. The kernel drops it when the
process dies, however it dies (SIGKILL included), so a crashed server never blocks a restart,
and two ``start`` at the same moment cannot both win.

The pid file appears once the server listens (``start --detach`` waits for it), right after
the runtime file (:mod:`mlx_serve.runtime_file`: pid, URL, config...), through which the other
commands find the server; ``stop`` falls back to the pid file (:func:`running_pid`) for a server
older than the runtime file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

import psutil

from mlx_serve.files import atomic_write_text

PID_FILE = "mlx-serve.pid"
LOCK_FILE = "mlx-serve.lock"

#: How long a ``start`` that lost the lock waits for the winner to write its pid into it
#: (the winner writes it right after locking; this only covers that instant).
HOLDER_PID_WAIT = 1.0


def pid_path(data_dir: Path) -> Path:
    return data_dir / PID_FILE


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_FILE


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
    atomic_write_text(path, f"{pid or os.getpid()}\n")
    return path


def remove_pid(data_dir: Path, pid: int | None = None) -> None:
    """Remove the file if it still names ``pid`` (default: this process)."""
    path = pid_path(data_dir)
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == (pid or os.getpid()):
            path.unlink()


class AlreadyRunning(Exception):
    """Another process holds the data dir's instance lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else f"it holds {lock_path(data_dir)}"
        super().__init__(f"mlx-serve is already running on {data_dir} ({who})")


class InstanceLock:
    """The held lock on a data dir; :meth:`release` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up. The file stays: unlinking it would let a later ``start`` lock a
        new file while a racing one still locks the old, unlinked one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # only the holder writes; the pid would be stale now
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def acquire_lock(data_dir: Path) -> InstanceLock:
    """Take the data dir's instance lock, or raise :class:`AlreadyRunning` at once.

    The descriptor is not inherited by child processes (workers, ``start --detach``'s
    server): only this process holds the lock, and it dies with this process.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(data_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(data_dir, _holder_pid(data_dir)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return InstanceLock(path, fd)


def _holder_pid(data_dir: Path) -> int | None:
    """The pid of the process holding the lock: it writes it into the lock file right after
    locking. Falls back to the pid file (a server started by an older version)."""
    deadline = time.monotonic() + HOLDER_PID_WAIT
    while True:
        with contextlib.suppress(OSError, ValueError):
            pid = int(lock_path(data_dir).read_text().strip())
            if psutil.pid_exists(pid):
                return pid
        if time.monotonic() >= deadline:
            return running_pid(data_dir)
        time.sleep(0.01)
