"""The memory watcher: ``memory.low`` / ``memory.ok`` events when available memory crosses the
warning line.

It lives with the supervisor (whose event bus it feeds) rather than in
``observability.memory``, so that module stays a leaf the supervisor can import without a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mlx_serve.observability.memory import system_memory
from mlx_serve.supervisor.events import Event, MemoryLow, MemoryOk


async def watch_memory(
    emit: Callable[[Event], object], warning_ratio: float, interval: float = 5.0
) -> None:
    """Emit ``memory.low`` when available memory drops below ``warning_ratio`` of the total,
    once per crossing (and ``memory.ok`` when it recovers), so the log is not flooded."""
    low = False
    while True:
        mem = system_memory()
        now_low = mem.available_bytes < warning_ratio * mem.total_bytes
        if now_low != low:
            low = now_low
            kind = MemoryLow if low else MemoryOk
            emit(kind(available_bytes=mem.available_bytes, total_bytes=mem.total_bytes))
        await asyncio.sleep(interval)
