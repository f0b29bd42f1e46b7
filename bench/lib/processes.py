"""Server processes in their own process group, stopped as a group
(:func:`mlx_serve.workers.process.end_group_sync`), and the ``main`` wrapper that stops
every one of them whatever ends a run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.lib.report import console
from mlx_serve.workers.process import end_group_sync

STOP_TIMEOUT = 20.0  # grace after SIGTERM before the process group is SIGKILLed


class Proc:
    """A server process in its own process group; :meth:`stop` ends the whole group."""

    started: list[Proc] = []  # every Proc ever started, so the final cleanup finds them all

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int = subprocess.DEVNULL,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.stdin = stdin
        self.popen: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== bench: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=self.stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals all of it
                env=self.env,
                cwd=self.cwd,
            )
        Proc.started.append(self)

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def stop(self) -> None:
        """SIGTERM the group, wait, SIGKILL whatever is left of the group. Idempotent: once
        stopped, its (possibly reused) pid is never signalled again."""
        if self.popen is None or self.stopped:
            return
        self.stopped = True
        if end_group_sync(self.popen, STOP_TIMEOUT):
            console.print(f"[yellow]{self.name} ignored SIGTERM for {STOP_TIMEOUT:g}s[/]")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 12) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class GuardedProc(Proc):
    """A worker started like mlx-serve starts one: its stdin a pipe we keep open (the guard
    SIGKILLs its process group when the pipe closes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, stdin=subprocess.PIPE, **kwargs)

    def stop(self) -> None:
        if self.popen is not None and not self.stopped and self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()  # the guard kills the group at once
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        super().stop()


def kill_group(pgid: int) -> None:
    """SIGKILL a leaked worker's process group (workers lead their own); gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_all() -> None:
    for proc in reversed(Proc.started):
        proc.stop()


def is_live_worker(pid: int) -> bool:
    """Is ``pid`` still a live mlx_lm worker leading its own group (not a reused pid)?"""
    try:
        proc = psutil.Process(pid)
        return (
            proc.status() != psutil.STATUS_ZOMBIE
            and os.getpgid(pid) == pid
            and "mlx_lm" in " ".join(proc.cmdline())
        )
    except (psutil.Error, OSError):
        return False


def run_main(run: Coroutine[Any, Any, int]) -> int:
    """Run a benchmark's ``run(...)``; SIGTERM and Ctrl-C end it (exit 130) through every
    ``finally`` on the way, and whatever a failure path left running is stopped at the end."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every finally, which stops the servers

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return asyncio.run(run)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        stop_all()  # idempotent: anything a failure path left running is stopped here
