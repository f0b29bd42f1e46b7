"""A short memory history for the dashboard: one sample every few seconds, kept for a while.

The dashboard charts memory over the last minutes. Kept in the page alone, that chart starts
empty on every load; kept here, ``GET /api/stats?history=10m`` hands the page the last ten
minutes at once. The ring is bounded by count (retention / interval samples) and by age, so
it costs a few hundred small objects whatever the uptime.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Seconds between samples, and how long they are kept.
DEFAULT_INTERVAL = 5.0
DEFAULT_RETENTION = 30 * 60.0


@dataclass(frozen=True)
class MemorySample:
    """Memory at one moment: the machine's, the router's and each resident model's RSS
    (the worker's whole process tree; a model absent from ``models`` held none)."""

    t: float  # unix time
    available_bytes: int
    total_bytes: int
    router_rss_bytes: int
    models: Mapping[str, int] = field(default_factory=dict)

    @property
    def workers_rss_bytes(self) -> int:
        return sum(self.models.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 3),
            "available_bytes": self.available_bytes,
            "total_bytes": self.total_bytes,
            "workers_rss_bytes": self.workers_rss_bytes,
            "router_rss_bytes": self.router_rss_bytes,
            "models": dict(self.models),
        }


class MemoryHistory:
    """The newest samples, at most ``retention`` seconds old, oldest first."""

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, retention: float = DEFAULT_RETENTION
    ) -> None:
        if not (interval > 0 and retention >= interval):
            raise ValueError(f"need 0 < interval <= retention, got {interval=}, {retention=}")
        self.interval = interval
        self.retention = retention
        # One more than retention/interval: a full window has a sample at each end.
        self._samples: deque[MemorySample] = deque(maxlen=math.ceil(retention / interval) + 1)

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, sample: MemorySample) -> None:
        """Add ``sample``; samples older than the retention (by its time) are dropped. A
        sample older than the newest (a clock step back) restarts the history."""
        if self._samples and sample.t < self._samples[-1].t:
            self._samples.clear()
        self._samples.append(sample)
        cutoff = sample.t - self.retention
        while self._samples and self._samples[0].t < cutoff:
            self._samples.popleft()

    def window(self, seconds: float, now: float | None = None) -> list[MemorySample]:
        """The samples of the last ``seconds`` (at most the retention) before ``now``
        (default: the newest sample's time), oldest first."""
        if not self._samples:
            return []
        end = self._samples[-1].t if now is None else now
        start = end - min(seconds, self.retention)
        return [s for s in self._samples if start <= s.t <= end]

    def to_json(self, seconds: float, now: float | None = None) -> dict[str, Any]:
        """What ``/api/stats?history=`` adds to the stats: the window asked for (clamped to
        the retention), the sampling interval and the samples."""
        return {
            "window_s": min(seconds, self.retention),
            "interval_s": self.interval,
            "retention_s": self.retention,
            "samples": [s.to_json() for s in self.window(seconds, now)],
        }
