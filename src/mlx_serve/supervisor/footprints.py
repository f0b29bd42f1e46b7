"""Estimating, measuring and remembering each worker's memory footprint.

The scheduler decides with :attr:`ManagedWorker.footprint`; this module keeps those figures
true: an estimate from the model's files when a model is added or its config changes (and
again while it is unloaded, so a model pulled meanwhile gets its real size), a measurement
of the worker's process tree right after it loads and every few seconds while it stays,
and the ledger in the data dir so the next run starts from what this one learned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from mlx_serve.observability.memory import tree_rss_bytes
from mlx_serve.residency.estimate import Estimate, estimate_model
from mlx_serve.supervisor import events as ev
from mlx_serve.supervisor.states import DOWN, RESIDENT

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig
    from mlx_serve.residency.ledger import FootprintLedger
    from mlx_serve.supervisor.events import Event, EventBus
    from mlx_serve.supervisor.worker import ManagedWorker

__all__ = ["SAMPLE_INTERVAL", "FootprintTracker", "measure"]

log = logging.getLogger(__name__)

#: Seconds between measurements of the loaded workers.
SAMPLE_INTERVAL = 5.0


def measure(pid: int | None, mlx_bytes: int | None = None) -> int | None:
    """A worker's footprint: its process tree's RSS, or what MLX says it holds if more.

    On Apple silicon MLX's buffers are GPU memory that RSS may not show in full; the workers
    that report MLX's counters (embedding, tts, stt) are measured by the larger figure.
    """
    rss = tree_rss_bytes(pid)
    if rss is None:
        return mlx_bytes
    return max(rss, mlx_bytes or 0)


class FootprintTracker:
    """Keeps every worker's :class:`~mlx_serve.residency.footprint.Footprint` current."""

    def __init__(
        self,
        workers: Mapping[str, ManagedWorker],
        ledger: FootprintLedger,
        events: EventBus,
        *,
        on_change: Callable[[], None] = lambda: None,
        sample: Callable[[int | None, int | None], int | None] = measure,
    ) -> None:
        self._workers = workers
        self.ledger = ledger
        self._events = events
        self._on_change = on_change
        self._sample = sample
        events.add_listener(self._on_event)

    # ------------------------------------------------------------- estimates

    def estimate(self, model: ModelConfig) -> Estimate:
        return estimate_model(model, self.ledger.overhead(model.type.value))

    def plan(self, worker: ManagedWorker, model: ModelConfig | None = None) -> None:
        """Estimate ``model`` (default: the one ``worker`` will start next) and apply it."""
        model = model or worker.pending_model or worker.model
        try:
            estimate: Estimate | None = self.estimate(model)
        except Exception:  # an estimate that fails must never block serving
            log.exception("estimating %s failed", worker.name)
            estimate = None
        self._apply(worker, model, estimate)

    def _apply(self, worker: ManagedWorker, model: ModelConfig, estimate: Estimate | None) -> None:
        learned = self.ledger.learned(worker.name, path=model.path, model_type=model.type.value)
        before = worker.footprint.planned_bytes
        worker.plan_footprint(estimate, learned)
        if worker.footprint.planned_bytes != before:
            self._on_change()

    async def refresh_unloaded(self) -> None:
        """Bring the estimates of unloaded models up to date: the per-type overhead a load has
        learned meanwhile (no I/O), and, for models whose files were missing (a hub repo not
        pulled yet), the files themselves, read off the event loop."""
        todo = []
        for worker in self._workers.values():
            if worker.state not in DOWN:
                continue
            model = worker.pending_model or worker.model
            estimate = worker.footprint.estimate
            if estimate is None or estimate.weights_bytes is None:
                todo.append((worker, model))
                continue
            overhead = self.ledger.overhead(model.type.value)
            if overhead is not None and overhead != estimate.overhead_bytes:
                self._apply(worker, model, replace(estimate, overhead_bytes=overhead))
        if not todo:
            return
        estimates = await asyncio.to_thread(lambda: [self._safe_estimate(m) for _, m in todo])
        for (worker, model), estimate in zip(todo, estimates, strict=True):
            current = worker.pending_model or worker.model
            if self._workers.get(worker.name) is worker and current is model:
                self._apply(worker, model, estimate)

    def _safe_estimate(self, model: ModelConfig) -> Estimate | None:
        try:
            return self.estimate(model)
        except Exception:
            return None

    # ---------------------------------------------------------- measurements

    def sample_loaded(self) -> None:
        """Measure every loaded worker once."""
        changed = False
        for worker in list(self._workers.values()):
            if worker.state not in RESIDENT or worker.pid is None:
                continue
            value = self._sample(worker.pid, None)
            if value is None:
                continue
            before = worker.footprint.planned_bytes
            worker.record_footprint(value)
            changed |= worker.footprint.planned_bytes != before
        if changed:
            self._on_change()

    async def run(
        self, interval: float = SAMPLE_INTERVAL, also: Callable[[], None] = lambda: None
    ) -> None:
        """Measure loaded workers and re-estimate unloaded ones, every ``interval`` seconds
        (and call ``also``: the supervisor measures its spares then)."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.sample_loaded()
                also()
                await self.refresh_unloaded()
            except Exception:
                log.exception("measuring model footprints failed")

    def _on_event(self, event: Event) -> None:
        worker = self._workers.get(event.model or "")
        if worker is None:
            return
        if isinstance(event, ev.ModelLoaded):
            self._loaded(worker, event.extra)
        elif isinstance(event, ev.ModelUnloaded | ev.WorkerCrashed):
            self._unloaded(worker)

    def _loaded(self, worker: ManagedWorker, details: Mapping[str, object]) -> None:
        mlx = details.get("mlx_peak_bytes")
        value = self._sample(worker.pid, mlx if isinstance(mlx, int) else None)
        if value is None:
            return
        worker.record_footprint(value)
        estimate = worker.footprint.estimate
        if estimate is not None and estimate.weights_bytes is not None:
            # What this process needs beyond its weights refines every estimate of its type.
            self.ledger.record_overhead(worker.model.type.value, value - estimate.weights_bytes)
        self._remember(worker)
        self._events.emit(
            ev.ModelFootprint(
                model=worker.name,
                measured_bytes=value,
                estimate_bytes=estimate.total_bytes if estimate is not None else None,
                planned_bytes=worker.footprint.planned_bytes,
            )
        )
        self._on_change()

    def _unloaded(self, worker: ManagedWorker) -> None:
        if worker.footprint.learned_bytes is not None:
            self._remember(worker)

    def _remember(self, worker: ManagedWorker) -> None:
        figure = worker.footprint.peak_bytes or worker.footprint.learned_bytes
        if figure is None:
            return
        model = worker.model
        self.ledger.record_peak(
            worker.name, path=model.path, model_type=model.type.value, peak_bytes=figure
        )
        self._save_soon()

    def _save_soon(self) -> None:
        """Write the ledger off the event loop (a slow disk must not stall requests)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.ledger.save()
            return
        task = loop.create_task(asyncio.to_thread(self.ledger.write, self.ledger.snapshot()))
        task.add_done_callback(_log_failure)

    def close(self) -> None:
        self._events.remove_listener(self._on_event)
        with contextlib.suppress(Exception):
            self.ledger.save()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("saving model footprints failed: %r", task.exception())
