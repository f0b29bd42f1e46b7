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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlx_serve.event_filter import event_matches


@dataclass(frozen=True)
class Event:
    """One thing that happened. ``kind`` is a dotted noun like ``worker.state`` or ``swap``."""

    seq: int
    ts: float  # wall-clock seconds
    kind: str
    model: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "model": self.model, **self.data}


class EventBus:
    """Ring buffer plus fan-out to subscriber queues."""

    def __init__(self, wall: Callable[[], float], capacity: int = 2000) -> None:
        self._wall = wall
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._listeners: list[Callable[[Event], None]] = []

    def emit(self, kind: str, model: str | None = None, **data: Any) -> Event:
        event = Event(next(self._seq), self._wall(), kind, model, data)
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
