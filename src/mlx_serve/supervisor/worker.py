"""One managed worker: the single owner of a model's process and lifecycle state.

All state changes go through :meth:`ManagedWorker._change_state`, which checks the transition
table and emits an event. Start and stop are serialized by one lock, and both are idempotent,
so callers never inspect the state and then act on it: they ``await ensure_ready()`` or
``await stop()`` and get the outcome.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from mlx_serve.files import append_line
from mlx_serve.residency.footprint import Footprint
from mlx_serve.supervisor import events as ev
from mlx_serve.supervisor.states import DOWN, RESIDENT, STATUS, WorkerState, check_transition
from mlx_serve.workers.base import LaunchContext, LaunchRefused, ProbeError, WorkerDriver
from mlx_serve.workers.process import (
    SIGKILL,
    Launcher,
    WorkerProcess,
    describe_exit,
    end_group,
    exit_signal,
    free_port,
    read_log_tail,
)
from mlx_serve.workers.ranks import RANK_LOST_EXIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlx_serve.config import ModelConfig, ServerConfig
    from mlx_serve.hub.cache import MissingFiles
    from mlx_serve.residency.estimate import Estimate
    from mlx_serve.supervisor.clock import Clock
    from mlx_serve.supervisor.events import EventBus
    from mlx_serve.supervisor.spares import Spare, SparePool

S = WorkerState

#: Readiness poll interval while the worker's HTTP server is not up yet. A swap users feel
#: is stop + start + first answer, so a coarse poll would add its whole interval to each swap.
PROBE_INTERVAL = 0.02

#: Longest wait for an idle worker to exit after SIGTERM before its group is SIGKILLed.
IDLE_STOP_GRACE = 2.0

#: Liveness probes in a row a loaded worker may miss before it is killed and restarted.
LIVENESS_MISSES = 2

#: Crash-loop backoff: after the second failure in a row, starts wait 2, 4, 8 ... seconds,
#: at most this long (a request meanwhile gets a 503 with Retry-After at once).
MAX_BACKOFF = 60.0
#: A worker that ran this long before it crashed was not crash-looping (as supervisord's
#: ``startsecs``): its crash counts as the first failure of a new series.
STABLE_AFTER = 60.0


#: How a start error's message goes on after the model's name, by its ``code``.
_VERBS = {
    "insufficient_memory": "cannot be loaded",
    "backoff": "is not started again yet",
    "model_files_missing": "cannot be started",
    "model_not_shardable": "cannot be started",
    "model_config_invalid": "cannot be started",
}


class WorkerStartError(Exception):
    """The worker could not be made ready; ``reason`` says why, ``log_tail`` shows its output.

    ``code`` is empty for a start that failed (a crash, a timeout: these count towards the
    crash-loop backoff) and names the refusal otherwise: ``insufficient_memory`` (load guard),
    ``backoff``, ``files_busy``, ``model_not_downloaded`` / ``model_files_missing`` (see
    :class:`ModelFilesMissing`), or a failed pull's hub error code (``hub_offline``,
    ``repo_not_found``...). ``http_status``, when set, is the status a client should get;
    ``headline`` replaces the message's usual "model 'x' failed to start: reason".
    """

    def __init__(
        self,
        name: str,
        reason: str,
        log_tail: str = "",
        *,
        code: str = "",
        retry_after: float | None = None,
        http_status: int | None = None,
        headline: str | None = None,
    ) -> None:
        message = headline or f"model {name!r} {_VERBS.get(code, 'failed to start')}: {reason}"
        if log_tail:
            message += f"\n--- last lines of its log ---\n{log_tail}"
        super().__init__(message)
        self.name = name
        self.reason = reason
        self.log_tail = log_tail
        self.code = code
        self.retry_after = retry_after  # seconds, when retrying later can help
        self.http_status = http_status


class ModelFilesMissing(WorkerStartError):
    """The model's files are not on disk, so no worker is started (and no backoff counted).

    A hub repo not in the cache (``model_not_downloaded``: pulling it helps, see
    ``missing.repo_id``) or a local directory that is gone or holds no model
    (``model_files_missing``). Clients get a 404, as Ollama answers for a model not pulled.
    """

    def __init__(self, name: str, missing: MissingFiles) -> None:
        self.missing = missing
        if missing.repo_id is not None:
            repo = missing.repo_id
            reason = f"{repo} is not downloaded: {missing.problem}"
            headline = (
                f"model {name!r} ({repo}) is not downloaded ({missing.problem}); run: "
                f"mlx-serve models pull {repo} (or set server.auto_pull: true in models.yaml "
                "to download models on first use)"
            )
        else:
            reason = missing.problem
            headline = f"model {name!r} cannot be started: {reason} (check its path in models.yaml)"
        super().__init__(name, reason, code=missing.code, http_status=404, headline=headline)


class ManagedWorker:
    """Owns one model's worker process and its :class:`WorkerState`."""

    def __init__(
        self,
        name: str,
        model: ModelConfig,
        server: ServerConfig,
        *,
        driver: WorkerDriver,
        launcher: Launcher,
        clock: Clock,
        events: EventBus,
        log_dir: Path,
        on_change: Callable[[], None] = lambda: None,
        preflight: Callable[[ModelConfig], str | None] = lambda _model: None,
        files_check: Callable[[ModelConfig], MissingFiles | None] = lambda _model: None,
        host: str = "127.0.0.1",
        spares: SparePool | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.server = server
        self.driver = driver
        self._launcher = launcher
        self._clock = clock
        self._events = events
        self._on_change = on_change
        self._preflight = preflight
        self.files_check = files_check
        self._host = host
        self.log_path = log_dir / f"{_safe_filename(name)}.log"
        self.output_log = self.log_path  # where the current process writes (a spare's own log)
        self._spares = spares

        self.state = S.STOPPED
        self.inflight = 0  # admitted requests not yet released
        self.requests_total = 0
        self.last_used = clock.now()
        self.loaded_at: float | None = None  # wall clock
        self.keep_alive: float | None = None  # per-load override from a request's keep_alive
        self.pending_model: ModelConfig | None = None  # from a config reload; used at next start
        self.last_error: str | None = None
        self.exit_code: int | None = None
        self.port: int | None = None
        self.proc: WorkerProcess | None = None
        self.footprint = Footprint()
        self.files_busy: str | None = None  # why starts are refused right now (claim_files)
        #: While ``server.auto_pull`` downloads this model's files (no start before that ends):
        #: repo, status, completed/total bytes, percent, started_at. None otherwise.
        self.pull_progress: dict[str, Any] | None = None
        self.failures = 0  # failed starts, and crashes within STABLE_AFTER of one, in a row
        self.ready_since = 0.0
        self.retry_at = 0.0  # monotonic: no start before this (crash-loop backoff)
        self._missed_probes = 0
        self._kill_reason: str | None = None  # why the supervisor killed a running worker
        self.slots = asyncio.Semaphore(model.max_concurrency or server.max_concurrency)
        self._lock = asyncio.Lock()
        self._exited = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    # ----------------------------------------------------------------- views

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.state not in DOWN else None

    @property
    def upstream_model(self) -> str:
        return self.driver.upstream_model(self.model)

    def reset_slots(self) -> None:
        """Apply a changed max_concurrency; only while no request can hold a slot."""
        if self.state in DOWN:
            self.slots = asyncio.Semaphore(
                self.model.max_concurrency or self.server.max_concurrency
            )

    def idle_timeout(self) -> float:
        """Seconds of idleness before unload; negative means never."""
        if self.keep_alive is not None:
            return self.keep_alive
        if self.model.idle_timeout is not None:
            return self.model.idle_timeout
        return self.server.idle_timeout

    # ------------------------------------------------- what others may change
    # Every change to this worker from outside goes through one of these verbs, so the
    # invariants they keep (inflight never negative, a new path never reaching a running
    # process) live in one place.

    def admit(self, *, count: bool = True) -> None:
        """A request (or a preload, ``count=False``) now holds this worker."""
        self.inflight += 1
        self.requests_total += count

    def finish_request(self, now: float) -> None:
        """An admitted request has finished; idle time counts from ``now``."""
        self.inflight = max(0, self.inflight - 1)
        self.last_used = now

    def set_keep_alive(self, seconds: float) -> None:
        """A request's keep_alive replaces the idle timeout for as long as this load lasts."""
        self.keep_alive = seconds

    def set_server(self, server: ServerConfig) -> None:
        self.server = server

    def update_model(self, model: ModelConfig) -> bool:
        """Take a changed config for this model. Settings the process was started with wait
        for the next start while it runs: returns True when it must restart to apply them.
        A changed config may be the fix for a crash loop: the backoff starts over."""
        self.failures, self.retry_at = 0, 0.0
        if self.state in RESIDENT:
            self.pending_model = model
            return True
        self.model = model
        self.pending_model = None
        self.reset_slots()
        return False

    def update_router_settings(self, model: ModelConfig) -> None:
        """Settings only the router reads (defaults, aliases, timeouts, pin): at once."""
        self.model = model

    def set_pull_progress(self, progress: dict[str, Any] | None) -> None:
        """A pull of this model's files began, progressed (a new dict each time) or ended
        (None). Only its start and end change what the scheduler may do."""
        changed = (progress is None) != (self.pull_progress is None)
        self.pull_progress = progress
        if changed:
            self._on_change()

    def missing_files(self) -> MissingFiles | None:
        """What the model the next start would run lacks on disk, or None (see ensure_ready)."""
        return self.files_check(self.pending_model or self.model)

    def note_forced_unload(self) -> None:
        self.last_error = "the model was force-unloaded by an operator"

    def plan_footprint(self, estimate: Estimate | None, learned_bytes: int | None) -> None:
        """A fresh estimate (and what earlier loads learned) for the next decisions."""
        self.footprint = Footprint(
            estimate,
            learned_bytes,
            self.footprint.measured_bytes,
            self.footprint.peak_bytes,
        )

    def record_footprint(self, measured_bytes: int) -> None:
        """A measurement of this load's process tree."""
        if self.state in RESIDENT:
            self.footprint = self.footprint.sampled(measured_bytes)

    async def check_alive(self) -> bool | None:
        """Probe an idle loaded worker once, as readiness does (a real answer, not /health).

        True: it answered. False: it did not within ``liveness_timeout``; after
        :data:`LIVENESS_MISSES` misses in a row its process group is killed, which the exit
        watcher reports as a crash (the next request starts it again). None: not checked
        (not READY, busy, or it changed while the probe ran).
        """
        proc = self.proc
        if self.state is not S.READY or self.inflight or proc is None:
            return None
        timeout = self.server.liveness_timeout
        try:
            async with asyncio.timeout(timeout):
                answered = (
                    await self.driver.probe(self._http(), self.base_url, self.model, timeout)
                    is not None
                )
        except (TimeoutError, ProbeError, aiohttp.ClientError):
            answered = False
        if self.proc is not proc or self.state is not S.READY:
            return None
        if answered:
            self._missed_probes = 0
            return True
        self._missed_probes += 1
        if self._missed_probes >= LIVENESS_MISSES:
            self._kill_reason = (
                f"the worker stopped answering ({self._missed_probes} liveness probes got "
                f"no answer within {timeout:g}s); it was killed"
            )
            self._events.emit(
                ev.WorkerUnresponsive(
                    model=self.name, pid=proc.pid, misses=self._missed_probes, timeout_s=timeout
                )
            )
            proc.signal_group(SIGKILL)
        return False

    # ----------------------------------------------------------- transitions

    def _change_state(self, new: WorkerState, **data: Any) -> None:
        old = self.state
        check_transition(self.name, old, new)
        self.state = new
        self._events.emit(
            ev.WorkerStateChanged(
                model=self.name, old=old.value, new=new.value,
                old_status=STATUS[old], status=STATUS[new], extra=data,
            )
        )  # fmt: skip
        self._on_change()

    def drain(self) -> None:
        """Stop admitting new requests; in-flight ones finish. READY -> DRAINING."""
        if self.state is S.READY:
            self._change_state(S.DRAINING)  # READY -> DRAINING

    def undrain(self) -> None:
        """Admit requests again. DRAINING -> READY."""
        if self.state is S.DRAINING:
            self._change_state(S.READY)  # DRAINING -> READY

    # ----------------------------------------------------------------- start

    async def ensure_ready(self) -> None:
        """Start the worker unless it is already READY; raise :class:`WorkerStartError`."""
        async with self._lock:
            if self.state in (S.READY, S.DRAINING):
                return
            if self.files_busy is not None:
                raise WorkerStartError(self.name, self.files_busy, code="files_busy")
            # Disk checks run off the loop: a slow disk must not hold every other stream.
            missing = await asyncio.to_thread(self.missing_files)
            if missing is not None:
                # Nothing to start (the worker would fail on its own, seconds later and
                # less clearly); not a crash, so no backoff, and the state stays as it is.
                raise ModelFilesMissing(self.name, missing)
            wait = self.retry_at - self._clock.now()
            if wait > 0:
                raise WorkerStartError(
                    self.name,
                    f"it failed {self.failures} times in a row (last: {self.last_error}); "
                    f"the next attempt is in {wait:.0f}s, or at once after a config reload",
                    code="backoff",
                    retry_after=wait,
                )
            await self._start()

    def claim_files(self, why: str) -> bool:
        """Keep this model from starting while its files change (deleted, replaced).

        One decision, no await between check and claim: False if a process runs now (or
        another claim holds); otherwise every start fails at once with ``why`` instead of
        loading half-deleted files, until :meth:`release_files`.
        """
        if self.state not in DOWN or self.files_busy is not None or self.pull_progress is not None:
            return False
        self.files_busy = why
        return True

    def release_files(self) -> None:
        self.files_busy = None

    async def _start(self) -> None:
        if self.pending_model is not None:
            self.model, self.pending_model = self.pending_model, None
            self.slots = asyncio.Semaphore(
                self.model.max_concurrency or self.server.max_concurrency
            )
        self._change_state(S.STARTING)  # STOPPED/FAILED -> STARTING
        started = self._clock.now()
        try:
            try:
                details = await self._spawn_until_ready(started)
            except WorkerStartError as exc:
                if not _lost_port_race(exc):
                    raise
                # Another program took the port between free_port() and the worker's bind:
                # not the model's fault; once more on a fresh port.
                self._events.emit(ev.WorkerPortTaken(model=self.name, port=self.port))
                if self.proc is not None:
                    await self._kill_group(self.proc)
                details = await self._spawn_until_ready(started)
        except WorkerStartError as exc:
            if self.proc is not None:
                await self._kill_group(self.proc)
            # A refusal before any process ran (memory) is not a crash: no backoff for it.
            self._fail(exc.reason, log_tail=exc.log_tail, crashed=not exc.code)
            raise
        except BaseException as exc:
            # Cancelled (shutdown) or a bug: never leave a process or a STARTING state behind,
            # or every request waiting for this model would wait forever.
            if self.proc is not None:
                await self._kill_group(self.proc)
            if self.state is S.STARTING and isinstance(exc, Exception):
                self._fail(f"internal error while starting: {exc!r}")  # STARTING -> FAILED
                raise WorkerStartError(
                    self.name, f"internal error while starting: {exc!r}"
                ) from exc
            if self.state is S.STARTING:
                self._change_state(S.STOPPING, reason="start cancelled")  # STARTING -> STOPPING
                self._change_state(S.STOPPED)  # STOPPING -> STOPPED
            raise
        assert self.proc is not None
        self.loaded_at = self._clock.wall()
        self.last_used = self._clock.now()
        self.last_error = None
        self.retry_at, self._missed_probes = 0.0, 0
        self.ready_since = self._clock.now()
        load_s = self._clock.now() - started
        self._change_state(S.READY, pid=self.proc.pid, port=self.port)  # STARTING -> READY
        self._events.emit(
            ev.ModelLoaded(
                model=self.name,
                duration_s=round(load_s, 4),
                pid=self.proc.pid,
                type=self.model.type.value,
                extra=details,
            )
        )

    async def _spawn_until_ready(self, started: float) -> dict[str, Any]:
        """Preflight, spawn (or adopt a spare), and wait for the model to answer; raise
        WorkerStartError."""
        self.proc = None
        refusal = await asyncio.to_thread(self._preflight, self.model)  # stats files, too
        if refusal is not None:
            raise WorkerStartError(self.name, refusal, code="insufficient_memory")
        spare = self._spares.take(self.model) if self._spares is not None else None
        if spare is not None:
            adopted = await self._adopt(spare)
            if adopted:
                details = await self._wait_ready(spare.proc, started)
                return {**details, "spare": True, "spare_pid": spare.proc.pid}
            self.proc = None  # the spare could not take it: start cold, as if there were none
        self.output_log = self.log_path
        self.port = free_port(self._host)
        self._exited = asyncio.Event()
        self.exit_code = None
        context = LaunchContext(
            name=self.name,
            model=self.model,
            host=self._host,
            port=self.port,
            log_path=self.log_path,
            python=sys.executable,
        )
        try:
            spec = self.driver.launch_spec(context)
            header = f"\n=== mlx-serve: starting {self.name}: {' '.join(spec.argv)}\n"
            append_line(self.log_path, header, what="worker logs")
            proc = await self._launcher.launch(spec)
        except LaunchRefused as exc:
            raise WorkerStartError(self.name, str(exc), code=exc.code, http_status=503) from exc
        except OSError as exc:
            raise WorkerStartError(self.name, f"could not spawn the worker: {exc}") from exc
        self.proc = proc
        asyncio.get_running_loop().create_task(self._watch_exit(proc), name=f"watch-{self.name}")
        return await self._wait_ready(proc, started)

    async def _adopt(self, spare: Spare) -> bool:
        """Make ``spare`` this model's process; False (and the spare killed) if it refused."""
        assert self._spares is not None
        driver = self._spares.driver(self.model.type)
        self.proc, self.port, self.output_log = spare.proc, spare.port, spare.log_path
        self._exited = asyncio.Event()
        self.exit_code = None
        append_line(
            self.log_path,
            f"\n=== mlx-serve: {self.name} runs in spare pid {spare.proc.pid} "
            f"(its output: {spare.log_path})\n",
            what="worker logs",
        )
        asyncio.get_running_loop().create_task(
            self._watch_exit(spare.proc), name=f"watch-{self.name}"
        )
        try:
            if driver is None or spare.proc.returncode is not None:
                raise ProbeError("the spare is gone")
            await driver.adopt(self._http(), self.base_url, self.model, 30.0)
        except ProbeError as exc:
            self._events.emit(
                ev.SpareFailed(model=spare.kind.value, reason=str(exc), failures=0, gave_up=False)
            )
            await self._kill_group(spare.proc)
            self.output_log = self.log_path
            return False
        return True

    async def _wait_ready(self, proc: WorkerProcess, started: float) -> dict[str, Any]:
        deadline = started + self.server.startup_timeout
        exited = asyncio.ensure_future(self._exited.wait())
        probe: asyncio.Future[dict[str, Any] | None] | None = None
        try:
            while True:
                remaining = deadline - self._clock.now()
                if remaining <= 0:
                    raise WorkerStartError(
                        self.name,
                        f"not ready after startup_timeout={self.server.startup_timeout:g}s",
                        read_log_tail(self.output_log),
                    )
                probe = asyncio.ensure_future(
                    self.driver.probe(self._http(), self.base_url, self.model, remaining)
                )
                done, _ = await asyncio.wait(
                    {probe, exited}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if exited in done:
                    probe.cancel()
                    raise WorkerStartError(
                        self.name,
                        f"the worker {describe_exit(proc.returncode)} while loading",
                        read_log_tail(self.output_log),
                    )
                if probe not in done:
                    probe.cancel()
                    continue  # deadline check at the top of the loop
                try:
                    details = probe.result()
                    if details is not None:
                        return details
                except ProbeError as exc:
                    raise WorkerStartError(
                        self.name, str(exc), read_log_tail(self.output_log)
                    ) from exc
                await asyncio.sleep(PROBE_INTERVAL)
        finally:
            exited.cancel()
            if probe is not None:
                probe.cancel()  # cancelled mid-probe (shutdown): no orphan request

    def _fail(self, reason: str, *, log_tail: str = "", crashed: bool = True) -> None:
        self.last_error = reason
        self.failures += crashed
        if crashed and self.failures >= 2:  # one quick retry for a transient failure, then back off
            delay = min(MAX_BACKOFF, 2.0 ** (self.failures - 1))
            self.retry_at = self._clock.now() + delay
        self._change_state(
            S.FAILED, reason=reason, log_tail=log_tail, failures=self.failures
        )  # * -> FAILED

    async def _watch_exit(self, proc: WorkerProcess) -> None:
        code = await proc.wait()
        if proc is not self.proc:
            return
        self.exit_code = code
        self._exited.set()
        if self.state in (S.READY, S.DRAINING):
            # Died on its own: noticed now, not at the next request.
            tail = read_log_tail(self.output_log)
            proc.signal_group(SIGKILL)  # anything it forked goes with it
            self.loaded_at = None
            self.keep_alive = None
            self.footprint = self.footprint.unloaded()
            if self._clock.now() - self.ready_since >= STABLE_AFTER:
                self.failures = 0  # it ran long enough: this crash starts a new count
            reason = self._kill_reason or crash_reason(code)
            self._kill_reason = None
            self._events.emit(
                ev.WorkerCrashed(
                    model=self.name, reason=reason, exit_code=code,
                    signal=exit_signal(code), pid=proc.pid, log_tail=tail,
                )
            )  # fmt: skip
            self._fail(reason, log_tail=tail)

    # ------------------------------------------------------------------ stop

    async def stop(self, reason: str = "requested") -> None:
        """Stop the worker (idempotent). Returns once its process group has exited."""
        async with self._lock:
            proc = self.proc
            if self.state in DOWN or proc is None:
                return
            stopping_from = self.state
            if self.state is not S.STOPPING:  # (a stop cut short earlier may have left it so)
                self._change_state(S.STOPPING, reason=reason)  # READY/DRAINING -> STOPPING
            started = self._clock.now()
            await self._kill_group(proc)
            self.loaded_at = None
            self.keep_alive = None
            self.footprint = self.footprint.unloaded()
            self._change_state(S.STOPPED, exit_code=self.exit_code)  # STOPPING -> STOPPED
            self._events.emit(
                ev.ModelUnloaded(
                    model=self.name,
                    reason=reason,
                    was=stopping_from.value,
                    duration_s=round(self._clock.now() - started, 4),
                )
            )

    async def _kill_group(self, proc: WorkerProcess) -> None:
        """SIGTERM the group, wait, then SIGKILL it; wait for the exit.

        The grace is ``stop_timeout`` while requests are in flight (a forced unload), and at
        most :data:`IDLE_STOP_GRACE` when nothing is: an idle worker has nothing to finish,
        and the next model's load waits for this one's memory.
        """
        grace = self.server.stop_timeout
        if self.inflight == 0:
            grace = min(grace, IDLE_STOP_GRACE)
        if await end_group(proc, grace):
            self._events.emit(ev.WorkerKilled(model=self.name, pid=proc.pid, after_s=grace))
        self.exit_code = proc.returncode

    # ------------------------------------------------------------------ misc

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Release the probe session; the process must already be stopped."""
        if self._session is not None:
            await self._session.close()


def crash_reason(code: int | None) -> str:
    """Why a loaded worker is gone, from its exit status alone: "the worker was killed by
    SIGKILL" (with what usually sends that), or "the worker exited with code 3"."""
    if code == RANK_LOST_EXIT:
        return "a rank of the sharded model exited, so every rank was stopped (see its log)"
    reason = f"the worker {describe_exit(code)}"
    if exit_signal(code) == "SIGKILL":
        # Not mlx-serve (its own kills set a reason): the kernel when memory ran out (the
        # OOM killer, macOS's jetsam), or someone's kill -9.
        reason += " (out of memory, or kill -9 by another program)"
    return reason


def _lost_port_race(exc: WorkerStartError) -> bool:
    """Did the worker exit while loading because its port was taken (EADDRINUSE)?"""
    this_start = exc.log_tail.rsplit("=== mlx-serve:", 1)[-1]  # not an earlier start's lines
    return "exited" in exc.reason and "already in use" in this_start.lower()


def _safe_filename(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return cleaned or "model"


__all__ = [
    "PROBE_INTERVAL",
    "ManagedWorker",
    "ModelFilesMissing",
    "WorkerStartError",
    "crash_reason",
]
