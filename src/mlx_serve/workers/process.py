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
import re
import signal
import socket
import subprocess
import threading
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


class _GroupLeader:
    """What every real worker process shares: it leads its own session, and its stdin is the
    guard pipe (module docstring), ours to close once it is gone."""

    def __init__(self, pid: int, guard_pipe: Any) -> None:
        self._pid = pid
        self._guard_pipe = guard_pipe

    @property
    def pid(self) -> int:
        return self._pid

    async def _exit(self) -> int:
        raise NotImplementedError

    async def wait(self) -> int:
        code = await self._exit()
        if self._guard_pipe is not None:
            self._guard_pipe.close()
        return code

    def signal_group(self, sig: int) -> None:
        # The worker is a session leader, so its pgid is its pid. After the leader has been
        # reaped, the group may still hold children it forked; they get the signal too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, sig)


class _AsyncioWorkerProcess(_GroupLeader):
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__(proc.pid, proc.stdin)
        self._proc = proc

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def _exit(self) -> int:
        return await self._proc.wait()


class _SpawnedWorkerProcess(_GroupLeader):
    """A worker spawned by :class:`SubprocessLauncher`: its exit is awaited through a thread
    of its own that reaps it (one per worker; it sleeps in ``waitpid``)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(proc.pid, proc.stdin)
        self._proc = proc
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        threading.Thread(
            target=self._reap, args=(loop,), name=f"reap-{proc.pid}", daemon=True
        ).start()

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        code = self._proc.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self._set_exited, code)

    def _set_exited(self, code: int) -> None:
        if not self._exited.done():
            self._exited.set_result(code)

    @property
    def returncode(self) -> int | None:
        # As the loop has seen it (not the reaping thread), like asyncio's Process.
        return self._exited.result() if self._exited.done() else None

    async def _exit(self) -> int:
        return await asyncio.shield(self._exited)


class SubprocessLauncher:
    """The real launcher: a new session, output appended to a log file, spawned off the loop.

    Why a thread: ``fork``/``exec`` blocks the calling thread until the child has exec'd,
    and on a busy machine the child may wait a while for a CPU; spawned on the event loop
    (``asyncio.create_subprocess_exec``), that held every stream the router was relaying
    (131 ms measured under a CI run's load).
    """

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        env = {**os.environ, **spec.env}
        out: Any = subprocess.DEVNULL
        try:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = spec.log_path.open("ab")
        except OSError as exc:
            # A full disk or unwritable data dir costs the log, not the model.
            warn_storage_once("worker logs", spec.log_path, exc)
        spawn = asyncio.ensure_future(
            asyncio.to_thread(
                subprocess.Popen,
                list(spec.argv),
                stdin=subprocess.PIPE,  # the guard pipe, see module docstring
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=spec.cwd,
            )
        )
        if out is not subprocess.DEVNULL:
            # Ours is closed once the child has its copy, not before (even if cancelled).
            spawn.add_done_callback(lambda _: out.close())
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelled mid-spawn: the process still comes; it must not outlive this.
            spawn.add_done_callback(_end_unwanted)
            raise
        return _SpawnedWorkerProcess(proc)


def _end_unwanted(spawn: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    """SIGKILL the group of a worker whose launch was cancelled (its thread reaps it)."""
    if spawn.cancelled() or spawn.exception() is not None:
        return
    proc = spawn.result()
    _SpawnedWorkerProcess(proc).signal_group(SIGKILL)
    if proc.stdin is not None:
        proc.stdin.close()


async def end_group(
    proc: WorkerProcess | asyncio.subprocess.Process, grace: float, *, term: bool = True
) -> bool:
    """SIGTERM ``proc``'s group (unless ``term`` is False), wait up to ``grace`` seconds for
    it, then SIGKILL the group (always: children the worker forked must not survive it) and
    reap. True if the grace ran out, i.e. the worker ignored SIGTERM. An
    :class:`asyncio.subprocess.Process` must lead its own session (``start_new_session``)."""
    if isinstance(proc, asyncio.subprocess.Process):
        proc = _AsyncioWorkerProcess(proc)
    ignored = False
    if term and proc.returncode is None:
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


def end_group_sync(proc: subprocess.Popen[Any], grace: float, *, term: bool = True) -> bool:
    """:func:`end_group` for a :class:`subprocess.Popen` that leads its own process group
    (``start_new_session=True``), for code without an event loop (benchmarks, tests, the
    hub's download child): SIGTERM the group (unless ``term`` is False), wait up to
    ``grace``, SIGKILL the group (always: whatever the leader forked must go too) and reap.
    True if the grace ran out."""
    ignored = False
    if term and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            ignored = True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return ignored


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now. The worker binds it itself a moment later; if
    something else wins that race the worker exits and the start fails with its log."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def read_log_tail(path: Path, lines: int = 20, max_bytes: int = 65_536) -> str:
    """The last lines of a worker log that say something, for error messages and crash events:
    see :func:`relevant_tail`."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return relevant_tail(data.decode("utf-8", errors="replace"), lines)


#: The line the supervisor writes into a worker's log before each start (and a spare's).
RUN_HEADER = "=== mlx-serve:"
_TRACEBACK = "Traceback (most recent call last):"
#: Progress bars (tqdm's "Fetching 9 files:  44%|####4     | 4/9 [00:01<00:02, 2.1it/s]",
#: and its total-less "12it [00:03, 3.9it/s]"): the log's most common noise.
_PROGRESS_BAR = re.compile(
    r"\d{1,3}%\|"  # "44%|"
    r"|\[\d+:\d{2}(?::\d{2})?<"  # "[00:01<", elapsed<remaining
    r"|\d(?:it|B|kB|MB|GB)?/s\]$"  # "2.1it/s]" at the end
)
#: HTTP access-log lines (mlx_lm's http.server, uvicorn, aiohttp): one per request, never
#: why a worker died.
_ACCESS_LOG = re.compile(r'"(?:GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH) \S+ HTTP/[\d.]+" \d{3}\b')
#: Lines kept after a traceback's exception line (what the worker said once it had failed).
_AFTER_TRACEBACK = 5


def relevant_tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a worker's output that matter for why it failed.

    Only the latest run counts (the output after the last :data:`RUN_HEADER`; the header
    itself is left out). Blank lines, progress bars and HTTP access-log lines are dropped:
    the last line of a log is most often one of those, and never the reason. When the output
    holds a Python traceback, its end is what is kept (the innermost frames and the
    exception), with at most a few lines that came after it, even if more lines followed.
    """
    run = text.rsplit(RUN_HEADER, 1)
    if len(run) == 2:
        text = run[1].split("\n", 1)[1] if "\n" in run[1] else ""
    kept: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip().rsplit("\r", 1)[-1].rstrip()  # what a terminal would show last
        if not line.strip() or _PROGRESS_BAR.search(line) or _ACCESS_LOG.search(line):
            continue
        kept.append(line)
    start = next((i for i in range(len(kept) - 1, -1, -1) if kept[i].startswith(_TRACEBACK)), None)
    if start is None or lines < 2 * _AFTER_TRACEBACK:
        return "\n".join(kept[-lines:]) if lines > 0 else ""
    # The exception line ends the traceback: the first line after it that is not indented.
    end = next((i for i in range(start + 1, len(kept)) if not kept[i][:1].isspace()), len(kept) - 1)
    after = kept[end + 1 :]
    if len(after) > _AFTER_TRACEBACK:
        after = ["...", *after[-(_AFTER_TRACEBACK - 1) :]]
    room = lines - len(after)  # at least _AFTER_TRACEBACK
    block = kept[start : end + 1]
    if len(block) > room:  # its header, then its innermost frames and the exception
        block = [block[0], "  ...", *block[-(room - 2) :]]
    else:  # room to spare: what the worker said before it
        block = kept[max(0, start - (room - len(block))) : start] + block
    return "\n".join(block + after)


def describe_exit(code: int | None) -> str:
    """How a process ended, as a verb phrase after its subject: "exited with code 3", or "was
    killed by SIGKILL" (asyncio reports a death by signal as the negative signal number)."""
    if code is None:
        return "ended (its exit status is unknown)"
    name = exit_signal(code)
    return f"was killed by {name}" if name is not None else f"exited with code {code}"


def exit_signal(code: int | None) -> str | None:
    """The name of the signal that ended a process (``"SIGKILL"``), or None."""
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
