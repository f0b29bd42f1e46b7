"""Real supervisor, real ``mlx_lm server`` workers, tiny random-weight models, real clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import Running, StartServer

pytestmark = pytest.mark.slow


def two_models(tiny: dict[str, Path], **extra: object) -> dict[str, dict[str, object]]:
    return {
        "model-a": {"path": str(tiny["a"]), "aliases": ["a"], **extra},
        "model-b": {"path": str(tiny["b"]), "aliases": ["b"], **extra},
    }


def loaded(run: Running) -> list[str]:
    return run.supervisor.loaded()


async def test_openai_sdk_chat_stream_and_swap(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server(two_models(tiny_models))
    client = openai.AsyncOpenAI(base_url=run.url + "/v1", api_key="unused", max_retries=0)
    try:
        models = await client.models.list()
        assert {m.id for m in models.data} == {"model-a", "model-b"}

        chat = await client.chat.completions.create(
            model="model-a", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert chat.model == "model-a"  # the name asked for, not the worker's path
        assert isinstance(chat.choices[0].message.content, str)
        assert chat.usage is not None and chat.usage.completion_tokens > 0

        stream = await client.chat.completions.create(
            model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=16, stream=True
        )
        chunks = [c async for c in stream]
        assert chunks and all(c.model == "a" for c in chunks)
        assert loaded(run) == ["model-a"]

        text = await client.completions.create(model="model-b", prompt="Once", max_tokens=8)
        assert text.model == "model-b" and isinstance(text.choices[0].text, str)
        assert loaded(run) == ["model-b"]
        assert len(run.kinds("swap")) == 1
        listed = {m.id: m.model_extra for m in (await client.models.list()).data}
        assert listed["model-b"] is not None and listed["model-b"]["status"] == "loaded"
        assert listed["model-a"] is not None and listed["model-a"]["status"] == "unloaded"
    finally:
        await client.close()


async def test_in_flight_streams_finish_before_the_swap(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server(two_models(tiny_models))
    assert (await run.chat("model-a", max_tokens=1))[0] == 200
    started = asyncio.Event()
    first_chunks = 0

    ended: list[float] = []

    async def stream_a() -> list[bytes]:
        nonlocal first_chunks
        lines: list[bytes] = []
        body = {"model": "model-a", "stream": True, "max_tokens": 200,
                "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
        async with run.http.post("/v1/chat/completions", json=body) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: "):
                    if not lines:
                        first_chunks += 1
                        if first_chunks == 10:
                            started.set()
                    lines.append(line[6:].strip())
        ended.append(time.time())
        return lines

    streams = [asyncio.create_task(stream_a()) for _ in range(10)]
    await asyncio.wait_for(started.wait(), 60)
    b = asyncio.create_task(run.chat("model-b", max_tokens=4))
    results = await asyncio.gather(*streams)
    for lines in results:
        assert lines[-1] == b"[DONE]", "a stream was cut"
        assert not any(b'"error"' in line for line in lines)
        assert len(lines) > 2
    assert (await b)[0] == 200
    # The swap happened strictly after every stream of model-a had finished.
    unload = next(e for e in run.kinds("model.unloaded") if e.model == "model-a")
    assert unload.data["reason"] == "swap"
    drain = next(e for e in run.kinds("worker.state") if e.data["new"] == "stopping")
    assert drain.ts >= max(ended) - 0.05  # (client-side end stamps lag the server's a little)


async def test_interleaved_traffic_swaps_a_handful_of_times(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server(two_models(tiny_models))
    results = await asyncio.gather(
        *(run.chat("model-a" if i % 2 == 0 else "model-b", max_tokens=8) for i in range(20))
    )
    assert [status for status, _ in results] == [200] * 20
    assert len(run.kinds("swap")) <= 4
    assert len(run.kinds("model.loaded")) <= 5


async def test_burst_to_an_unloaded_model_all_succeed(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server(two_models(tiny_models))
    results = await asyncio.gather(*(run.chat("model-a", max_tokens=8) for _ in range(20)))
    assert [status for status, _ in results] == [200] * 20
    assert len(run.kinds("model.loaded")) == 1


async def test_keep_alive_and_idle_timeout(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server(two_models(tiny_models), idle_timeout="300ms", max_loaded_models=2)
    # keep_alive -1: never unloaded, even past the idle timeout.
    assert (await run.chat("model-a", max_tokens=2, keep_alive=-1))[0] == 200
    # no keep_alive: unloaded by the 300 ms idle timeout.
    assert (await run.chat("model-b", max_tokens=2))[0] == 200
    await run.event("model.unloaded", "model-b")  # by the idle timeout
    assert loaded(run) == ["model-a"], "keep_alive -1 must survive the idle timeout"
    # keep_alive 0: unloaded as soon as the request is done.
    assert (await run.chat("model-a", max_tokens=2, keep_alive=0))[0] == 200
    await run.event("model.unloaded", "model-a")
    assert not loaded(run)
    reasons = [e.data["reason"] for e in run.kinds("model.unloaded")]
    assert reasons == ["idle", "idle"]


async def test_worker_killed_mid_stream_gives_a_clean_error_then_recovers(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server(two_models(tiny_models))
    assert (await run.chat("model-a", max_tokens=1))[0] == 200
    worker = run.supervisor.workers["model-a"]
    assert worker.pid is not None
    pid = worker.pid
    body = {"model": "model-a", "stream": True, "max_tokens": 100000,
            "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
    lines: list[bytes] = []
    async with run.http.post("/v1/chat/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: "):
                lines.append(line[6:].strip())
                if len(lines) == 3:
                    os.kill(pid, signal.SIGKILL)
    assert lines[-1] != b"[DONE]"
    error = json.loads(lines[-1])["error"]
    assert error["code"] == "worker_died" and "model-a" in error["message"]
    crash = await run.event("worker.crashed", "model-a")
    assert crash.data["exit_code"] == -signal.SIGKILL
    status, data = await run.chat("model-a", max_tokens=2)
    assert status == 200, data
    assert worker.pid != pid


async def test_a_model_that_cannot_load_fails_fast_with_its_reason(
    start_server: StartServer, tmp_path: Path
) -> None:
    # mlx-serve 0.3.0 hung for >10 minutes here. mlx_lm keeps answering /health after its
    # load failed, so only a probe of the model itself can tell. (Files that are not there at
    # all never get this far: see tests/integration/test_first_run.py.)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    run = await start_server({"broken": {"path": str(broken)}}, startup_timeout="60s")
    started = time.monotonic()
    status, data = await run.chat("broken")
    assert status == 503, data
    assert data["error"]["code"] == "model_unavailable"
    assert "failed to start" in data["error"]["message"]
    assert time.monotonic() - started < 30
    assert run.supervisor.workers["broken"].pid is None
