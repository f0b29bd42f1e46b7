"""A tiny llama sharded over 2 ranks on 127.0.0.1 (MLX's ring backend), through the server.

Real processes throughout: rank 0 is ``mlx_lm server`` under the guard, rank 1 its follower,
talking over TCP on loopback. The same weights also run as an ordinary one-process model, so
every answer can be compared token for token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from tests.conftest import eventually
from tests.integration.conftest import Running, server_factory

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TWO_RANKS = {"hosts": ["127.0.0.1", "127.0.0.1"], "backend": "ring", "mode": "tensor"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> AsyncIterator[Running]:
    path = str(tiny_models["a"])
    async with server_factory(tmp_path_factory.mktemp("distributed")) as start:
        yield await start(
            {
                "sharded": {"path": path, "distributed": TWO_RANKS},
                "single": {"path": path},
            },
            max_loaded_models=1,
            liveness_interval=0,
        )


def ranks_of(run: Running, name: str) -> list[psutil.Process]:
    """The processes of a distributed model's group: rank 0 and its followers."""
    worker = run.supervisor.workers[name]
    assert worker.proc is not None
    leader = psutil.Process(worker.proc.pid)
    return [leader, *leader.children(recursive=True)]


async def complete(run: Running, model: str, prompt: str, **extra: Any) -> tuple[int, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0, **extra}
    async with run.http.post("/v1/completions", json=body) as r:
        return r.status, await r.json()


async def test_sharded_answers_exactly_as_one_process(run: Running) -> None:
    prompts = ["hello", "The lighthouse keeper", "1 2 3 4"]
    sharded = [await complete(run, "sharded", p) for p in prompts]
    assert [len(ranks_of(run, "sharded"))] == [2], "rank 0 and one follower"
    single = [await complete(run, "single", p) for p in prompts]
    for (s_status, s_body), (o_status, o_body) in zip(sharded, single, strict=True):
        assert s_status == o_status == 200, (s_body, o_body)
        assert s_body["choices"][0]["text"] == o_body["choices"][0]["text"]
        assert s_body["model"] == "sharded"
    # Chat, streamed, at temperature 0: the same text as the one-process model.
    texts = {}
    for name in ("sharded", "single"):
        status, lines = await run.stream(name, temperature=0, max_tokens=16)
        assert status == 200 and lines[-1] == b"[DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        texts[name] = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
    assert texts["sharded"] == texts["single"] and texts["sharded"]


async def test_one_model_even_when_sharded(run: Running) -> None:
    """max_loaded_models: 1 holds: a distributed model is one model, swapped as one."""
    assert (await complete(run, "sharded", "hi"))[0] == 200
    assert run.supervisor.loaded() == ["sharded"]
    pids = [p.pid for p in ranks_of(run, "sharded")]
    assert (await complete(run, "single", "hi"))[0] == 200
    assert run.supervisor.loaded() == ["single"]
    await eventually(
        lambda: not any(psutil.pid_exists(p) and _running(p) for p in pids),
        what="every rank of the unloaded sharded model to exit",
    )
    shown = await (await run.http.get("/api/models/sharded")).json()
    assert shown["distributed"] == {
        "hosts": ["127.0.0.1", "127.0.0.1"], "ranks": 2, "local_ranks": 2,
        "backend": "ring", "mode": "tensor",
    }  # fmt: skip
    listed = (await (await run.http.get("/v1/models")).json())["data"]
    assert [m["id"] for m in listed if m["status"] == "loaded"] == ["single"]


async def test_killed_rank_fails_the_request_and_the_next_recovers(run: Running) -> None:
    assert (await complete(run, "sharded", "warm up"))[0] == 200
    follower = ranks_of(run, "sharded")[1]
    body = {
        "model": "sharded",
        "prompt": "a long story",
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    got_error = False
    async with run.http.post("/v1/completions", json=body) as r:
        assert r.status == 200
        killed = False
        async for line in r.content:
            if not killed and line.startswith(b"data: {"):
                os.kill(follower.pid, signal.SIGKILL)
                killed = True
            if line.startswith(b"data: ") and b'"error"' in line:
                got_error = True
    assert got_error, "the client is told the stream broke"
    crash = await run.event("worker.crashed")
    assert crash.model == "sharded"
    assert "a rank of the sharded model exited" in str(crash.data["reason"])
    assert "rank 1 (127.0.0.1) was killed by signal 9" in str(crash.data["log_tail"])
    status, answer = await complete(run, "sharded", "hello again")
    assert status == 200, answer
    assert len(ranks_of(run, "sharded")) == 2


async def test_seed_and_a_client_leaving_mid_stream_do_not_hang_it(run: Running) -> None:
    """The known trap: a seeded request whose client leaves mid-stream hung every later
    request of a sharded mlx_lm server. The seed is dropped for distributed models."""
    body = {"model": "sharded", "prompt": "story", "max_tokens": 500, "seed": 7, "stream": True}
    async with asyncio.timeout(90):  # hung for good without the fix (reproduced)
        for _ in range(2):
            async with run.http.post("/v1/completions", json=body) as r:
                assert r.status == 200
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        break  # leave mid-stream
        status, answer = await complete(run, "sharded", "still there?", seed=3)
    assert status == 200, answer


async def test_stopping_the_server_leaves_no_rank(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    async with server_factory(tmp_path) as start:
        run = await start({"sharded": {"path": str(tiny_models["b"]), "distributed": TWO_RANKS}})
        assert (await complete(run, "sharded", "hi"))[0] == 200
        pids = [p.pid for p in ranks_of(run, "sharded")]
        assert len(pids) == 2
        run.pids.update(pids)  # the factory's teardown fails if any of them survives
    assert not [p for p in pids if _running(p)]


def _running(pid: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


async def test_heads_that_do_not_divide_are_refused_before_any_rank_starts(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    three = {**TWO_RANKS, "hosts": ["127.0.0.1"] * 3}  # 4 heads, 2 kv heads: not by 3
    async with server_factory(tmp_path) as start:
        run = await start({"odd": {"path": str(tiny_models["a"]), "distributed": three}})
        status, data = await complete(run, "odd", "hi")
        assert status == 503
        assert data["error"]["code"] == "model_not_shardable"
        assert "does not divide by 3" in data["error"]["message"]
        assert "mode: pipeline" in data["error"]["message"]
        assert not run.kinds("worker.crashed")


async def test_unreachable_host_fails_the_start_naming_it(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    # 192.0.2.1 is TEST-NET-1: never routed, so nothing is ever contacted.
    remote = {**TWO_RANKS, "hosts": ["127.0.0.1", "192.0.2.1"], "connect_timeout": 1}
    async with server_factory(tmp_path) as start:
        run = await start({"far": {"path": str(tiny_models["a"]), "distributed": remote}})
        status, data = await complete(run, "far", "hi")
        assert status == 503, data
        message = data["error"]["message"]
        assert "192.0.2.1" in message and "unreachable" in message, message
