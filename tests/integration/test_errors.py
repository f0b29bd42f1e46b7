"""Every client mistake gets its status and an OpenAI-shaped error; nothing is a 500."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from mlx_serve.config import ModelType
from mlx_serve.testing import FakeWorkerDriver
from tests.integration.conftest import Running, StartServer

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def run(start_server: StartServer) -> Running:
    return await start_server(
        {
            "chat": {"path": "fake/model", "aliases": ["c"]},
            "emb": {"path": "fake/emb", "type": "embedding"},
        },
        drivers={ModelType.TEXT: FakeWorkerDriver()},
    )


def assert_error(status: int, data: Any, expected: int, code: str | None = None) -> None:
    assert status == expected, data
    assert set(data) == {"error"}
    error = data["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert "code" in error
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in error["message"]


async def post_raw(run: Running, path: str, data: bytes | io.BytesIO) -> tuple[int, Any]:
    async with run.http.post(path, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json()


async def post(run: Running, path: str, body: Any) -> tuple[int, Any]:
    async with run.http.post(path, json=body) as r:
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
async def test_malformed_bodies(run: Running, raw: bytes, code: str) -> None:
    assert_error(*await post_raw(run, CHAT, raw), 400, code)


@pytest.mark.parametrize(
    ("body", "expected", "code"),
    [
        ({"messages": MSGS}, 400, "missing_model"),
        ({"model": "", "messages": MSGS}, 400, "missing_model"),
        ({"model": 5, "messages": MSGS}, 400, "missing_model"),
        ({"model": "nope", "messages": MSGS}, 404, "model_not_found"),
        ({"model": "emb", "messages": MSGS}, 400, "wrong_model_type"),
        ({"model": "chat"}, 400, None),
        ({"model": "chat", "messages": []}, 400, None),
        ({"model": "chat", "messages": ["hi"]}, 400, None),
        ({"model": "chat", "messages": MSGS, "stream": "yes"}, 400, None),
        ({"model": "chat", "messages": MSGS, "max_tokens": -1}, 400, None),
        ({"model": "chat", "messages": MSGS, "max_tokens": "9"}, 400, None),
        ({"model": "chat", "messages": MSGS, "temperature": "hot"}, 400, None),
        ({"model": "chat", "messages": MSGS, "keep_alive": "soon"}, 400, "invalid_keep_alive"),
        ({"model": "chat", "messages": MSGS, "keep_alive": True}, 400, None),
    ],
)
async def test_bad_chat_requests(run: Running, body: Any, expected: int, code: str | None) -> None:
    assert_error(*await post(run, CHAT, body), expected, code)


async def test_unknown_model_error_names_the_available_ones(run: Running) -> None:
    _, data = await post(run, CHAT, {"model": "nope", "messages": MSGS})
    assert "available models: chat, emb" in data["error"]["message"]


async def test_wrong_type_error_says_where_it_is_served(run: Running) -> None:
    _, data = await post(run, CHAT, {"model": "emb", "messages": MSGS})
    assert "/v1/embeddings" in data["error"]["message"]


async def test_bad_completion_prompt(run: Running) -> None:
    assert_error(*await post(run, "/v1/completions", {"model": "chat", "prompt": 3}), 400)


async def test_embedding_model_on_completions_is_wrong_type(run: Running) -> None:
    status, data = await post(run, "/v1/completions", {"model": "emb", "prompt": "x"})
    assert_error(status, data, 400, "wrong_model_type")


async def test_unknown_route_and_method(run: Running) -> None:
    async with run.http.get("/v1/nothing") as r:
        assert_error(r.status, await r.json(), 404, "not_found")
    async with run.http.get(CHAT) as r:
        assert_error(r.status, await r.json(), 405, "method_not_allowed")


async def test_oversized_body_is_413(run: Running) -> None:
    pad = 65 * 1024 * 1024  # built off the loop: 65 MiB takes a while to fill
    big = await asyncio.to_thread(
        lambda: io.BytesIO(b'{"model": "chat", "pad": "' + b"x" * pad + b'"}')
    )
    assert_error(*await post_raw(run, CHAT, big), 413)


async def test_nothing_was_loaded_by_bad_requests(run: Running) -> None:
    await post(run, CHAT, {"model": "chat", "messages": []})
    assert run.supervisor.loaded() == []


async def test_good_request_after_bad_ones_and_alias(run: Running) -> None:
    status, data = await post(run, CHAT, {"model": "c", "messages": MSGS, "keep_alive": "5m"})
    assert status == 200 and data["model"] == "c"
    assert run.supervisor.workers["chat"].keep_alive == 300


async def test_models_and_health(run: Running) -> None:
    async with run.http.get("/v1/models") as r:
        data = await r.json()
    assert data["object"] == "list"
    entry = {m["id"]: m for m in data["data"]}["chat"]
    assert entry == entry | {
        "object": "model",
        "type": "text",
        "status": "unloaded",
        "aliases": ["c"],
    }
    async with run.http.get("/v1/models/c") as r:
        assert (await r.json())["id"] == "chat"
    async with run.http.get("/v1/models/missing") as r:
        assert_error(r.status, await r.json(), 404, "model_not_found")
    async with run.http.get("/health") as r:
        assert await r.json() == {"status": "ok", "loaded": []}


async def test_context_length_is_enforced(start_server: StartServer) -> None:
    run = await start_server(
        {"short": {"path": "fake/m", "context_length": 64}},
        drivers={ModelType.TEXT: FakeWorkerDriver()},
    )
    body = {"model": "short", "messages": MSGS, "max_tokens": 65}
    assert_error(*await post(run, CHAT, body), 400, "context_length_exceeded")


async def test_api_key(start_server: StartServer) -> None:
    run = await start_server(
        {"m": {"path": "fake/m"}}, drivers={ModelType.TEXT: FakeWorkerDriver()}, api_key="s3cret"
    )
    body = {"model": "m", "messages": MSGS, "max_tokens": 2}
    assert_error(*await post(run, CHAT, body), 401, "invalid_api_key")
    for headers in ({"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
        async with run.http.post(CHAT, json=body, headers=headers) as r:
            assert_error(r.status, await r.json(), 401, "invalid_api_key")
    async with run.http.get("/v1/models") as r:
        assert r.status == 401
    async with run.http.get("/health") as r:
        assert r.status == 200  # liveness stays open
    for headers in ({"Authorization": "Bearer s3cret"}, {"X-Api-Key": "s3cret"}):
        async with run.http.post(CHAT, json=body, headers=headers) as r:
            assert r.status == 200
    failures = run.kinds("auth.failed")
    assert len(failures) == 4 and all("s3cret" not in str(e.data) for e in failures)
