"""Supervisor, scheduler and worker state machine driven by in-memory fakes and a fake clock.

No process is forked and no test sleeps for a fixed time: the clock moves when the test says,
and waits are on states with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import Config, ModelConfig, ModelType, ServerConfig
from mlx_serve.supervisor import QueueFull, ShuttingDown, Supervisor, WorkerStartError
from mlx_serve.supervisor.events import Event
from mlx_serve.supervisor.states import WorkerState as S
from mlx_serve.testing import FakeClock, FakeLauncher, InstantDriver
from mlx_serve.workers.process import SIGKILL, SIGTERM
from tests.conftest import eventually, last_seq, state_is, wait_event


class Harness:
    def __init__(self, tmp: Path, names: list[str], **server: Any) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        cfg = Config(
            server=ServerConfig(**server),
            models={n: ModelConfig(path=f"org/{n}") for n in names},
        )
        self.sup = Supervisor(
            cfg,
            data_dir=tmp,
            launcher=self.launcher,
            drivers={ModelType.TEXT: InstantDriver(self.launcher)},
            clock=self.clock,
        )
        self.max_alive = 0
        self.sup.events.add_listener(self._record)

    def _record(self, _event: object) -> None:
        # Invariant checked on every event: never more live processes than allowed.
        self.max_alive = max(self.max_alive, len(self.launcher.alive()))

    def state(self, name: str) -> S:
        return self.sup.workers[name].state

    def kinds(self, kind: str) -> list[dict[str, object]]:
        return [e.to_json() for e in self.sup.events.recent(kind=kind)]

    async def hold(
        self, name: str, keep_alive: float | None = None
    ) -> tuple[asyncio.Event, asyncio.Task[None]]:
        """Start a request on ``name`` that stays in flight until the event is set."""
        release = asyncio.Event()
        admitted = asyncio.Event()

        async def run() -> None:
            async with self.sup.lease(name, keep_alive=keep_alive):
                admitted.set()
                await release.wait()

        task = asyncio.create_task(run())
        await asyncio.wait(
            {task, asyncio.create_task(admitted.wait())},
            timeout=5,
            return_when=asyncio.FIRST_COMPLETED,
        )
        return release, task

    def mark(self) -> int:
        """The newest event's number: :meth:`entered` ``after=`` it waits for a new one."""
        return last_seq(self.sup.events)

    async def entered(self, name: str, state: S, *, after: int = 0) -> Event:
        """The ``worker.state`` event of ``name`` entering ``state`` (after event ``after``)."""
        return await wait_event(
            self.sup.events, "worker.state", name, where=state_is(state.value), after=after
        )

    def poke(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.sup.scheduler.wake()

    async def settle(self) -> None:
        """Let the scheduler act on all it can act on now, and wait for that to finish."""
        for _ in range(5):
            await asyncio.sleep(0)
            while (op := self.sup.scheduler.current_op) is not None:
                await asyncio.wait({op})


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Factory: ``await make(names, **server_settings)`` -> a started :class:`Harness`."""
    made: list[Harness] = []

    async def factory(names: list[str], **server: Any) -> Harness:
        h = Harness(tmp_path, names, **server)
        await h.sup.start()
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.sup.shutdown()
        assert not h.launcher.alive(), "shutdown left a process running"


async def test_first_request_starts_the_model(make: Make) -> None:
    h = await make(["a"])
    await h.sup.load("a")
    assert h.state("a") is S.READY
    states = [(e["old"], e["new"]) for e in h.kinds("worker.state")]
    assert states == [("stopped", "starting"), ("starting", "ready")]
    assert len(h.launcher.launched) == 1


async def test_swap_stops_the_old_process_before_starting_the_new(make: Make) -> None:
    h = await make(["a", "b"])
    await h.sup.load("a")
    await h.sup.load("b")
    assert (h.state("a"), h.state("b")) == (S.STOPPED, S.READY)
    assert h.max_alive == 1
    first, _second = h.launcher.launched
    assert first.returncode is not None and first.signals[0] == SIGTERM
    assert h.sup.scheduler.swaps == 1


async def test_a_burst_for_a_cold_model_rides_on_one_load(make: Make) -> None:
    h = await make(["a"])
    await asyncio.gather(*(h.sup.load("a") for _ in range(20)))
    assert len(h.launcher.launched) == 1


async def test_waiting_model_waits_for_in_flight_requests(make: Make) -> None:
    h = await make(["a", "b"])
    release, a_task = await h.hold("a")
    b_task = asyncio.create_task(h.sup.load("b"))
    await eventually(lambda: h.sup.scheduler.waiting("b") == 1, what="b queued")
    h.poke()
    await h.settle()
    assert h.state("a") is S.READY and h.state("b") is S.STOPPED  # a is never cut
    release.set()
    await a_task
    await asyncio.wait_for(b_task, 5)
    assert (h.state("a"), h.state("b")) == (S.STOPPED, S.READY)


async def test_fairness_bound_drains_a_busy_model(make: Make) -> None:
    h = await make(["a", "b"], fair_wait=10)
    release, a_task = await h.hold("a")
    b_task = asyncio.create_task(h.sup.load("b"))
    await eventually(lambda: h.sup.scheduler.waiting("b") == 1, what="b queued")
    h.poke(9)
    await h.settle()
    assert h.state("a") is S.READY
    h.poke(2)  # b has now waited 11 s > fair_wait
    await h.entered("a", S.DRAINING)
    # A new request for a now queues behind b instead of being admitted.
    late_a = asyncio.create_task(h.sup.load("a"))
    await eventually(lambda: h.sup.scheduler.waiting("a") == 1, what="late a queued")
    release.set()
    await a_task
    await asyncio.wait_for(b_task, 5)
    await asyncio.wait_for(late_a, 5)
    assert h.sup.scheduler.swaps == 2 and h.max_alive == 1


async def test_fairness_request_bound(make: Make) -> None:
    h = await make(["a", "b"], fair_requests=3, fair_wait=1000)
    release, a_task = await h.hold("a")
    b_task = asyncio.create_task(h.sup.load("b"))
    await eventually(lambda: h.sup.scheduler.waiting("b") == 1, what="b queued")
    holds = [await h.hold("a") for _ in range(3)]  # admitted while b waits
    await h.entered("a", S.DRAINING)
    for rel, task in [(release, a_task), *holds]:
        rel.set()
        await task
    await asyncio.wait_for(b_task, 5)


async def test_interleaved_burst_swaps_a_handful_of_times(make: Make) -> None:
    h = await make(["a", "b"])

    async def request(name: str) -> None:
        async with h.sup.lease(name):
            await h.settle()

    await asyncio.gather(*(request("ab"[i % 2]) for i in range(20)))
    assert h.sup.scheduler.swaps <= 2
    assert len(h.launcher.launched) <= 3
    assert h.max_alive == 1


async def test_idle_timeout_unloads(make: Make) -> None:
    h = await make(["a"], idle_timeout=60)
    await h.sup.load("a")
    h.poke(59)
    await h.settle()
    assert h.state("a") is S.READY
    h.poke(2)
    await h.entered("a", S.STOPPED)
    assert h.kinds("model.unloaded")[0]["reason"] == "idle"


async def test_idle_timer_never_runs_while_a_request_is_in_flight(make: Make) -> None:
    h = await make(["a"], idle_timeout=60)
    release, task = await h.hold("a")
    h.poke(3600)
    await h.settle()
    assert h.state("a") is S.READY
    release.set()
    await task
    h.poke(59)  # counted from the end of the last request
    await h.settle()
    assert h.state("a") is S.READY


async def test_keep_alive_zero_unloads_after_the_request(make: Make) -> None:
    h = await make(["a"])
    await h.sup.load("a", keep_alive=0)
    await h.entered("a", S.STOPPED)
    # The override lasted only for that load: the next load uses the configured timeout.
    await h.sup.load("a")
    await h.settle()
    assert h.state("a") is S.READY


async def test_keep_alive_forever_survives_idle_timeout(make: Make) -> None:
    h = await make(["a"], idle_timeout=1)
    await h.sup.load("a", keep_alive=-1)
    h.poke(10**6)
    await h.settle()
    assert h.state("a") is S.READY


async def test_queue_limit(make: Make) -> None:
    h = await make(["a", "b"], queue_limit=2)
    release, a_task = await h.hold("a")
    waiting = [asyncio.create_task(h.sup.load("b")) for _ in range(2)]
    await eventually(lambda: h.sup.scheduler.waiting() == 2, what="two queued")
    with pytest.raises(QueueFull):
        await h.sup.load("b")
    release.set()
    await a_task
    await asyncio.wait_for(asyncio.gather(*waiting), 5)


async def test_a_cancelled_waiter_leaves_the_queue(make: Make) -> None:
    h = await make(["a", "b"])
    release, a_task = await h.hold("a")
    b_task = asyncio.create_task(h.sup.load("b"))
    await eventually(lambda: h.sup.scheduler.waiting("b") == 1, what="b queued")
    b_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await b_task
    assert h.sup.scheduler.waiting() == 0
    release.set()
    await a_task
    await h.settle()
    assert h.state("a") is S.READY, "nobody waits for b any more: a stays"
    assert len(h.launcher.launched) == 1


async def test_crash_is_noticed_at_once_and_next_request_restarts(make: Make) -> None:
    h = await make(["a"])
    await h.sup.load("a")
    h.launcher.launched[0].exit(137)
    await h.entered("a", S.FAILED)
    crash = h.kinds("worker.crashed")[0]
    assert crash["exit_code"] == 137
    await h.sup.load("a")
    assert h.state("a") is S.READY and len(h.launcher.launched) == 2


async def test_startup_timeout_fails_waiters_and_kills_the_process(make: Make) -> None:
    h = await make(["a"], startup_timeout=30)
    h.launcher.auto_ready = False
    task = asyncio.create_task(h.sup.load("a"))
    await h.entered("a", S.STARTING)
    h.poke(31)
    with pytest.raises(WorkerStartError, match="not ready after startup_timeout=30s"):
        await asyncio.wait_for(task, 5)
    assert h.state("a") is S.FAILED
    assert not h.launcher.alive()
    # The next request tries again.
    h.launcher.auto_ready = True
    await h.sup.load("a")
    assert h.state("a") is S.READY


async def test_stop_escalates_to_sigkill(make: Make) -> None:
    h = await make(["a"], stop_timeout=0.05)
    h.launcher.ignore_sigterm = True
    await h.sup.load("a")
    await h.sup.workers["a"].stop()
    proc = h.launcher.launched[0]
    assert proc.signals[:2] == [SIGTERM, SIGKILL]
    assert h.kinds("worker.kill")


async def test_shutdown_fails_waiters_and_stops_everything(make: Make) -> None:
    h = await make(["a", "b"])
    release, a_task = await h.hold("a")
    b_task = asyncio.create_task(h.sup.load("b"))
    await eventually(lambda: h.sup.scheduler.waiting("b") == 1, what="b queued")
    await h.sup.scheduler.close()
    with pytest.raises(ShuttingDown):
        await b_task
    release.set()
    await a_task
    await h.sup.shutdown()
    assert not h.launcher.alive()


async def test_max_loaded_models_two_keeps_both(make: Make) -> None:
    h = await make(["a", "b", "c"], max_loaded_models=2)
    await h.sup.load("a")
    await h.sup.load("b")
    assert (h.state("a"), h.state("b")) == (S.READY, S.READY)
    h.poke(1)
    await h.sup.load("a")  # a is now the most recently used
    h.poke(1)
    await h.sup.load("c")
    assert (h.state("a"), h.state("b"), h.state("c")) == (S.READY, S.STOPPED, S.READY)
    assert h.max_alive == 2


async def test_unload_waits_for_in_flight_requests(make: Make) -> None:
    h = await make(["a"])
    release, task = await h.hold("a")
    unload = asyncio.create_task(h.sup.unload("a"))
    await h.entered("a", S.DRAINING)
    assert not unload.done()
    release.set()
    await task
    await asyncio.wait_for(unload, 5)
    assert h.state("a") is S.STOPPED
    assert h.kinds("model.unloaded")[0]["reason"] == "unload"


async def test_forced_unload_does_not_wait(make: Make) -> None:
    h = await make(["a"])
    release, task = await h.hold("a")
    await asyncio.wait_for(h.sup.unload("a", force=True), 5)
    assert h.state("a") is S.STOPPED
    assert "force-unloaded" in (h.sup.workers["a"].last_error or "")
    release.set()
    await task


async def test_a_bug_while_starting_fails_the_waiters_instead_of_stranding_them(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: an unexpected exception before the spawn (a missing module in the memory
    # preflight) left the worker STARTING and its waiters waiting forever.
    h = await make(["a"])

    async def broken(_spec: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(h.launcher, "launch", broken)
    with pytest.raises(WorkerStartError, match="boom"):
        await asyncio.wait_for(h.sup.load("a"), 5)
    assert h.state("a") is S.FAILED


async def test_a_request_is_never_admitted_to_a_worker_chosen_for_stopping(make: Make) -> None:
    # Regression (review): an idle stop was decided while the worker was still READY, and a
    # request arriving before the stop task ran was admitted to the dying worker.
    h = await make(["a"], idle_timeout=60)
    await h.sup.load("a")
    h.clock.advance(61)
    h.sup.scheduler.step()  # decides Stop(a, idle); the stop task has not run yet
    assert h.state("a") is S.DRAINING
    request = asyncio.create_task(h.sup.load("a"))
    await asyncio.wait_for(request, 5)  # queued, then served by a fresh worker
    assert len(h.launcher.launched) == 2 and h.state("a") is S.READY


async def test_removed_model_with_a_queued_request_does_not_break_the_scheduler(make: Make) -> None:
    # Regression (review): a waiter for a model removed by a reload raised KeyError inside
    # the scheduler loop, which died silently; every later request then hung.
    h = await make(["a", "b"])
    release, task = await h.hold("a")
    removal = asyncio.create_task(h.sup.remove_worker("a"))
    await h.entered("a", S.DRAINING)
    late = asyncio.create_task(h.sup.load("a"))  # the router resolved "a" before the reload
    await eventually(lambda: h.sup.scheduler.waiting("a") == 1, what="late request queued")
    release.set()
    await task
    await asyncio.wait_for(removal, 5)
    with pytest.raises(WorkerStartError, match="removed from the config"):
        await asyncio.wait_for(late, 5)
    await asyncio.wait_for(h.sup.load("b"), 5)  # the scheduler still works


async def test_shutdown_during_a_stop_still_reaps_the_process(make: Make) -> None:
    # Regression (review): shutdown cancelled a running stop after SIGTERM, leaving the
    # worker STOPPING and its process never SIGKILLed nor reaped.
    h = await make(["a"], idle_timeout=1, stop_timeout=0.2)
    h.launcher.ignore_sigterm = True
    await h.sup.load("a")
    h.poke(2)  # idle stop begins; SIGTERM is ignored, SIGKILL follows after 0.2 s
    await h.entered("a", S.STOPPING)
    await h.sup.shutdown()
    assert h.state("a") is S.STOPPED and not h.launcher.alive()
    assert h.launcher.launched[0].signals[-1] == SIGKILL


async def test_an_unload_voided_by_a_crash_does_not_drain_the_next_load(make: Make) -> None:
    h = await make(["a"])
    release, task = await h.hold("a")
    unload = asyncio.create_task(h.sup.unload("a"))
    await h.entered("a", S.DRAINING)
    h.launcher.launched[0].exit(1)  # crashes instead of finishing
    await asyncio.wait_for(unload, 5)
    release.set()
    await task
    await h.sup.load("a")
    await h.settle()
    assert h.state("a") is S.READY, "a stale unload request drained the fresh worker"


async def test_files_claimed_for_deletion_block_starts_in_one_step(make: Make) -> None:
    h = await make(["a"])
    worker = h.sup.workers["a"]
    assert worker.claim_files("its files are being deleted")
    assert not worker.claim_files("twice"), "one claim at a time"
    with pytest.raises(WorkerStartError) as caught:
        await h.sup.load("a")
    assert caught.value.code == "files_busy" and "being deleted" in str(caught.value)
    assert h.launcher.launched == []
    worker.release_files()
    await h.sup.load("a")
    assert not worker.claim_files("while loaded"), "a running model's files are not claimable"


async def test_a_crash_loop_backs_off_and_a_reload_starts_over(make: Make) -> None:
    h = await make(["a"])
    for _ in range(2):  # the first failure is retried at once; the second backs off
        await h.sup.load("a")
        seen = h.mark()
        h.launcher.launched[-1].exit(1)
        await h.entered("a", S.FAILED, after=seen)
    worker = h.sup.workers["a"]
    assert worker.failures == 2
    with pytest.raises(WorkerStartError) as caught:
        await h.sup.load("a")
    assert caught.value.code == "backoff" and caught.value.retry_after == pytest.approx(2.0)
    assert "2 times in a row" in str(caught.value)
    assert len(h.launcher.launched) == 2, "no process while backing off"
    h.poke(2.5)  # the backoff ran out: tried again
    await h.sup.load("a")
    assert h.state("a") is S.READY and worker.failures == 2  # until it has run a while
    h.poke(120)  # ...which it now has: its next crash starts a new series
    seen = h.mark()
    h.launcher.launched[-1].exit(1)
    await h.entered("a", S.FAILED, after=seen)
    assert worker.failures == 1 and worker.retry_at <= h.clock.now()
    await h.sup.load("a")
    # A second crash in a row: the next start waits (backs off); then a config change (the
    # fix) lets it through at once.
    seen = h.mark()
    h.launcher.launched[-1].exit(1)
    await h.entered("a", S.FAILED, after=seen)
    with pytest.raises(WorkerStartError, match="in a row"):
        await h.sup.load("a")
    assert worker.failures == 2 and worker.retry_at > h.clock.now()
    worker.update_model(worker.model)
    await h.sup.load("a")
    assert h.state("a") is S.READY


async def test_a_loaded_worker_that_stops_answering_is_killed_and_restarted(make: Make) -> None:
    h = await make(["a"])
    await h.sup.load("a")
    assert await h.sup.check_liveness() == {"a": True}
    first = h.launcher.launched[0]
    first.ready = False  # alive, but no longer answers a probe
    assert await h.sup.check_liveness() == {"a": False}
    assert h.state("a") is S.READY, "one miss is not enough"
    assert await h.sup.check_liveness() == {"a": False}
    await h.entered("a", S.FAILED)
    assert first.signals[0] == SIGKILL  # (the exit watcher kills the group again: harmless)
    (event,) = h.kinds("worker.unresponsive")
    assert event["misses"] == 2
    assert "stopped answering" in (h.sup.workers["a"].last_error or "")
    await h.sup.load("a")
    assert h.state("a") is S.READY and len(h.launcher.launched) == 2
    # A busy worker is not probed (its requests show it is alive, or will time out alone).
    release, task = await h.hold("a")
    assert await h.sup.check_liveness() == {}
    release.set()
    await task
