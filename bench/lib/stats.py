"""Summaries of timing samples: median, nearest-rank p95 (:func:`mlx_serve.stats.percentile`,
the server's own), min, max."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlx_serve.stats import percentile


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


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
