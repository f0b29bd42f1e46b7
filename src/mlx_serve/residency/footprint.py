"""One model's memory figures as the scheduler plans with them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mlx_serve.residency.estimate import Estimate

__all__ = ["Footprint"]


@dataclass(frozen=True)
class Footprint:
    """Estimate, what earlier loads measured, and what this load measures (bytes).

    Frozen: the worker that owns it replaces it through its own methods, so a reader always
    sees one consistent set of figures.
    """

    estimate: Estimate | None = None
    learned_bytes: int | None = None  # the peak of the last load (this run or an earlier one)
    measured_bytes: int | None = None  # the latest sample while loaded
    peak_bytes: int | None = None  # the highest sample of the current load

    @property
    def planned_bytes(self) -> int:
        """What the scheduler counts: never less than anything seen or expected."""
        estimate = self.estimate.total_bytes if self.estimate is not None else 0
        return max(estimate, self.learned_bytes or 0, self.peak_bytes or 0)

    def sampled(self, value: int) -> Footprint:
        return replace(self, measured_bytes=value, peak_bytes=max(value, self.peak_bytes or 0))

    def unloaded(self) -> Footprint:
        """The load's peak becomes what was learned; the live figures go."""
        learned = self.peak_bytes if self.peak_bytes is not None else self.learned_bytes
        return replace(self, learned_bytes=learned, measured_bytes=None, peak_bytes=None)

    def to_json(self) -> dict[str, Any]:
        estimate = self.estimate.to_json() if self.estimate is not None else {}
        return {
            **estimate,
            "learned_bytes": self.learned_bytes,
            "measured_bytes": self.measured_bytes,
            "peak_bytes": self.peak_bytes,
            "planned_bytes": self.planned_bytes,
        }
