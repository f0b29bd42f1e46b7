"""Watching models.yaml: any change (including an editor's write-and-rename) triggers a reload.

The directory is watched, not the file: many editors save by writing a new file and renaming
it over the old one, which a watch on the old inode would miss.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles


async def watch_config(path: Path, on_change: Callable[[], Awaitable[object]]) -> None:
    """Call ``on_change`` after each burst of changes to ``path`` (debounced), forever."""
    target = await asyncio.to_thread(path.resolve)

    def is_target(_change: watchfiles.Change, changed: str) -> bool:
        return Path(changed).name == target.name

    async for _changes in watchfiles.awatch(
        target.parent, watch_filter=is_target, recursive=False, debounce=300, step=50
    ):
        await on_change()
