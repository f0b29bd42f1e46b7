"""Memory: RSS of each worker's process tree, system availability, the load guard, and the
sampler that keeps the dashboard's short memory history (:mod:`.history`).

The load guard refuses a model whose weights on disk clearly exceed the memory available
right now (after the swap freed what it could), instead of letting a laptop swap itself to
death. "Clearly" leaves room for estimates being rough: weights are mapped, not copied, on
Apple silicon, and the KV cache comes on top.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil

from mlx_serve.observability.history import MemoryHistory, MemorySample


def tree_rss_bytes(pid: int | None) -> int | None:
    """Resident memory of ``pid`` and all its descendants; None if it is gone."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def own_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


@dataclass(frozen=True)
class SystemMemory:
    total_bytes: int
    available_bytes: int


def system_memory() -> SystemMemory:
    vm = psutil.virtual_memory()
    return SystemMemory(total_bytes=int(vm.total), available_bytes=int(vm.available))


#: A model is refused when its weights exceed this share of the available memory.
LOAD_GUARD_RATIO = 1.0


def load_refusal(estimated_bytes: int | None, available_bytes: int) -> str | None:
    """Why a model of ``estimated_bytes`` must not be loaded now, or None if it may."""
    if estimated_bytes is None or estimated_bytes <= available_bytes * LOAD_GUARD_RATIO:
        return None
    gib = 2**30
    return (
        f"the model's weights ({estimated_bytes / gib:.1f} GiB) exceed the memory available "
        f"({available_bytes / gib:.1f} GiB); unload other programs or use a smaller model"
    )


def sample_memory(pids: Mapping[str, int | None], now: float) -> MemorySample:
    """Memory now: the system's, the router's, and the RSS of each model's process tree
    (``pids``: model name -> worker pid; models without a pid, or whose process is gone, are
    left out). Blocking (it walks process trees): call it in a thread."""
    mem = system_memory()
    models: dict[str, int] = {}
    for name, pid in pids.items():
        rss = tree_rss_bytes(pid)
        if rss is not None:
            models[name] = rss
    return MemorySample(
        t=now,
        available_bytes=mem.available_bytes,
        total_bytes=mem.total_bytes,
        router_rss_bytes=own_rss_bytes(),
        models=models,
    )


async def watch_history(
    history: MemoryHistory,
    resident: Callable[[], Mapping[str, int | None]],
    wall: Callable[[], float],
) -> None:
    """Record a :func:`sample_memory` of the ``resident()`` models into ``history`` every
    ``history.interval`` seconds (the first one at once), until cancelled. The process walk
    runs in a thread: it takes milliseconds that the event loop should not wait for."""
    while True:
        pids = dict(resident())  # read on the loop: the supervisor's state is not thread-safe
        # A transient /proc hiccup costs this sample only, not the history.
        with contextlib.suppress(OSError, psutil.Error):
            history.record(await asyncio.to_thread(sample_memory, pids, wall()))
        await asyncio.sleep(history.interval)
