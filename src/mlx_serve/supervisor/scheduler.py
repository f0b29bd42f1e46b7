"""The swap scheduler: admits requests to ready workers, queues the rest, and serializes swaps.

One asyncio task (:meth:`Scheduler.run`) makes every decision. Request handlers call
:meth:`acquire` / :meth:`release`; anything that could change a decision wakes the loop,
which admits queued requests, then asks :func:`policy.next_action` for at most one start or
stop at a time. Because only that task starts or stops workers, two swaps can never overlap
and ``max_loaded_models`` cannot be exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlx_serve.supervisor import events as ev
from mlx_serve.supervisor import policy
from mlx_serve.supervisor.states import DOWN, WorkerState
from mlx_serve.supervisor.worker import WorkerStartError

if TYPE_CHECKING:
    from mlx_serve.supervisor.clock import Clock
    from mlx_serve.supervisor.events import EventBus
    from mlx_serve.supervisor.worker import ManagedWorker

S = WorkerState
log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than ``queue_limit`` allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many requests are waiting for a model (queue_limit={limit})")
        self.limit = limit


class ShuttingDown(Exception):
    """The server is stopping and admits nothing new."""


@dataclass(eq=False)
class _Waiter:
    model: str
    enqueued_at: float
    future: asyncio.Future[None] = field(repr=False)
    count: bool = True  # counts as a request (a preload does not)


class Scheduler:
    """Queues requests per model and decides which worker runs when."""

    def __init__(
        self,
        workers: dict[str, ManagedWorker],
        *,
        limits: policy.Limits,
        queue_limit: int,
        clock: Clock,
        events: EventBus,
        on_start_refused: Callable[[str, WorkerStartError], bool] = lambda _name, _exc: False,
    ) -> None:
        self.workers = workers
        # A start refused (files missing): True if that was taken care of (a pull began) and
        # the waiters stay queued, else they get the error.
        self._on_start_refused = on_start_refused
        self.limits = limits
        self.queue_limit = queue_limit
        self._clock = clock
        self._events = events
        self._queue: deque[_Waiter] = deque()
        self._wake = asyncio.Event()
        self._op: asyncio.Task[None] | None = None
        self._op_kind: type[policy.Start] | type[policy.Stop] | None = None
        self._closed = False
        self._contended: dict[str, int] = {}
        self._unloads: set[str] = set()  # operator unloads waiting for in-flight requests
        self.swaps = 0

    # ---------------------------------------------------------- request side

    @property
    def current_op(self) -> asyncio.Task[None] | None:
        """The start or stop in progress, if any (tests await it to let the loop settle)."""
        return self._op

    def waiting(self, model: str | None = None) -> int:
        return sum(1 for w in self._queue if model is None or w.model == model)

    async def acquire(self, name: str, *, count: bool = True) -> None:
        """Wait until ``name`` is READY and this request is admitted to it.

        Raises :class:`QueueFull`, :class:`ShuttingDown`, or the
        :class:`~mlx_serve.supervisor.worker.WorkerStartError` of a failed load. A caller
        cancelled while waiting leaves the queue; one that returns must call :meth:`release`.
        """
        if self._closed:
            raise ShuttingDown
        worker = self.workers[name]
        if (
            worker.state is S.READY
            and not self.waiting(name)
            and self._contended.get(name, 0) < self.limits.fair_requests
        ):
            self._admit(worker, count=count)
            return
        if len(self._queue) >= self.queue_limit:
            raise QueueFull(self.queue_limit)
        waiter = _Waiter(
            name, self._clock.now(), asyncio.get_running_loop().create_future(), count=count
        )
        self._queue.append(waiter)
        self.wake()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter in self._queue:
                self._queue.remove(waiter)  # the client went away while waiting
                self.wake()
            elif (
                waiter.future.done()
                and not waiter.future.cancelled()
                and waiter.future.exception() is None
            ):
                self.release(name)  # admitted in the same instant it was cancelled
            raise

    def release(self, name: str) -> None:
        """A request admitted by :meth:`acquire` has finished (successfully or not)."""
        worker = self.workers.get(name)
        if worker is None:  # removed by a reload while this request finished
            return
        worker.finish_request(self._clock.now())
        self.wake()

    def _admit(self, worker: ManagedWorker, *, count: bool = True) -> None:
        worker.admit(count=count)  # a preload holds the worker but is not a request
        if any(w.model != worker.name for w in self._queue):
            self._contended[worker.name] = self._contended.get(worker.name, 0) + 1
            self.wake()  # the fairness bound may now be reached

    # ------------------------------------------------------------- the loop

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Decide, then sleep until woken or until the next timer is due."""
        while True:
            self._wake.clear()
            try:
                self.step()
            except Exception:
                # One bad decision must not kill the loop: every later request would hang.
                log.exception("scheduler step failed")
            deadline = policy.next_deadline(self._views(), self.limits, self._clock.now())
            # A floor on the timeout: a deadline already past must not make this loop spin.
            timeout = None if deadline is None else max(0.01, deadline - self._clock.now())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the wake-up, and shutdown would then wait on this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def step(self) -> None:
        """Admit what can be admitted, then start at most one start/stop/drain."""
        self._admit_waiters()
        for name in list(self._unloads):
            worker = self.workers.get(name)
            if worker is None or worker.state in DOWN:
                # Stopped another way (a crash, a failed start): the request is void, or the
                # next load of this model would be drained straight away.
                self._unloads.discard(name)
        waiting_models = {w.model for w in self._queue}
        for name in list(self._contended):
            if not waiting_models - {name}:
                del self._contended[name]  # nobody else waits: the fairness count restarts
        if self._op is not None or self._closed:
            return
        action = policy.next_action(self._views(), self.limits, self._clock.now())
        if action is None:
            return
        if isinstance(action, policy.Refuse):
            target = self.workers[action.model]
            self._events.emit(
                ev.ModelRefused(
                    model=action.model,
                    reason=action.reason,
                    needed_bytes=target.footprint.planned_bytes,
                    budget_bytes=self.limits.budget_bytes,
                )
            )
            self.fail_waiters(
                action.model,
                WorkerStartError(action.model, action.reason, code="insufficient_memory"),
            )
            self.wake()
        elif isinstance(action, policy.Drain):
            self._events.emit(ev.WorkerDrain(model=action.model, for_model=action.for_model))
            self.workers[action.model].drain()
        elif isinstance(action, policy.Undrain):
            self.workers[action.model].undrain()
            self._contended.pop(action.model, None)
            self.wake()
        else:
            if isinstance(action, policy.Stop):
                # Drain now, synchronously: between this decision and the stop task's first
                # step, a new request must queue, not be admitted to a worker about to die.
                self.workers[action.model].drain()
                self._record_eviction(action)
            self._op_kind = type(action)
            self._op = asyncio.get_running_loop().create_task(self._run_op(action))

    def _record_eviction(self, action: policy.Stop) -> None:
        """A ``model.evicted`` event saying why this stop makes room, with the numbers."""
        if action.for_model is None and action.reason != "over_budget":
            return  # an idle timeout or an operator's unload is not an eviction
        views = self._views()
        victim = views[action.model]
        data: dict[str, object]
        if action.for_model is not None:
            room = policy.room_for(views, self.limits, views[action.for_model])
            reason = room.reason
            data = {
                "for_model": action.for_model,
                "needed_bytes": room.needed_bytes,
                "used_bytes": room.used_bytes,
                "free_bytes": room.free_bytes,
                "resident": room.resident,
            }
        else:
            used = sum(v.size_bytes for v in views.values() if v.state not in DOWN)
            reason, data = "over_budget", {"used_bytes": used}
        self._events.emit(
            ev.ModelEvicted(
                model=action.model,
                reason=reason,
                victim_bytes=victim.size_bytes,
                budget_bytes=self.limits.budget_bytes,
                max_loaded=self.limits.max_loaded,
                extra=data,
            )
        )

    def _admit_waiters(self) -> None:
        for waiter in list(self._queue):
            worker = self.workers.get(waiter.model)
            if worker is None:  # removed by a config reload while this request waited
                self._queue.remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(
                        WorkerStartError(waiter.model, "the model was removed from the config")
                    )
            elif waiter.future.done():
                self._queue.remove(waiter)
            elif worker.state is S.READY:
                self._queue.remove(waiter)
                self._admit(worker, count=waiter.count)
                waiter.future.set_result(None)

    def request_unload(self, name: str) -> None:
        """Unload ``name`` once its in-flight requests finish (queued ones will reload it)."""
        self._unloads.add(name)
        self.wake()

    async def force_stop(self, name: str, reason: str) -> None:
        """Stop ``name`` now, in-flight requests or not, serialized with every other op."""
        while self._op is not None:
            await asyncio.wait({self._op})
        self._op = asyncio.get_running_loop().create_task(self._run_op(policy.Stop(name, reason)))
        await asyncio.wait({self._op})

    async def _run_op(self, action: policy.Start | policy.Stop) -> None:
        try:
            worker = self.workers[action.model]
            if isinstance(action, policy.Stop):
                if action.for_model is not None:
                    self.swaps += 1
                    self._events.emit(ev.Swap(model=action.model, to=action.for_model))
                await worker.stop(action.reason)
                self._unloads.discard(action.model)
            else:
                self._contended.pop(action.model, None)
                try:
                    await worker.ensure_ready()
                except WorkerStartError as exc:
                    if not self._on_start_refused(action.model, exc):
                        self.fail_waiters(action.model, exc)
                except Exception as exc:
                    # A bug must not strand the waiters: they get a 503 naming it.
                    log.exception("starting %s failed", action.model)
                    self.fail_waiters(action.model, WorkerStartError(action.model, repr(exc)))
        finally:
            self._op = None
            self._op_kind = None
            self.wake()

    def fail_waiters(self, name: str, exc: BaseException) -> None:
        for waiter in list(self._queue):
            if waiter.model == name:
                self._queue.remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(exc)

    def _views(self) -> dict[str, policy.ModelView]:
        oldest: dict[str, float] = {}
        counts: dict[str, int] = {}
        for w in self._queue:
            oldest.setdefault(w.model, w.enqueued_at)
            counts[w.model] = counts.get(w.model, 0) + 1
        return {
            name: policy.ModelView(
                name=name,
                state=worker.state,
                inflight=worker.inflight,
                waiting=counts.get(name, 0),
                oldest_wait=oldest.get(name),
                last_used=worker.last_used,
                contended_admits=self._contended.get(name, 0),
                idle_timeout=worker.idle_timeout(),
                unload_requested=name in self._unloads,
                size_bytes=worker.footprint.planned_bytes,
                pinned=worker.model.pin,
                fetching=worker.pull_progress is not None,
            )
            for name, worker in self.workers.items()
        }

    # ------------------------------------------------------------- shutdown

    async def close(self) -> None:
        """Fail every waiter; cancel a running start, but let a running stop finish (a stop
        cut short would leave its process group signalled but never reaped)."""
        self._closed = True
        for waiter in list(self._queue):
            if not waiter.future.done():
                waiter.future.set_exception(ShuttingDown())
        self._queue.clear()
        if self._op is not None:
            if self._op_kind is policy.Start:
                self._op.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._op


__all__ = ["DOWN", "QueueFull", "Scheduler", "ShuttingDown"]
