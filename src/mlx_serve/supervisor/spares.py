"""Pre-warmed spare workers: one process per kind with its imports done and no model.

Most of a swap is Python importing mlx_lm / transformers / mlx-audio, not loading weights. A
spare pays that in advance: when a model of its kind must start, its worker adopts the spare
(same process, same port) and only the load remains. The pool then starts a replacement, but
only once no start or stop is in progress, so the replacement's imports never compete with
a load for the CPU.

A spare is not a loaded model: it is never listed as one, never admitted a request, and it
holds no weights. Its memory is reported, and counted against the memory budget when one is
set. A spare that dies is simply replaced (after a pause that grows with each failure in a
row, and not at all after :data:`MAX_FAILURES` failures, until the config changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from mlx_serve.files import append_line
from mlx_serve.observability.memory import tree_rss_bytes
from mlx_serve.supervisor import events as ev
from mlx_serve.workers.base import SpareContext, SpareDriver, spare_support
from mlx_serve.workers.process import (
    SIGKILL,
    describe_exit,
    end_group,
    free_port,
    read_log_tail,
)

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig, ModelType
    from mlx_serve.supervisor.clock import Clock
    from mlx_serve.supervisor.events import EventBus
    from mlx_serve.workers.process import Launcher, WorkerProcess

__all__ = ["MAX_FAILURES", "Spare", "SparePool"]

log = logging.getLogger(__name__)

#: Consecutive failed spare starts of one kind before the pool stops trying.
MAX_FAILURES = 3
#: Seconds a spare may take to finish its imports.
SPARE_TIMEOUT = 120.0
POLL = 0.05


@dataclass(eq=False)
class Spare:
    """One spare process."""

    kind: ModelType
    proc: WorkerProcess
    port: int
    host: str
    log_path: Path
    started_at: float  # wall clock
    ready: bool = False
    taken: bool = False
    rss_bytes: int | None = None
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "pid": self.proc.pid,
            "port": self.port,
            "status": "spare" if self.ready else "starting",
            "rss_bytes": self.rss_bytes,
            "started_at": round(self.started_at, 3),
        }


class SparePool:
    """Keeps one spare per wanted kind; hands them to workers that start."""

    def __init__(
        self,
        drivers: Mapping[ModelType, object],
        *,
        launcher: Launcher,
        clock: Clock,
        events: EventBus,
        log_dir: Path,
        host: str = "127.0.0.1",
        may_start: Callable[[], bool] = lambda: True,
        on_change: Callable[[], None] = lambda: None,
        stop_timeout: float = 5.0,
    ) -> None:
        self._drivers: dict[ModelType, SpareDriver] = {}
        for kind, driver in drivers.items():
            supported = spare_support(driver)
            if supported is not None:
                self._drivers[kind] = supported
        self._launcher = launcher
        self._clock = clock
        self._events = events
        self._log_dir = log_dir
        self._host = host
        self._may_start = may_start
        self._on_change = on_change
        self.stop_timeout = stop_timeout
        self.wanted: set[ModelType] = set()
        self.spares: dict[ModelType, Spare] = {}
        self._failures: dict[ModelType, int] = {}
        self._retry_at: dict[ModelType, float] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # ----------------------------------------------------------------- views

    def supports(self, kind: ModelType) -> bool:
        return kind in self._drivers

    def reserved_bytes(self, default: Mapping[ModelType, int]) -> int:
        """Memory the spares hold (measured, else the kind's default overhead)."""
        return sum(s.rss_bytes or default.get(s.kind, 0) for s in self.spares.values())

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.spares.values()]

    def sample(self) -> None:
        for spare in self.spares.values():
            if spare.ready:
                spare.rss_bytes = tree_rss_bytes(spare.proc.pid) or spare.rss_bytes

    # ------------------------------------------------------------------ verbs

    def configure(self, kinds: set[ModelType]) -> None:
        """Keep spares of ``kinds`` (those this pool can run); retire the others."""
        self.wanted = {k for k in kinds if k in self._drivers}
        self._failures.clear()  # a new config deserves a new try
        self._retry_at.clear()
        for kind in list(self.spares):
            if kind not in self.wanted:
                self._retire(self.spares.pop(kind), "not wanted any more")
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def take(self, model: ModelConfig) -> Spare | None:
        """A ready spare that can become ``model``'s worker, now owned by the caller."""
        driver = self._drivers.get(model.type)
        spare = self.spares.get(model.type)
        if driver is None or spare is None or not spare.ready or not driver.can_adopt(model):
            return None
        if spare.proc.returncode is not None:
            return None  # died a moment ago; its watcher replaces it
        del self.spares[model.type]
        spare.taken = True
        if spare.watcher is not None:
            spare.watcher.cancel()
        self._events.emit(ev.SpareTaken(model=model.type.value, pid=spare.proc.pid, by=model.path))
        self._on_change()
        self.wake()
        return spare

    def driver(self, kind: ModelType) -> SpareDriver | None:
        return self._drivers.get(kind)

    # ------------------------------------------------------------------- loop

    async def run(self) -> None:
        """Start missing spares one at a time, whenever starting one is allowed."""
        while not self._closed:
            self._wake.clear()
            kind = self._next_kind()
            if kind is not None and self._may_start():
                await self._start(kind)
                continue
            with contextlib.suppress(TimeoutError):
                # Woken by changes; the timeout also retries a kind after a failure pause.
                async with asyncio.timeout(1.0):
                    await self._wake.wait()

    def _next_kind(self) -> ModelType | None:
        now = self._clock.now()
        for kind in sorted(self.wanted, key=lambda k: k.value):
            if (
                kind not in self.spares
                and self._failures.get(kind, 0) < MAX_FAILURES
                and self._retry_at.get(kind, 0.0) <= now
            ):
                return kind
        return None

    async def _start(self, kind: ModelType) -> None:
        driver = self._drivers[kind]
        port = free_port(self._host)
        log_path = self._log_dir / f"spare-{kind.value}.log"
        ctx = SpareContext(host=self._host, port=port, log_path=log_path, python=sys.executable)
        try:
            spec = driver.spare_spec(ctx)
            header = f"\n=== mlx-serve: spare {kind.value}: {' '.join(spec.argv)}\n"
            append_line(log_path, header, what="worker logs")
            proc = await self._launcher.launch(spec)
        except OSError as exc:
            self._failed(kind, f"could not spawn a spare: {exc}")
            return
        spare = Spare(kind, proc, port, self._host, log_path, self._clock.wall())
        self.spares[kind] = spare
        spare.watcher = asyncio.get_running_loop().create_task(
            self._watch(spare), name=f"spare-{kind.value}"
        )
        self._events.emit(ev.SpareStarting(model=kind.value, pid=proc.pid))
        started = self._clock.now()
        while not spare.ready:
            if spare.taken or self.spares.get(kind) is not spare or proc.returncode is not None:
                return  # died (the watcher reported it) or retired meanwhile
            if self._clock.now() - started > SPARE_TIMEOUT:
                self.spares.pop(kind, None)
                self._retire(spare, "not ready in time")
                self._failed(kind, f"not ready after {SPARE_TIMEOUT:g}s")
                return
            if await driver.spare_ready(self._http(), spare.base_url, SPARE_TIMEOUT):
                spare.ready = True
                break
            await asyncio.sleep(POLL)
        self._failures.pop(kind, None)
        self._retry_at.pop(kind, None)
        spare.rss_bytes = tree_rss_bytes(proc.pid)
        self._events.emit(
            ev.SpareReady(
                model=kind.value,
                pid=proc.pid,
                duration_s=round(self._clock.now() - started, 3),
                rss_bytes=spare.rss_bytes,
            )
        )
        self._on_change()

    async def _watch(self, spare: Spare) -> None:
        code = await spare.proc.wait()
        if spare.taken or self._closed:
            return
        if self.spares.get(spare.kind) is spare:
            del self.spares[spare.kind]
        spare.proc.signal_group(SIGKILL)
        self._failed(spare.kind, f"the spare {describe_exit(code)}", read_log_tail(spare.log_path))
        self._on_change()
        self.wake()

    def _failed(self, kind: ModelType, reason: str, log_tail: str = "") -> None:
        self._failures[kind] = self._failures.get(kind, 0) + 1
        self._retry_at[kind] = self._clock.now() + 2.0 ** self._failures[kind]
        self._events.emit(
            ev.SpareFailed(
                model=kind.value,
                reason=reason,
                failures=self._failures[kind],
                gave_up=self._failures[kind] >= MAX_FAILURES,
                log_tail=log_tail,
            )
        )

    def _retire(self, spare: Spare, reason: str) -> None:
        spare.taken = True  # its exit is expected now
        if spare.watcher is not None:
            spare.watcher.cancel()
        self._events.emit(
            ev.SpareStopped(model=spare.kind.value, pid=spare.proc.pid, reason=reason)
        )
        asyncio.get_running_loop().create_task(self._kill(spare.proc))

    async def _kill(self, proc: WorkerProcess) -> None:
        """SIGTERM the group, a short grace (a spare holds nothing), then SIGKILL; reap."""
        await end_group(proc, self.stop_timeout)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Stop every spare and wait for their process groups to exit."""
        self._closed = True
        self.wake()
        spares = list(self.spares.values())
        self.spares.clear()
        for spare in spares:
            spare.taken = True
            if spare.watcher is not None:
                spare.watcher.cancel()
        await asyncio.gather(*(self._kill(s.proc) for s in spares), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
