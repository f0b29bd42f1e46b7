"""Watching models.yaml: any change (including an editor's write-and-rename) triggers a reload.

The directory is watched, not the file: many editors save by writing a new file and renaming
it over the old one, which a watch on the old inode would miss.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

#: How often watchfiles' thread looks for changes and for a stop request, in ms.
WATCH_STEP_MS = 250


async def watch_config(path: Path, on_change: Callable[[], Awaitable[object]]) -> None:
    """Call ``on_change`` after each burst of changes to ``path`` (debounced), forever."""
    target = await asyncio.to_thread(path.resolve)

    def is_target(_change: watchfiles.Change, changed: str) -> bool:
        return Path(changed).name == target.name

    # ``step``: watchfiles' watching thread wakes (and takes the GIL) every step to look for
    # a stop request; at its default of 50 ms that was 20 wake-ups a second of an idle
    # server, half of its CPU (an idle router with a model loaded: 2.7 ms of CPU per second
    # with 50 ms, 1.3 with 250; an always-on server on a laptop should let the CPU sleep).
    # An edit is now applied 0.25-0.5 s after the editor saved (a burst is still one reload).
    async for _changes in watchfiles.awatch(
        target.parent, watch_filter=is_target, recursive=False, debounce=300, step=WATCH_STEP_MS
    ):
        await on_change()
