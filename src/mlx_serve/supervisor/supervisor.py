"""The supervisor: every managed worker, the scheduler that swaps them, and their events.

This is the one object the router talks to. It parses no HTTP: the router hands it a model
name and an optional keep_alive in seconds, and gets back a lease on a ready worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_serve.observability.memory import load_refusal, system_memory
from mlx_serve.residency import Budget, FootprintLedger, resolve_budget
from mlx_serve.residency.estimate import DEFAULT_OVERHEAD
from mlx_serve.supervisor import events as ev
from mlx_serve.supervisor.clock import Clock, MonotonicClock
from mlx_serve.supervisor.events import EventBus
from mlx_serve.supervisor.footprints import SAMPLE_INTERVAL, FootprintTracker
from mlx_serve.supervisor.footprints import measure as measure_footprint
from mlx_serve.supervisor.policy import Limits
from mlx_serve.supervisor.pulls import AutoPuller, PullFn
from mlx_serve.supervisor.scheduler import Scheduler
from mlx_serve.supervisor.snapshot import WorkerView, view_of
from mlx_serve.supervisor.spares import SparePool
from mlx_serve.supervisor.states import RESIDENT, WorkerState
from mlx_serve.supervisor.worker import ManagedWorker, ModelFilesMissing, WorkerStartError
from mlx_serve.workers.process import Launcher, SubprocessLauncher
from mlx_serve.workers.registry import default_drivers

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mlx_serve.config import Config, ModelConfig, ModelType, ServerConfig
    from mlx_serve.hub.cache import MissingFiles
    from mlx_serve.workers.base import WorkerDriver


@dataclass(frozen=True)
class Lease:
    """A request's hold on a ready worker, from admission until the response is finished.

    What the proxy needs to know about the worker, and nothing it could change: where to
    send, which model id to send, whether the worker is still there, and why not.
    """

    _worker: ManagedWorker
    queued_s: float  # time spent waiting for admission, including any swap

    @property
    def base_url(self) -> str:
        return self._worker.base_url

    @property
    def upstream_model(self) -> str:
        return self._worker.upstream_model

    @property
    def alive(self) -> bool:
        """The worker still answers (ready, or draining what it admitted)."""
        return self._worker.state in (WorkerState.READY, WorkerState.DRAINING)

    @property
    def why_gone(self) -> str | None:
        """Why the worker failed (its crash or start error), if it did."""
        return self._worker.last_error

    @property
    def ready_since(self) -> float:
        """When (supervisor clock) the current process became ready."""
        return self._worker.ready_since


def limits_for(server: ServerConfig, budget: Budget | None, reserved_bytes: int = 0) -> Limits:
    """The scheduler's limits for these server settings; ``reserved_bytes`` (spare workers)
    come off the budget."""
    return Limits(
        max_loaded=server.loaded_cap,
        fair_wait=server.fair_wait,
        fair_requests=server.fair_requests,
        budget_bytes=max(0, budget.bytes - reserved_bytes) if budget is not None else None,
    )


class Supervisor:
    """Owns the workers; hands out leases on them.

    Before a model starts, its files must be on disk (:meth:`check_files`), for the drivers
    of :func:`~mlx_serve.workers.registry.default_drivers`. A driver given in ``drivers``
    (a test's fake, an embedder's own) is trusted to need none unless it has a true
    ``needs_model_files`` attribute. ``pull`` replaces :func:`mlx_serve.hub.pull` for
    ``server.auto_pull`` (tests).
    """

    def __init__(
        self,
        config: Config,
        *,
        data_dir: Path,
        launcher: Launcher | None = None,
        drivers: Mapping[ModelType, WorkerDriver] | None = None,
        clock: Clock | None = None,
        sample_interval: float = SAMPLE_INTERVAL,
        measure: Callable[[int | None, int | None], int | None] = measure_footprint,
        pull: PullFn | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.clock = clock or MonotonicClock()
        self.events = EventBus(self.clock.wall)
        self._launcher = launcher or SubprocessLauncher()
        # Drivers given here (tests, embedders) replace the defaults type by type.
        self._drivers = {**default_drivers(), **(drivers or {})}
        self._files_checked = {
            kind
            for kind, driver in self._drivers.items()
            if getattr(driver, "needs_model_files", kind not in (drivers or {}))
        }
        self.started_at = self.clock.wall()
        self.workers: dict[str, ManagedWorker] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._sampler_task: asyncio.Task[None] | None = None
        self.budget = self.resolve_budget(config)
        self.footprints = FootprintTracker(
            self.workers,
            FootprintLedger(data_dir / "footprints.json"),
            self.events,
            on_change=self._on_worker_change,
            sample=measure,
        )
        self._sample_interval = sample_interval
        self.spares = SparePool(
            self._drivers,
            launcher=self._launcher,
            clock=self.clock,
            events=self.events,
            log_dir=data_dir / "logs",
            may_start=self._spare_may_start,
            on_change=self._on_spares_change,
            stop_timeout=min(config.server.stop_timeout, 5.0),
        )
        self._spare_task: asyncio.Task[None] | None = None
        self._liveness_task: asyncio.Task[None] | None = None
        self.pulls = AutoPuller(
            events=self.events,
            clock=self.clock,
            on_success=self._pulled,
            on_failure=self._pull_failed,
            pull=pull,
        )
        for name, model in config.models.items():
            self.add_worker(name, model)
        server = config.server
        self.scheduler = Scheduler(
            self.workers,
            limits=limits_for(server, self.budget),
            queue_limit=server.queue_limit,
            clock=self.clock,
            events=self.events,
            on_start_refused=self._start_refused,
        )

        self.reload_lock = asyncio.Lock()  # one config reload at a time

    def add_worker(self, name: str, model: ModelConfig) -> ManagedWorker:
        """Manage a new model (stopped until a request needs it)."""
        worker = ManagedWorker(
            name,
            model,
            self.config.server,
            driver=self._drivers[model.type],
            launcher=self._launcher,
            clock=self.clock,
            events=self.events,
            log_dir=self.data_dir / "logs",
            on_change=self._on_worker_change,
            preflight=self._memory_preflight,
            files_check=self._missing_files,
            spares=self.spares,
        )
        self.workers[name] = worker
        self.footprints.plan(worker)
        return worker

    @staticmethod
    def resolve_budget(config: Config) -> Budget | None:
        """``server.memory_budget`` in bytes on this machine (None: count models instead)."""
        return resolve_budget(config.server.memory_budget, total_bytes=system_memory().total_bytes)

    def set_budget(self, budget: Budget | None) -> None:
        """Plan with a new budget (a reload changed it); decisions follow at once."""
        self.budget = budget
        self.refresh_limits()

    def refresh_limits(self) -> None:
        """Recompute the scheduler's limits (settings, budget, spares) and let it act."""
        reserved = self.spares.reserved_bytes(DEFAULT_OVERHEAD)
        self.scheduler.limits = limits_for(self.config.server, self.budget, reserved)
        self.scheduler.wake()

    def configure_spares(self) -> None:
        """Keep spares of the kinds ``server.prewarm`` asks for (models.yaml may have changed)."""
        used = set()
        for worker in self.workers.values():
            driver = self.spares.driver(worker.model.type)
            if driver is not None and driver.can_adopt(worker.pending_model or worker.model):
                used.add(worker.model.type)  # a spare nobody could adopt would only hold memory
        self.spares.configure(self.config.server.prewarm_kinds(used))

    def _spare_may_start(self) -> bool:
        """A spare's imports must not compete with a load or a stop for the CPU."""
        return self.scheduler.current_op is None and not any(
            w.state in (WorkerState.STARTING, WorkerState.STOPPING) for w in self.workers.values()
        )

    def _on_spares_change(self) -> None:
        if self._loop_task is not None:
            self.refresh_limits()

    async def remove_worker(self, name: str) -> None:
        """Stop managing ``name``: queued requests fail, in-flight ones finish, then it stops."""
        self.scheduler.fail_waiters(
            name, WorkerStartError(name, "the model was removed from the config")
        )
        await self.pulls.cancel(name, "the model was removed from the config")
        await self.unload(name)
        # Requests that queued while it drained (the router resolved the name before the
        # reload) get the same answer instead of waiting on a model that is gone.
        self.scheduler.fail_waiters(
            name, WorkerStartError(name, "the model was removed from the config")
        )
        worker = self.workers.pop(name, None)
        if worker is not None:
            await worker.close()

    def _memory_preflight(self, model: ModelConfig) -> str | None:
        """Refuse a load whose weights clearly exceed the memory available now."""
        if not self.config.server.memory_guard:
            return None
        try:
            from mlx_serve.hub import estimated_size_bytes  # noqa: PLC0415 - only at load time

            estimate = estimated_size_bytes(model.path)
        except Exception:  # an estimate that fails must never block a load
            return None
        return load_refusal(estimate, system_memory().available_bytes)

    # ------------------------------------------------------------ model files

    def _missing_files(self, model: ModelConfig) -> MissingFiles | None:
        """What ``model`` lacks on disk to start, or None (also when it is not checked)."""
        if model.type not in self._files_checked:
            return None
        try:
            from mlx_serve.hub import check_model_files  # noqa: PLC0415 - only when starting

            return check_model_files(model.path)
        except Exception:  # a check that fails must never block a start
            log.exception("checking the files of %s failed", model.path)
            return None

    async def check_files(self, name: str) -> None:
        """Before a request waits for ``name``: are its files there to start it?

        Yes (or it runs already, or they are being pulled): return. A hub repo not in the
        cache with ``server.auto_pull``: start pulling it, and return (the request waits in
        the queue for the pull, then the start). Otherwise raise :class:`ModelFilesMissing`
        at once: no worker is started for files that are not there, and it is no crash.
        """
        worker = self.workers[name]

        def settled() -> bool:
            return (
                worker.state is WorkerState.READY
                or worker.files_busy is not None  # being deleted: the start refuses, saying so
                or self.pulls.pulling(name)
            )

        if settled():
            return
        missing = await asyncio.to_thread(worker.missing_files)  # off the loop: it stats files
        # Asked again: while the disk was read, the model may have started or a pull begun.
        if missing is None or settled() or self._auto_pull(worker, missing):
            return
        error = ModelFilesMissing(name, missing)
        self.events.emit(
            ev.ModelMissingFiles(
                model=name, reason=error.reason, code=missing.code,
                path=str(missing.path) if missing.path else None, repo=missing.repo_id,
            )
        )  # fmt: skip
        raise error

    def _auto_pull(self, worker: ManagedWorker, missing: MissingFiles) -> bool:
        """Pull what ``worker`` lacks if ``server.auto_pull`` says so; True if it began."""
        if missing.repo_id is None or not self.config.server.auto_pull:
            return False
        self.pulls.start(worker, missing.repo_id)
        return True

    def _start_refused(self, name: str, exc: WorkerStartError) -> bool:
        """A queued start found the files missing (deleted, or the path changed by a reload
        since the request queued): pull them if allowed, keeping its waiters queued."""
        worker = self.workers.get(name)
        if worker is None or not isinstance(exc, ModelFilesMissing):
            return False
        return self._auto_pull(worker, exc.missing)

    def _pulled(self, worker: ManagedWorker, repo: str) -> None:
        """A pull for ``worker`` is done: its files decide its estimate now, and the start."""
        if self.workers.get(worker.name) is not worker:
            return
        self.footprints.plan(worker)
        missing = worker.missing_files()
        if missing is not None and self.scheduler.waiting(worker.name):
            if missing.repo_id not in (None, repo) and self._auto_pull(worker, missing):
                return  # a reload changed its path meanwhile: that one is pulled now
            self.scheduler.fail_waiters(
                worker.name,
                WorkerStartError(
                    worker.name,
                    f"{repo} was downloaded, but {missing.problem}",
                    code="model_files_missing",
                    http_status=404,
                ),
            )
        self.scheduler.wake()

    def _pull_failed(self, worker: ManagedWorker, repo: str, exc: Exception) -> None:
        """Fail the requests waiting for ``worker``'s files with the hub's error (no start,
        so no crash and no backoff); a later request tries again."""
        status = getattr(exc, "http_status", None)
        error = WorkerStartError(
            worker.name,
            f"downloading {repo} failed: {exc}",
            code=getattr(exc, "code", None) or "pull_failed",
            http_status=status if isinstance(status, int) else 502,
            headline=(
                f"model {worker.name!r} ({repo}) is not downloaded, and downloading it "
                f"failed: {exc}"
            ),
        )
        self.scheduler.fail_waiters(worker.name, error)

    def _on_worker_change(self) -> None:
        # A crash or a finished start changes what the scheduler may do next (and whether
        # a spare may start now).
        if self._loop_task is not None:
            self.scheduler.wake()
            self.spares.wake()

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Run the scheduler and preload the models marked ``preload: true``."""
        self._loop_task = asyncio.get_running_loop().create_task(
            self.scheduler.run(), name="scheduler"
        )
        self._sampler_task = asyncio.get_running_loop().create_task(
            self._sample(), name="footprints"
        )
        self.configure_spares()
        self._spare_task = asyncio.get_running_loop().create_task(self.spares.run(), name="spares")
        self._liveness_task = asyncio.get_running_loop().create_task(
            self._watch_liveness(), name="liveness"
        )
        budget = self.budget
        self.events.emit(
            ev.SupervisorStarted(
                models=sorted(self.workers),
                memory_budget_bytes=budget.bytes if budget is not None else None,
                memory_budget_source=budget.source if budget is not None else None,
                max_loaded_models=self.config.server.loaded_cap,
            )
        )
        preload = [n for n, w in self.workers.items() if w.model.preload]
        cap = self.config.server.loaded_cap
        if preload:
            asyncio.get_running_loop().create_task(
                self._preload(preload if cap is None else preload[:cap]), name="preload"
            )

    async def check_liveness(self) -> dict[str, bool | None]:
        """Probe every idle loaded worker once (concurrently); what each answered."""
        idle = [w for w in self.workers.values() if w.state is WorkerState.READY and not w.inflight]
        results = await asyncio.gather(*(w.check_alive() for w in idle), return_exceptions=True)
        return {
            w.name: r if isinstance(r, bool) or r is None else False
            for w, r in zip(idle, results, strict=True)
        }

    async def _watch_liveness(self) -> None:
        """Every ``server.liveness_interval`` (read anew each time: a reload may change it)."""
        while True:
            interval = self.config.server.liveness_interval
            await asyncio.sleep(interval if interval > 0 else 5.0)
            if interval > 0:
                try:
                    await self.check_liveness()
                except Exception:
                    log.exception("liveness check failed")

    async def _sample(self) -> None:
        """Measure loaded workers and spares; re-estimate unloaded models."""
        await self.footprints.run(self._sample_interval, also=self._sample_spares)

    def _sample_spares(self) -> None:
        before = self.spares.reserved_bytes(DEFAULT_OVERHEAD)
        self.spares.sample()
        if self.spares.reserved_bytes(DEFAULT_OVERHEAD) != before:
            self.refresh_limits()

    async def _preload(self, names: list[str]) -> None:
        """Load in config order, one after the other: under a budget, each load's measured
        footprint is known before the next one is planned."""
        for name in names:
            with contextlib.suppress(Exception):
                await self.load(name)

    async def shutdown(self) -> None:
        """Refuse new work, stop every worker (SIGTERM -> grace -> SIGKILL), wait for all."""
        await self.scheduler.close()
        await self.pulls.close()
        tasks = (self._loop_task, self._sampler_task, self._spare_task, self._liveness_task)
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(
            self.spares.close(),
            *(w.stop("shutdown") for w in self.workers.values()),
            return_exceptions=True,
        )
        for worker in self.workers.values():
            await worker.close()
        self.footprints.close()
        self.events.emit(ev.SupervisorStopped())

    # ------------------------------------------------------------- requests

    def resolve(self, name_or_alias: str) -> str | None:
        """The configured model a request's ``model`` field names, if any."""
        return self.config.resolve(name_or_alias)

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str, *, keep_alive: float | None = None, count: bool = True
    ) -> AsyncIterator[Lease]:
        """Wait for ``name`` to be ready and hold it for the duration of one request.

        ``keep_alive`` (seconds; negative = forever, 0 = unload when idle) replaces the
        model's idle timeout for as long as this load lasts.
        """
        worker = self.workers.get(name)
        if worker is None:  # removed by a config reload after the router resolved the name
            raise WorkerStartError(name, "the model was removed from the config")
        await self.check_files(name)
        queued_at = self.clock.now()
        await self.scheduler.acquire(name, count=count)
        try:
            if keep_alive is not None:
                worker.set_keep_alive(keep_alive)
            queued_s = self.clock.now() - queued_at
            async with worker.slots:
                yield Lease(worker, queued_s)
        finally:
            self.scheduler.release(name)

    async def load(self, name: str, *, keep_alive: float | None = None) -> None:
        """Load ``name`` as a request would (queued, swapped in), then leave it idle."""
        async with self.lease(name, keep_alive=keep_alive, count=False):
            pass

    async def unload(self, name: str, *, force: bool = False) -> None:
        """Unload ``name``: after its in-flight requests finish, or at once with ``force``
        (their clients then get an error naming the forced unload). Returns when stopped.
        A model whose files are being pulled stops pulling (the partial files stay for the
        next pull), and the requests waiting for it are told so."""
        worker = self.workers[name]
        if self.pulls.pulling(name):
            # Its waiters first: once the pull is gone the scheduler would start the model
            # for them, and that start would begin another pull.
            self.scheduler.fail_waiters(
                name,
                WorkerStartError(
                    name, "its download was cancelled (the model was unloaded)",
                    code="pull_cancelled", http_status=503,
                ),
            )  # fmt: skip
            await self.pulls.cancel(name, "unloaded by an operator")
        if worker.state not in RESIDENT:
            return
        if force:
            worker.note_forced_unload()
            await self.scheduler.force_stop(name, "unload (forced)")
            return
        self.scheduler.request_unload(name)
        with self.events.subscribe() as queue:
            while worker.state in RESIDENT:
                await queue.get()

    # ----------------------------------------------------------------- views

    def loaded(self) -> list[str]:
        return [n for n, w in self.workers.items() if w.state in RESIDENT]

    def view(self, name: str) -> WorkerView:
        """A frozen picture of worker ``name`` (KeyError if it is not configured)."""
        return view_of(self.workers[name], self.clock, self.scheduler.waiting(name))

    def views(self) -> list[WorkerView]:
        """Every configured worker, in config order."""
        return [self.view(name) for name in self.workers]

    def memory_report(self) -> dict[str, object]:
        """The budget and what the resident models take of it (bytes), for status views."""
        budget = self.budget
        used = sum(w.footprint.planned_bytes for w in self.workers.values() if w.state in RESIDENT)
        measured = sum(
            w.footprint.measured_bytes or 0 for w in self.workers.values() if w.state in RESIDENT
        )
        evictions = self.events.recent(kind="model.evicted")
        spares = self.spares.reserved_bytes(DEFAULT_OVERHEAD)
        return {
            "budget_bytes": budget.bytes if budget is not None else None,
            "budget_source": budget.source if budget is not None else None,
            "max_loaded_models": self.config.server.loaded_cap,
            "planned_bytes": used,
            "measured_bytes": measured,
            "free_bytes": budget.bytes - used - spares if budget is not None else None,
            "last_eviction": evictions[-1].to_json() if evictions else None,
            "spares_bytes": spares,  # held by spare workers, off the budget
        }
