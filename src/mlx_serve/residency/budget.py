"""Turning ``server.memory_budget`` into bytes on this machine.

``auto`` means different things where memory works differently:

- **macOS (Apple silicon)**: the GPU may only wire so much of the unified memory; MLX reports
  that limit as the device's recommended working set (about two thirds of RAM on 8-16 GB
  machines, three quarters on bigger ones). Past it, Metal allocations page and generation
  slows to a crawl. The budget is that figure minus :data:`AUTO_RESERVE_BYTES` for the parts
  of each worker that are not Metal buffers.
- **Linux (and a Mac where MLX cannot be asked)**: :data:`AUTO_SHARE` of physical memory; the
  rest is left for the desktop, the page cache the weights are read through, and the router.

Asking MLX costs an import of ``mlx.core``; it is done in a short-lived child process so the
router itself never holds MLX (nor a Metal device).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from mlx_serve.config.sizes import BudgetSpec, format_bytes

__all__ = ["AUTO_RESERVE_BYTES", "AUTO_SHARE", "Budget", "resolve_budget"]

AUTO_SHARE = 0.75
AUTO_RESERVE_BYTES = 1 * 2**30

_ASK_MLX = (
    "import mlx.core as mx\n"
    "info = mx.device_info() if hasattr(mx, 'device_info') else mx.metal.device_info()\n"
    "print(int(info.get('max_recommended_working_set_size', 0)))\n"
)


@dataclass(frozen=True)
class Budget:
    """A budget in bytes, and where the figure came from (for status and the README's "why")."""

    bytes: int
    source: str  # "configured", "75% of 31.3 GiB physical", "auto: ..."

    def __str__(self) -> str:
        return f"{format_bytes(self.bytes)} ({self.source})"


def resolve_budget(
    spec: BudgetSpec | None, *, total_bytes: int, platform: str = sys.platform
) -> Budget | None:
    """The budget in bytes for ``spec`` on a machine with ``total_bytes`` of physical memory."""
    if spec is None:
        return None
    if spec.bytes is not None:
        return Budget(spec.bytes, "configured")
    if spec.share is not None:
        return Budget(
            int(total_bytes * spec.share), f"{spec} of {format_bytes(total_bytes)} physical"
        )
    if platform == "darwin":
        working_set = _mlx_working_set()
        if working_set:
            return Budget(
                max(working_set - AUTO_RESERVE_BYTES, working_set // 2),
                f"auto: MLX's recommended working set {format_bytes(working_set)} "
                f"minus {format_bytes(AUTO_RESERVE_BYTES)}",
            )
    return Budget(
        int(total_bytes * AUTO_SHARE),
        f"auto: {AUTO_SHARE:.0%} of {format_bytes(total_bytes)} physical",
    )


def _mlx_working_set() -> int | None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ASK_MLX],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        value = int(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return value if value > 0 else None
