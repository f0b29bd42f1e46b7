"""The streaming relay forwards exactly what the worker sent, renamed, event by event, even
when it coalesces several events into one write (fast models): compared token for token with
the same request sent straight to the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import StartServer

pytestmark = pytest.mark.slow


async def sse_events(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    events: list[Any] = []
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        raw = await r.read()
    for block in raw.split(b"\n\n"):
        if not block.strip() or block.startswith(b":"):
            continue  # mlx_lm's ": keepalive" comments while it reads the prompt
        assert block.startswith(b"data: "), block  # every event whole, nothing interleaved
        data = block[6:]
        events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


async def test_relayed_stream_equals_the_workers_own(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server({"chat": {"type": "text", "path": str(tiny_models["a"])}})
    body: dict[str, Any] = {
        "model": "chat",
        "stream": True,
        "max_tokens": 64,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "stream_options": {"include_usage": True},
    }
    relayed = await sse_events(run.http, run.url + "/v1/chat/completions", body)
    worker = run.supervisor.workers["chat"]
    async with aiohttp.ClientSession() as http:
        direct = await sse_events(
            http,
            worker.base_url + "/v1/chat/completions",
            {**body, "model": worker.upstream_model},
        )
    assert relayed[-1] == direct[-1] == "[DONE]"
    assert len(relayed) == len(direct)

    def text(events: list[Any]) -> list[str]:
        return [
            e["choices"][0]["delta"].get("content") or ""
            for e in events
            if isinstance(e, dict) and e.get("choices")
        ]

    assert text(relayed) == text(direct)
    assert {e["model"] for e in relayed if isinstance(e, dict)} == {"chat"}
    usage = [e["usage"] for e in relayed if isinstance(e, dict) and e.get("usage")]
    assert usage and usage[-1]["completion_tokens"] > 1
    # The request event counted the tokens from the usage block, without parsing each event.
    request = run.kinds("request")[-1].data
    assert request["completion_tokens"] == usage[-1]["completion_tokens"]
