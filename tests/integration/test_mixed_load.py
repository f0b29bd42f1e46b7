"""Mixed load: a few hundred requests over two text models and an embedding model, 50 at a
time, one model resident at a time. Nothing lost, nothing misrouted (every answer equals that
model's temperature-0 reference), and never two workers alive at the same moment.

The 1,000-request version of the same run is ``bench/`` material; this one bounds CI time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path

import aiohttp
import psutil
import pytest

from mlx_serve.tiny_models.embedding import embedding_model_dir
from tests.conftest import POLL_INTERVAL, eventually
from tests.integration.conftest import Running, StartServer

pytestmark = pytest.mark.slow

REQUESTS = 240
CONCURRENCY = 50
PROMPT = [{"role": "user", "content": "Name three colours."}]


async def chat(http: aiohttp.ClientSession, model: str, *, stream: bool) -> str:
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0,
            "stream": stream}  # fmt: skip
    async with http.post("/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        if not stream:
            data = await r.json()
            assert data["model"] == model
            return str(data["choices"][0]["message"]["content"])
        text, done = "", False
        async for line in r.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: {"):
                event = json.loads(line[6:])
                assert "error" not in event, event
                assert event["model"] == model
                text += event["choices"][0]["delta"].get("content") or ""
        assert done, "stream ended without [DONE]"
        return text


async def embed(http: aiohttp.ClientSession) -> list[float]:
    async with http.post(
        "/v1/embeddings",
        json={"model": "embed", "input": "a lighthouse", "encoding_format": "float"},
    ) as r:
        assert r.status == 200, await r.text()
        data = await r.json()
        return [round(x, 4) for x in data["data"][0]["embedding"]]


def open_fds() -> int:
    """File descriptors of this process (0 where /proc is missing: the check is skipped)."""
    fd_dir = Path("/proc/self/fd")
    return sum(1 for _ in fd_dir.iterdir()) if fd_dir.is_dir() else 0


def live_workers(run: Running) -> int:
    alive = 0
    for worker in run.supervisor.workers.values():
        proc = worker.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                alive += psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
    return alive


async def test_mixed_load_loses_and_misroutes_nothing(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    models = {
        "a": {"type": "text", "path": str(tiny_models["a"])},
        "b": {"type": "text", "path": str(tiny_models["b"])},
        "embed": {"type": "embedding", "path": str(embedding_model_dir())},
    }
    run = await start_server(models, startup_timeout="120s", fair_requests=16, fair_wait="3s")
    reference = {
        "a": await chat(run.http, "a", stream=False),
        "b": await chat(run.http, "b", stream=False),
    }
    assert reference["a"] != reference["b"], "the two models must answer differently"
    reference_vector = await embed(run.http)

    most_alive = 0
    watching = True

    async def watch() -> None:  # exclusivity, sampled from the OS, all along the run
        nonlocal most_alive
        while watching:
            most_alive = max(most_alive, live_workers(run))
            await asyncio.sleep(POLL_INTERVAL)  # a sampler, not a wait for a state

    fds_before = open_fds()
    watcher = asyncio.create_task(watch())
    rng = random.Random(7)
    plan = [rng.choice(["a", "a", "b", "b", "embed"]) for _ in range(REQUESTS)]
    gate = asyncio.Semaphore(CONCURRENCY)
    outcomes: list[str] = []

    async def one(http: aiohttp.ClientSession, i: int, model: str) -> None:
        async with gate:
            if model == "embed":
                assert await embed(http) == reference_vector, f"request {i}: wrong embedding"
            else:
                answer = await chat(http, model, stream=i % 2 == 0)
                assert answer == reference[model], f"request {i} for {model} got another answer"
            outcomes.append(model)

    try:
        async with aiohttp.ClientSession(base_url=run.url) as http:
            await asyncio.wait_for(
                asyncio.gather(*(one(http, i, m) for i, m in enumerate(plan))), timeout=240
            )
    finally:
        watching = False
        await watcher
    assert len(outcomes) == REQUESTS, "a request was lost"
    assert most_alive <= 1, f"{most_alive} workers were alive at once"
    loads = len(run.kinds("model.loaded"))
    assert loads < REQUESTS / 4, f"{loads} loads for {REQUESTS} requests: swaps are thrashing"
    errors = [e.data for e in run.kinds("request") if e.data.get("status") != 200]
    assert errors == []
    if fds_before:  # the burst's 50 connections, both ends in this process, are all closed
        await eventually(
            lambda: open_fds() <= fds_before + 8,
            what="the burst's file descriptors to be released",
        )
