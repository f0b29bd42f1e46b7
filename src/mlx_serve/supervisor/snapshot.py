"""A frozen picture of one worker, for everything that reports on it (router, metrics, CLI).

Readers outside the supervisor used to reach into :class:`ManagedWorker` and map its state
to a status name themselves, twice differently (a draining model was "loaded" in
``/v1/models`` and "draining" in ``/api/models``). A :class:`WorkerView` is taken in one step
on the event loop, so its fields agree with each other, and carries the one status name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlx_serve.supervisor.states import RESIDENT, STATUS, WorkerState

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig
    from mlx_serve.residency import Footprint
    from mlx_serve.supervisor.clock import Clock
    from mlx_serve.supervisor.worker import ManagedWorker


@dataclass(frozen=True)
class WorkerView:
    """One worker as it is at the moment the view was taken."""

    name: str
    model: ModelConfig
    state: WorkerState
    pid: int | None
    port: int | None
    """The worker's port while a process may exist, else None."""
    error: str | None
    """Why it failed, while it is failed."""
    loaded_at: float | None
    """Wall-clock time the current load became ready."""
    last_used_at: float | None
    """Wall-clock time its last request finished (None before the first one)."""
    idle_timeout_s: float
    """The idle timeout in force (``keep_alive`` included); negative = never."""
    idle_expires_in_s: float | None
    """Seconds until the idle timer unloads it, counted as if it went idle now when requests
    are in flight; None when it never expires."""
    keep_alive_s: float | None
    requests: int
    inflight: int
    waiting: int
    pull: dict[str, Any] | None
    footprint: Footprint

    @property
    def status(self) -> str:
        """The state's one public name: unloaded, loading, loaded, draining, unloading, failed."""
        return STATUS[self.state]

    @property
    def resident(self) -> bool:
        """A process may exist for it (it counts against the loaded-model limits)."""
        return self.state in RESIDENT

    @property
    def unloads_in_s(self) -> float | None:
        """Seconds until the idle timer unloads it, while it is ready with nothing in flight
        (the timer runs only then); else None."""
        if self.state is WorkerState.READY and self.inflight == 0:
            return self.idle_expires_in_s
        return None

    @property
    def loaded(self) -> bool:
        """It answers requests (ready, or draining the ones it has)."""
        return self.state in (WorkerState.READY, WorkerState.DRAINING)


def view_of(worker: ManagedWorker, clock: Clock, waiting: int = 0) -> WorkerView:
    """Take a :class:`WorkerView` of ``worker`` now."""
    now, wall = clock.now(), clock.wall()
    timeout = worker.idle_timeout()
    expires_in = None
    if timeout >= 0:
        idle_since = worker.last_used if worker.inflight == 0 else now
        expires_in = max(0.0, idle_since + timeout - now)
    resident = worker.state in RESIDENT
    return WorkerView(
        name=worker.name,
        model=worker.model,
        state=worker.state,
        pid=worker.pid,
        port=worker.port if resident else None,
        error=worker.last_error if worker.state is WorkerState.FAILED else None,
        loaded_at=worker.loaded_at,
        last_used_at=wall - (now - worker.last_used) if worker.requests_total else None,
        idle_timeout_s=timeout,
        idle_expires_in_s=expires_in,
        keep_alive_s=worker.keep_alive,
        requests=worker.requests_total,
        inflight=worker.inflight,
        waiting=waiting,
        pull=worker.pull_progress,
        footprint=worker.footprint,
    )
