"""Shared helpers: waits with a deadline (never a fixed sleep), and the event-loop guard.

Waiting, in order of preference:

* on an event the code emits: :func:`wait_event` (the supervisor's event bus);
* on a condition that has no event (a process exit, a file, a queue length):
  :func:`eventually` (async, the predicate may be a coroutine function) or :func:`wait_until`
  (for code without an event loop). Both poll every :data:`POLL_INTERVAL`.

Every async test runs under :class:`LoopBlockGuard` (the autouse fixture
:func:`loop_block_guard`): a test during which the event loop could not run for more than
``MLX_SERVE_TEST_LOOP_BLOCK_MS`` (100 ms by default; 0 turns the guard off) fails, with the
stack that held the loop. Time the loop thread spent waiting for a CPU (a loaded machine),
for the garbage collector or for the GIL (the test's own threads) is not counted as
blocking, and neither is a late heartbeat while the loop thread sat idle in its selector or
one the watchdog never caught in the act (the whole process was held, not the loop). Only
the test's body is watched, not its fixtures. ``MLX_SERVE_TEST_STALL_LOG=file``
appends every stall to ``file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar, overload

import pytest

from mlx_serve.supervisor.events import Event, EventBus

# No test may reach the network: the hub client must fail fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

T = TypeVar("T")

#: How often waits on a condition re-check it (every wait also has a deadline).
POLL_INTERVAL = 0.01


# ------------------------------------------------------------------------- client SDKs


async def sdk_resources_imported(client: Any) -> None:
    """Touch the openai SDK client's resources in a thread: the SDK imports each resource and
    its pydantic type modules (~40 for audio alone) on first attribute access, and on the
    test's loop, under a CI run's disk contention, that held it 158 ms (the loop guard failed
    the run on it)."""

    def touch() -> None:
        for path in ("chat.completions", "completions", "embeddings", "models",
                     "audio.speech", "audio.transcriptions"):  # fmt: skip
            node = client
            for name in path.split("."):
                node = getattr(node, name)

    await asyncio.to_thread(touch)


# ------------------------------------------------------------------------------------- waits


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]], timeout: float = 10.0, what: str = "condition"
) -> T: ...
@overload
async def eventually(
    predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "condition"
) -> T: ...
async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``predicate()`` (awaited if it returns an awaitable) until it is truthy, and
    return that value; fail with ``what`` after ``timeout`` seconds.

    For conditions nothing announces. When the code emits an event, use :func:`wait_event`.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "condition"
) -> T:
    """:func:`eventually` for code without an event loop (CLI tests, threads)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL)
    return value


def last_seq(events: EventBus) -> int:
    """The sequence number of the newest event on ``events`` (0 before the first): pass it as
    ``after=`` to :func:`wait_event` to wait for what happens from now on."""
    recent = events.recent()
    return recent[-1].seq if recent else 0


async def wait_event(
    events: EventBus,
    kind: str,
    model: str | None = None,
    *,
    where: Callable[[Event], object] = lambda _: True,
    after: int = 0,
    count: int = 1,
    timeout: float = 10.0,
) -> Event:
    """The ``count``-th event of ``kind`` (of ``model``, matching ``where``) with a sequence
    number above ``after``: at once if it was emitted already, else when it is.

    Emitted events are looked up in the bus's ring of recent ones, then a listener sees the
    next ones as they are emitted (listeners, unlike subscriber queues, never drop one).
    """

    def matches(event: Event) -> bool:
        return (
            event.seq > after
            and event.kind == kind
            and (model is None or event.model == model)
            and bool(where(event))
        )

    seen = [e for e in events.recent() if matches(e)]
    if len(seen) >= count:
        return seen[count - 1]
    done: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

    def listen(event: Event) -> None:
        if not done.done() and matches(event):
            seen.append(event)
            if len(seen) >= count:
                done.set_result(event)

    events.add_listener(listen)
    try:
        async with asyncio.timeout(timeout):
            return await done
    except TimeoutError:
        of = f" of {model}" if model else ""
        raise AssertionError(
            f"timed out after {timeout}s waiting for event #{count} {kind}{of} "
            f"(after seq {after}; {len(seen)} seen)"
        ) from None
    finally:
        events.remove_listener(listen)


def state_is(state: str) -> Callable[[Event], bool]:
    """``where=`` for :func:`wait_event` on ``worker.state``: the worker entered ``state``
    (a :class:`~mlx_serve.supervisor.states.WorkerState` value)."""
    return lambda event: event.data.get("new") == state


def error_code(body: object) -> object:
    """The ``code`` of an error body in any dialect's shape: OpenAI's and Anthropic's
    ``{"error": {"code"}}``, Ollama's ``{"error": "message", "code"}``."""
    assert isinstance(body, dict), body
    error = body.get("error")
    return error.get("code") if isinstance(error, dict) else body.get("code")


# ---------------------------------------------------------------------- the event-loop guard

#: Milliseconds the event loop may be held before the test fails (0: no guard).
LOOP_BLOCK_MS = float(os.environ.get("MLX_SERVE_TEST_LOOP_BLOCK_MS", "100"))
#: A file to append every stall to (the test, the time, the stack), to survey a whole run;
#: unset: none.
STALL_LOG = os.environ.get("MLX_SERVE_TEST_STALL_LOG")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "loop_block_ok(reason): the event-loop guard records stalls without failing the test",
    )


def _schedstat() -> Path | None:
    path = Path("/proc/self/task")
    try:
        next(path.iterdir()).joinpath("schedstat").read_text()
    except (OSError, StopIteration):
        return None
    return path


_SCHEDSTAT = _schedstat()


def _waits_for_cpu() -> dict[str, int]:
    """Per thread of the process, the nanoseconds it has spent runnable but not running
    (waiting for a CPU): Linux's ``run_delay``. All threads, not only the loop's: a thread
    holding the GIL while it waits for a CPU holds the loop too. Elsewhere empty (then only
    time on the CPU counts as blocking, see :meth:`LoopBlockGuard._check`)."""
    waits: dict[str, int] = {}
    if _SCHEDSTAT is None:
        return waits
    with contextlib.suppress(OSError):
        for task in _SCHEDSTAT.iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                waits[task.name] = int((task / "schedstat").read_text().split()[1])
    return waits


def _waited(before: dict[str, int], now: dict[str, int]) -> float:
    """Seconds of CPU wait between two :func:`_waits_for_cpu` (threads started meanwhile
    count from 0, those that ended are left out)."""
    return sum(wait - before.get(tid, 0) for tid, wait in now.items()) / 1e9


#: :attr:`Stall.stack` when the watchdog caught none.
NO_STACK = "(no stack captured)"


@dataclass(frozen=True)
class Stall:
    """One time the loop could not run: for how long (``blocked_s``: see
    :class:`LoopBlockGuard` for what is not counted), how late its heartbeat woke
    (``late_s``), and what the loop thread was doing."""

    blocked_s: float
    late_s: float
    stack: str

    def __str__(self) -> str:
        return (
            f"event loop blocked for {self.blocked_s * 1000:.0f} ms "
            f"(heartbeat {self.late_s * 1000:.0f} ms late), in:\n{self.stack}"
        )


_PROJECT = str(Path(__file__).resolve().parents[1])


def _loop_stack(frame: FrameType) -> tuple[str, bool]:
    """What a stalled loop thread was running: from the callback the loop called, the frames
    of this project's code (where the call was made) and the innermost few (what it was);
    and whether it was free when caught: waiting for I/O in its selector, or already back in
    the guard's own heartbeat (the hold ended before the watchdog looked), or in
    ``Thread.start`` (which only waits for the OS to schedule the new thread: microseconds,
    unless the machine is saturated, as with two test processes on two cores). All from one
    extraction: the thread runs on, and a frame's callers are gone once it returns."""
    frames = traceback.extract_stack(frame)
    idle = bool(frames) and (
        (frames[-1].name == "select" and frames[-1].filename.endswith("selectors.py"))
        or any(f.name in ("_beat", "_check") and f.filename.endswith("conftest.py") for f in frames)
        or any(f.name == "start" and f.filename.endswith("threading.py") for f in frames[-4:])
    )
    start = max(
        (i + 1 for i, f in enumerate(frames) if f.name == "_run" and "asyncio" in f.filename),
        default=0,
    )
    called = frames[start:]
    innermost = len(called) - 4
    kept = [
        f for i, f in enumerate(called)
        if i >= innermost or (f.filename.startswith(_PROJECT) and ".venv" not in f.filename)
    ]  # fmt: skip
    return "".join(traceback.format_list(kept)), idle


class _GcClock:
    """Seconds spent in the garbage collector, summed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started: float | None = None

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.total += time.perf_counter() - self._started
            self._started = None


class LoopBlockGuard:
    """A heartbeat task on the loop, plus a watchdog thread that records what the loop thread
    was running when the heartbeat is overdue.

    Lateness alone would flag what is not the code on the loop: a loaded machine (threads
    waiting for a CPU), the collector's pauses (a test process holds every client library's
    objects: a full collection takes a while) and the GIL held by the test's own threads
    (hypothesis and the README snippets run in one). So, over the same stretch, the threads'
    ``run_delay`` (Linux), the time spent in ``gc`` and the CPU time of the process's other
    threads are subtracted: what remains is time the loop thread spent
    running a callback or blocked in a call. Without ``run_delay`` (macOS) only the thread's
    own CPU time counts, which misses blocking sleeps and I/O.
    """

    #: Heartbeat period: fine enough for a 100 ms threshold, light on a 2-core machine.
    INTERVAL = 0.04

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self.stalls: list[Stall] = []
        self._beat_at = time.monotonic()
        self._before: tuple[dict[str, int], float, float, float] = ({}, 0.0, 0.0, 0.0)
        self._stack = ""
        #: The watchdog found the loop thread waiting in its selector while the heartbeat was
        #: overdue: the loop was free, the OS woke it late (a timer or a wake-up the
        #: CPU-wait accounting does not see). Not code holding the loop: not a stall.
        self._idle = False
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._gc = _GcClock()

    def _clocks(self) -> tuple[dict[str, int], float, float, float]:
        """Now: the threads' CPU waits, this thread's CPU time, the process's, and gc's."""
        return _waits_for_cpu(), time.thread_time(), time.process_time(), self._gc.total

    def _check(self) -> None:
        """Record a stall if the loop was held since the last beat (and start a new one)."""
        late = time.monotonic() - self._beat_at - self.INTERVAL
        now = self._clocks()
        waited = _waited(self._before[0], now[0])
        mine, everyone, collecting = (b - a for a, b in zip(self._before[1:], now[1:], strict=True))
        # What other threads ran meanwhile held the GIL, mostly: the loop thread waited for
        # it (a test's own worker thread, a to_thread job), not for the code it runs.
        others = max(0.0, everyone - mine)
        if _SCHEDSTAT is not None:
            blocked = late - waited - others - collecting
        else:
            blocked = min(late, mine) - collecting
        if blocked > self.threshold_s and not self._idle:
            self.stalls.append(Stall(blocked, late, self._stack or NO_STACK))
        self._beat_at, self._before, self._stack = time.monotonic(), self._clocks(), ""
        self._idle = False

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL)
            self._check()

    def _watch(self) -> None:
        """Capture the loop thread's stack once per stall, while it is stalled."""
        while not self._stop.wait(self.INTERVAL):
            overdue = time.monotonic() - self._beat_at - self.INTERVAL
            if overdue > self.threshold_s / 2 and (not self._stack or self._idle):
                # (Re-sampled while idle: code may take the loop once it wakes.)
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self._stack, self._idle = _loop_stack(frame)

    async def run(self, test: Awaitable[T]) -> T:
        self._loop_thread = threading.get_ident()
        self._beat_at, self._before = time.monotonic(), self._clocks()
        beat = asyncio.create_task(self._beat(), name="loop-block-guard")
        watchdog = threading.Thread(target=self._watch, name="loop-block-guard", daemon=True)
        watchdog.start()
        gc.callbacks.append(self._gc)
        try:
            return await test
        finally:
            self._check()  # the stretch since the last beat (a test that never awaited)
            gc.callbacks.remove(self._gc)
            self._stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            watchdog.join()


def _log_stalls(path: Path, test: str, stalls: list[Stall]) -> None:
    with path.open("a") as log:
        for stall in stalls:
            log.write(f"=== {test}\n{stall}\n")


@pytest.fixture(autouse=True)
def loop_block_guard(request: pytest.FixtureRequest) -> Iterator[LoopBlockGuard | None]:
    """Fail an async test whose event loop was blocked for more than ``LOOP_BLOCK_MS`` (its
    body only: fixtures' setup and teardown are not watched). ``loop_block_ok`` records the
    stalls without failing; the guard is the fixture's value (None for a sync test)."""
    item = request.node
    test = getattr(item, "obj", None)
    if LOOP_BLOCK_MS <= 0 or not isinstance(item, pytest.Function):
        yield None
        return
    if not inspect.iscoroutinefunction(test):
        yield None
        return
    guard = LoopBlockGuard(LOOP_BLOCK_MS / 1000)
    tolerated = item.get_closest_marker("loop_block_ok") is not None

    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> None:
        coro: Coroutine[Any, Any, None] = test(*args, **kwargs)
        try:
            await guard.run(coro)
        finally:
            if STALL_LOG and guard.stalls:
                _log_stalls(Path(STALL_LOG), item.nodeid, guard.stalls)
        # A stall whose stack the watchdog never caught is not held against the test: the
        # watchdog thread could not run at all (the whole process was held: page faults,
        # the host), so nothing says the test's code held the loop. (Still logged.)
        seen = [s for s in guard.stalls if s.stack != NO_STACK]
        if seen and not tolerated:
            worst = max(seen, key=lambda s: s.blocked_s)
            pytest.fail(f"{len(seen)} stall(s) of the event loop; the worst: {worst}")

    item.obj = guarded
    try:
        yield guard
    finally:
        item.obj = test
