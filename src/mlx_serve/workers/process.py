"""Spawning worker processes in their own process group, and ending the whole group.

Every worker runs as the leader of a new session (``start_new_session``), so a signal to the
group reaches whatever the worker forked. Its stdin is a pipe whose write end only the
supervisor holds: the worker-side guard (:mod:`mlx_serve.workers.guard`) kills its group when
that pipe closes, which is what happens when the supervisor dies, even by SIGKILL. That is how
no worker outlives its supervisor on Linux and macOS alike, without ``prctl`` tricks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlx_serve.files import warn_storage_once


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to spawn one worker process."""

    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)  # added to the supervisor's own
    cwd: Path | None = None


class WorkerProcess(Protocol):
    """A running worker process, as the lifecycle code sees it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker's whole process group; a gone group is not an error."""


class Launcher(Protocol):
    """Spawns worker processes; injected so lifecycle tests can use fakes."""

    async def launch(self, spec: LaunchSpec) -> WorkerProcess: ...


class _AsyncioWorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        code = await self._proc.wait()
        # The guard pipe is ours to close once the process is gone.
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        return code

    def signal_group(self, sig: int) -> None:
        # The worker is a session leader, so its pgid is its pid. After the leader has been
        # reaped, the group may still hold children it forked; they get the signal too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)


class SubprocessLauncher:
    """The real launcher: ``asyncio`` subprocess, new session, output appended to a log file."""

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        env = {**os.environ, **spec.env}
        with contextlib.ExitStack() as stack:
            try:
                spec.log_path.parent.mkdir(parents=True, exist_ok=True)
                out: Any = stack.enter_context(spec.log_path.open("ab"))
            except OSError as exc:
                # A full disk or unwritable data dir costs the log, not the model.
                warn_storage_once("worker logs", spec.log_path, exc)
                out = asyncio.subprocess.DEVNULL
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.PIPE,  # the guard pipe, see module docstring
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=spec.cwd,
            )
        return _AsyncioWorkerProcess(proc)


async def end_group(proc: WorkerProcess, grace: float) -> bool:
    """SIGTERM ``proc``'s group, wait up to ``grace`` seconds for it, then SIGKILL the group
    (always: children the worker forked must not survive it) and reap. True if the grace ran
    out, i.e. the worker ignored SIGTERM."""
    ignored = False
    if proc.returncode is None:
        proc.signal_group(SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            ignored = True
    proc.signal_group(SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await proc.wait()
    return ignored


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now. The worker binds it itself a moment later; if
    something else wins that race the worker exits and the start fails with its log."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def read_log_tail(path: Path, lines: int = 20, max_bytes: int = 16_384) -> str:
    """The last ``lines`` lines of a worker log, for error messages and crash events."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
