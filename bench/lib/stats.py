"""Summaries of timing samples: median, nearest-rank p95 (:func:`mlx_serve.stats.percentile`,
the server's own), min, max."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from mlx_serve.stats import percentile


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def median_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000
) -> tuple[float, float] | None:
    """A bootstrap interval for the median of ``values`` (percentile method, fixed seed, so a
    report is reproducible from its samples): how far the median of this many samples moves
    from run to run on its own. None for fewer than 5 samples."""
    if len(values) < 5:
        return None
    rng = random.Random(0)
    vals = list(values)
    meds = sorted(median(rng.choices(vals, k=len(vals))) or 0.0 for _ in range(resamples))
    tail = (1 - level) / 2
    return meds[int(tail * resamples)], meds[min(resamples - 1, int((1 - tail) * resamples))]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "n": len(vals),
        "median": median(vals),
        "p95": percentile(vals, 95),  # the max for fewer than 20 samples
        "min": min(vals) if vals else None,
        "max": max(vals) if vals else None,
        "samples": [round(v, 6) for v in vals],
    }
