"""Lifecycle events: every state change, swap, load and crash is recorded as one ``Event``.

The bus keeps a bounded ring in memory (for status views and tests) and fans each event out
to subscribers (the SSE stream, the JSON-lines file). Publishing never blocks: a subscriber
that cannot keep up loses events rather than stalling the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from mlx_serve.event_filter import event_matches

#: Every event class, by kind; filled by :func:`_kind`.
EVENT_TYPES: dict[str, type[Event]] = {}

_BASE_FIELDS = frozenset({"model", "extra", "seq", "ts"})

E = TypeVar("E", bound="Event")


def _kind(name: str) -> Callable[[type[E]], type[E]]:
    def register(cls: type[E]) -> type[E]:
        cls.kind = name
        EVENT_TYPES[name] = cls
        return cls

    return register


@dataclass(frozen=True, kw_only=True)
class Event:
    """One thing that happened; a subclass per ``kind`` (a dotted noun like ``worker.state``).

    Producers build the subclass, so its fields are typed where they are made, and consumers
    (metrics, request stats, the log) match on the class instead of re-checking a dict. The
    bus stamps ``seq`` and ``ts`` when it publishes. ``extra`` holds details that are open by
    nature (what a worker reports about its own load, a config reload's diff); :attr:`data`
    and :meth:`to_json` flatten it next to the typed fields, which is the shape the event
    stream, the log file and the dashboard have always had.
    """

    kind: ClassVar[str] = "event"
    model: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0
    ts: float = 0.0  # wall-clock seconds

    @property
    def data(self) -> dict[str, Any]:
        """The event's own fields and its extras, as one flat dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _BASE_FIELDS}
        out.update(self.extra)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "model": self.model, **self.data}


def make_event(kind: str, model: str | None = None, **data: Any) -> Event:
    """The event of ``kind`` from loose fields (the known ones typed, the rest in ``extra``):
    for tests and tools that replay events; the server's own code builds the classes."""
    cls = EVENT_TYPES[kind]
    own = {f.name for f in fields(cls)} - _BASE_FIELDS
    known = {k: v for k, v in data.items() if k in own}
    extra = {k: v for k, v in data.items() if k not in own}
    return cls(model=model, extra=extra, **known)


# -- the worker's lifecycle -----------------------------------------------------------------


@_kind("worker.state")
@dataclass(frozen=True, kw_only=True)
class WorkerStateChanged(Event):
    """A state change; ``old``/``new`` are states, ``old_status``/``status`` their public
    names. The extras say why (``reason``), or what is now known (``pid``, ``exit_code``...)."""

    old: str
    new: str
    old_status: str
    status: str


@_kind("model.loaded")
@dataclass(frozen=True, kw_only=True)
class ModelLoaded(Event):
    """The model answered its first probe; extras: what the worker measured of its start."""

    duration_s: float
    pid: int
    type: str


@_kind("model.unloaded")
@dataclass(frozen=True, kw_only=True)
class ModelUnloaded(Event):
    reason: str
    was: str  # the state it was stopped from
    duration_s: float


@_kind("worker.crashed")
@dataclass(frozen=True, kw_only=True)
class WorkerCrashed(Event):
    reason: str = ""
    exit_code: int | None = None
    signal: str | None = None
    pid: int | None = None
    log_tail: str = ""


@_kind("worker.kill")
@dataclass(frozen=True, kw_only=True)
class WorkerKilled(Event):
    """The worker ignored SIGTERM for ``after_s`` seconds and was SIGKILLed."""

    pid: int
    after_s: float


@_kind("worker.unresponsive")
@dataclass(frozen=True, kw_only=True)
class WorkerUnresponsive(Event):
    pid: int
    misses: int
    timeout_s: float


@_kind("worker.port_taken")
@dataclass(frozen=True, kw_only=True)
class WorkerPortTaken(Event):
    port: int | None


@_kind("worker.drain")
@dataclass(frozen=True, kw_only=True)
class WorkerDrain(Event):
    for_model: str | None


@_kind("swap")
@dataclass(frozen=True, kw_only=True)
class Swap(Event):
    """``model`` is stopped to make room for ``to``."""

    to: str | None


# -- memory and files -----------------------------------------------------------------------


@_kind("model.evicted")
@dataclass(frozen=True, kw_only=True)
class ModelEvicted(Event):
    """Stopped to make room; extras: the numbers of the decision (``used_bytes``...)."""

    reason: str
    victim_bytes: int | None = None
    budget_bytes: int | None = None
    max_loaded: int | None = None


@_kind("model.refused")
@dataclass(frozen=True, kw_only=True)
class ModelRefused(Event):
    reason: str
    needed_bytes: int | None = None
    budget_bytes: int | None = None


@_kind("model.footprint")
@dataclass(frozen=True, kw_only=True)
class ModelFootprint(Event):
    measured_bytes: int
    estimate_bytes: int | None = None
    planned_bytes: int | None = None


@_kind("model.missing_files")
@dataclass(frozen=True, kw_only=True)
class ModelMissingFiles(Event):
    reason: str
    code: str
    path: str | None = None
    repo: str | None = None


@_kind("model.pull")
@dataclass(frozen=True, kw_only=True)
class ModelPull(Event):
    """A download's start, progress or end (``status``); extras: its figures."""

    repo: str
    status: str


@_kind("model.deleted")
@dataclass(frozen=True, kw_only=True)
class ModelDeleted(Event):
    path: str
    freed_bytes: int


@_kind("memory.low")
@dataclass(frozen=True, kw_only=True)
class MemoryLow(Event):
    available_bytes: int
    total_bytes: int | None = None


@_kind("memory.ok")
@dataclass(frozen=True, kw_only=True)
class MemoryOk(Event):
    available_bytes: int
    total_bytes: int | None = None


# -- spares ------------------------------------------------------------------------------------
# (``model`` is the spare's model type: a spare holds no model.)


@_kind("spare.starting")
@dataclass(frozen=True, kw_only=True)
class SpareStarting(Event):
    pid: int


@_kind("spare.ready")
@dataclass(frozen=True, kw_only=True)
class SpareReady(Event):
    pid: int
    duration_s: float
    rss_bytes: int | None = None


@_kind("spare.taken")
@dataclass(frozen=True, kw_only=True)
class SpareTaken(Event):
    pid: int
    by: str  # the model path it was given


@_kind("spare.failed")
@dataclass(frozen=True, kw_only=True)
class SpareFailed(Event):
    reason: str
    failures: int
    gave_up: bool
    log_tail: str = ""


@_kind("spare.stopped")
@dataclass(frozen=True, kw_only=True)
class SpareStopped(Event):
    pid: int
    reason: str


# -- the server --------------------------------------------------------------------------------


@_kind("supervisor.started")
@dataclass(frozen=True, kw_only=True)
class SupervisorStarted(Event):
    models: list[str]
    memory_budget_bytes: int | None = None
    memory_budget_source: str | None = None
    max_loaded_models: int | None = None


@_kind("supervisor.stopped")
@dataclass(frozen=True, kw_only=True)
class SupervisorStopped(Event):
    pass


@_kind("config.reload")
@dataclass(frozen=True, kw_only=True)
class ConfigReload(Event):
    """A models.yaml reload; extras: its outcome and diff (added, removed, changed...)."""

    status: str
    trigger: str | None = None
    error: str | None = None


@_kind("auth.failed")
@dataclass(frozen=True, kw_only=True)
class AuthFailed(Event):
    path: str
    remote: str | None
    reason: str


@_kind("request")
@dataclass(frozen=True, kw_only=True)
class RequestFinished(Event):
    """One request's outcome and timings (``model`` None: it named no configured model)."""

    endpoint: str
    status: int
    stream: bool = False
    code: str | None = None
    queued_s: float | None = None
    load_s: float | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None
    retries: int = 0
    error: str | None = None


class EventBus:
    """Ring buffer plus fan-out to subscriber queues."""

    def __init__(self, wall: Callable[[], float], capacity: int = 2000) -> None:
        self._wall = wall
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._listeners: list[Callable[[Event], None]] = []

    def emit(self, event: E) -> E:
        """Publish ``event``, stamped with the next sequence number and the time; returns the
        stamped event."""
        event = replace(event, seq=next(self._seq), ts=self._wall())
        self._ring.append(event)
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)
        for listener in self._listeners:
            listener(event)
        return event

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` synchronously for every event (metrics, file sinks)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def recent(
        self, *, model: str | None = None, kind: str | None = None, since: float | None = None
    ) -> list[Event]:
        return [
            e
            for e in self._ring
            if event_matches(e.kind, e.model, e.ts, want_model=model, want_kind=kind, since=since)
        ]

    @contextlib.contextmanager
    def subscribe(self, maxsize: int = 1000) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
