"""The event loop the server runs on: uvloop's when it is installed, asyncio's own otherwise.

Why: the router's time per streamed token is mostly event-loop work (a wake-up, a read, a
write), and on a small machine that CPU is taken from generation. Measured on the 2-core box
(``bench/README.md``, two interleaved runs), the same router on uvloop used 10-16% less CPU per
streamed token (61 vs 68-72 us, 69 vs 82 us), and its first token came +0.17 vs +0.60-0.85 ms
(+0.65 vs +0.76 ms) after direct ``mlx_lm``'s. uvloop is a dependency everywhere it builds (not
Windows); ``MLX_SERVE_EVENT_LOOP=asyncio`` runs on asyncio's loop instead (to rule the loop out
when something misbehaves).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Set to ``asyncio`` to run on asyncio's own loop even when uvloop is installed.
ENV_VAR = "MLX_SERVE_EVENT_LOOP"


def run(main: Coroutine[Any, Any, T]) -> T:
    """:func:`asyncio.run` on the loop described above."""
    if os.environ.get(ENV_VAR, "").strip().lower() != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional: asyncio's loop when it is missing
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def name() -> str:
    """Which loop runs the calling coroutine: ``uvloop`` or ``asyncio`` (for the start log)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
