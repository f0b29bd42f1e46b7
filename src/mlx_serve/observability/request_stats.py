"""Per-model request statistics over a bounded window: counts, errors and percentiles."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mlx_serve.supervisor.events import Event

#: Requests kept per model for percentiles: enough for stable p99, bounded in memory.
WINDOW = 1000


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class ModelStats:
    count: int = 0
    errors: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    queued: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tokens_per_s: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def add(self, data: dict[str, Any]) -> None:
        self.count += 1
        status = data.get("status")
        if not isinstance(status, int) or status >= 400:
            self.errors += 1
            return
        for key, series in (
            ("ttft_s", self.ttft),
            ("latency_s", self.latency),
            ("queued_s", self.queued),
            ("tokens_per_s", self.tokens_per_s),
        ):
            value = data.get(key)
            if isinstance(value, int | float):
                series.append(float(value))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "errors": self.errors}
        for name, series in (
            ("ttft", self.ttft),
            ("latency", self.latency),
            ("queued", self.queued),
        ):
            values = list(series)
            for q in (50, 95, 99):
                p = percentile(values, q)
                out[f"{name}_p{q}_s"] = None if p is None else round(p, 4)
        tps = percentile(list(self.tokens_per_s), 50)
        out["tokens_per_s_p50"] = None if tps is None else round(tps, 1)
        return out


class RequestStats:
    """Listener for ``request`` events; one :class:`ModelStats` per model."""

    def __init__(self) -> None:
        self.models: dict[str, ModelStats] = {}

    def __call__(self, event: Event) -> None:
        if event.kind == "request" and event.model is not None:
            self.models.setdefault(event.model, ModelStats()).add(event.data)

    def summary(self, model: str) -> dict[str, Any]:
        return self.models.get(model, ModelStats()).summary()
