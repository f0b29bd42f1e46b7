"""The benchmarks' client: streamed chat completions timed chunk by chunk (TTFT, tokens/s),
batches of them at once, and waiting for a server to answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

PROMPT = "Tell me a long story about a lighthouse keeper and her cat."


@dataclass
class StreamResult:
    """One streamed chat completion as the client saw it."""

    ok: bool
    status: int | None
    ttft_s: float | None  # request sent -> first SSE data chunk with content
    total_s: float
    chunks: int  # SSE chunks that carried content
    completion_tokens: int | None  # from the usage block, when the server sent one
    decode_s: float | None  # first -> last content chunk
    last_s: float | None = None  # request sent -> last content chunk
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.completion_tokens or self.chunks

    @property
    def tokens_per_s(self) -> float | None:
        if self.decode_s is None or self.decode_s <= 0 or self.tokens < 2:
            return None
        return (self.tokens - 1) / self.decode_s

    @property
    def e2e_tokens_per_s(self) -> float | None:
        """Tokens over request sent -> last token: a late first chunk cannot flatter it."""
        if self.last_s is None or self.last_s <= 0 or self.tokens < 1:
            return None
        return self.tokens / self.last_s


def failed(total_s: float, error: str) -> StreamResult:
    return StreamResult(False, None, None, total_s, 0, None, None, None, error)


async def stream_chat(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    *,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
    started: float | None = None,
    retry_connect_until: float | None = None,
    exited: Callable[[], str | None] | None = None,
) -> StreamResult:
    """Stream one chat completion. ``started`` moves the clock's zero earlier (cold start of a
    process); ``retry_connect_until`` retries refused connections until then (port not open)
    unless ``exited`` says why the server will never open it."""
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": PROMPT}],
        **(extra or {}),
    }
    t0 = time.perf_counter() if started is None else started
    while True:
        try:
            return await _stream_once(session, base_url, body, t0)
        except aiohttp.ClientConnectorError as exc:
            if retry_connect_until is None or time.perf_counter() > retry_connect_until:
                return failed(time.perf_counter() - t0, f"connect failed: {exc}")
            if exited is not None and (why := exited()) is not None:
                return failed(time.perf_counter() - t0, why)
            await asyncio.sleep(0.02)


async def _stream_once(
    session: aiohttp.ClientSession, base_url: str, body: dict[str, Any], t0: float
) -> StreamResult:
    status: int | None = None
    first: float | None = None
    last: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    done = False
    error: str | None = None
    try:
        async with session.post(base_url + "/v1/chat/completions", json=body) as resp:
            status = resp.status
            if status != 200:
                text = (await resp.text())[:300]
                error = f"HTTP {status}: {text.strip()}"
            else:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        error = (
                            "stream error: "
                            + str(err.get("message", err) if isinstance(err, dict) else err)[:300]
                        )
                        continue
                    usage = chunk.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        usage_tokens = usage["completion_tokens"]
                    choices = chunk.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        first = now if first is None else first
                        last = now
                        chunks += 1
                if not done and error is None:
                    error = "stream ended without [DONE]"
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    total = time.perf_counter() - t0
    ok = status == 200 and done and error is None and chunks > 0
    return StreamResult(
        ok=ok,
        status=status,
        ttft_s=None if first is None else first - t0,
        total_s=total,
        chunks=chunks,
        completion_tokens=usage_tokens,
        decode_s=None if first is None or last is None else last - first,
        last_s=None if last is None else last - t0,
        error=error,
    )


async def run_concurrently(
    calls: Sequence[Callable[[], Coroutine[Any, Any, StreamResult]]], timeout: float
) -> tuple[list[StreamResult], float]:
    """Start every call at once; whatever has not finished after ``timeout`` counts as failed."""
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(call()) for call in calls]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    results: list[StreamResult] = []
    for task in tasks:
        if task.cancelled():
            results.append(failed(wall, f"no answer within {timeout:g}s"))
        elif (exc := task.exception()) is not None:
            results.append(failed(wall, repr(exc)))
        else:
            results.append(task.result())
    return results, wall


def error_summary(results: Sequence[StreamResult], limit: int = 4) -> list[str]:
    counts = Counter(r.error or "failed" for r in results if not r.ok)
    return [f"{n}x {msg}" for msg, n in counts.most_common(limit)]


async def wait_http_ok(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    exited: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``url`` until it answers 200; the seconds it took."""
    t0 = time.perf_counter()
    while True:
        if exited is not None and (why := exited()) is not None:
            raise RuntimeError(why)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:g}s")
        await asyncio.sleep(0.02)
