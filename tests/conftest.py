"""Shared helpers: waiting on conditions with a deadline (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

# No test may reach the network: the hub client must fail fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


#: How often waits on a condition re-check it (every wait also has a deadline).
POLL_INTERVAL = 0.01


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until ``predicate()`` holds, polling; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


def error_code(body: object) -> object:
    """The ``code`` of an error body in any dialect's shape: OpenAI's and Anthropic's
    ``{"error": {"code"}}``, Ollama's ``{"error": "message", "code"}``."""
    assert isinstance(body, dict), body
    error = body.get("error")
    return error.get("code") if isinstance(error, dict) else body.get("code")
