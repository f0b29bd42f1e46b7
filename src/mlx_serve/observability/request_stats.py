"""Per-model request statistics over a bounded window: outcomes, errors and percentiles.

Every outcome is counted, by HTTP status and error code: requests a worker answered and
requests refused before one was asked (an unknown model, a bad body, a missing key). Those
for no configured model are kept apart, under :data:`UNKNOWN`.

The timings describe the worker, not the wait for it: ``ttft`` runs from the request's
admission to a ready worker to its first token, ``tokens_per_s`` over the generation only.
The wait before admission is kept in two series: ``queued`` (behind other requests) and
``load`` (for the model itself to start: only requests that waited for a load).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from mlx_serve.stats import percentile
from mlx_serve.supervisor.events import Event, RequestFinished

#: Requests kept per model for percentiles: enough for stable p99, bounded in memory.
WINDOW = 1000
#: The name requests that named no configured model are counted under (as in ``/metrics``).
UNKNOWN = "unknown"


def _window() -> deque[float]:
    return deque(maxlen=WINDOW)


@dataclass
class ModelStats:
    count: int = 0
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    cold_starts: int = 0
    ttft: deque[float] = field(default_factory=_window)
    latency: deque[float] = field(default_factory=_window)
    queued: deque[float] = field(default_factory=_window)
    load: deque[float] = field(default_factory=_window)
    tokens_per_s: deque[float] = field(default_factory=_window)

    def add(self, r: RequestFinished) -> None:
        self.count += 1
        self.statuses[str(r.status)] += 1
        if r.status >= 400:
            self.errors += 1
            self.error_codes[r.code or str(r.status)] += 1
            return
        if r.load_s:
            self.cold_starts += 1
            self.load.append(r.load_s)
        for value, series in (
            (r.ttft_s, self.ttft),
            (r.latency_s, self.latency),
            (r.queued_s, self.queued),
            (r.tokens_per_s, self.tokens_per_s),
        ):
            if value is not None:
                series.append(value)

    def outcomes(self) -> dict[str, Any]:
        """Counts only: requests, errors, by status and by error code."""
        return {
            "count": self.count,
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "error_codes": dict(self.error_codes.most_common()),
        }

    def summary(self) -> dict[str, Any]:
        out = self.outcomes()
        for name, series in (
            ("ttft", self.ttft),
            ("latency", self.latency),
            ("queued", self.queued),
            ("load", self.load),
        ):
            values = list(series)
            for q in (50, 95, 99):
                p = percentile(values, q)
                out[f"{name}_p{q}_s"] = None if p is None else round(p, 4)
        out["cold_starts"] = self.cold_starts
        tps = percentile(list(self.tokens_per_s), 50)
        out["tokens_per_s_p50"] = None if tps is None else round(tps, 1)
        return out


class RequestStats:
    """Listener for ``request`` events; one :class:`ModelStats` per model."""

    def __init__(self) -> None:
        self.models: dict[str, ModelStats] = {}
        self.unknown = ModelStats()  # requests that named no configured model

    def __call__(self, event: Event) -> None:
        if not isinstance(event, RequestFinished):
            return
        if event.model is None:
            self.unknown.add(event)
        else:
            self.models.setdefault(event.model, ModelStats()).add(event)

    def summary(self, model: str) -> dict[str, Any]:
        return self.models.get(model, ModelStats()).summary()

    def outcomes(self) -> dict[str, Any]:
        """Every request's outcome, all models together, and those for no configured model
        (``unknown``): for the status views' totals (``/api/stats``)."""
        total = ModelStats()
        for stats in (*self.models.values(), self.unknown):
            total.count += stats.count
            total.errors += stats.errors
            total.statuses.update(stats.statuses)
            total.error_codes.update(stats.error_codes)
        return {**total.outcomes(), UNKNOWN: self.unknown.outcomes()}
