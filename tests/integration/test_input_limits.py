"""Bodies a fuzzer found: each a clear 4xx from the router, none reaching a worker."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.conftest import Running, StartServer

MiB = 2**20


async def server(start_server: StartServer, tiny_models: dict[str, Path], **kw: object) -> Running:
    models = {
        "a": {"type": "text", "path": str(tiny_models["a"])},
        "hear": {"type": "stt", "path": str(tiny_models["a"])},  # never started here
    }
    return await start_server(models, **kw)


async def post_raw(run: Running, path: str, raw: bytes) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    async with run.http.post(path, data=raw, headers=headers) as r:
        return r.status, await r.json()


async def test_deeply_nested_json_is_a_400(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await server(start_server, tiny_models)
    deep = b"[" * 100_000 + b"]" * 100_000
    for raw in (deep, b'{"model": "a", "messages": ' + deep + b"}"):
        for path in ("/v1/chat/completions", "/v1/embeddings", "/api/models/a/load"):
            status, body = await post_raw(run, path, raw)
            assert status == 400, (path, body)
            assert body["error"]["code"] == "invalid_json"
    # Below the parser's own limit, still deeper than any request: refused by the depth cap.
    moderate = b'{"model": "a", "messages": ' + b"[" * 70 + b"]" * 70 + b"}"
    status, body = await post_raw(run, "/v1/chat/completions", moderate)
    assert status == 400 and "deeper than 64" in body["error"]["message"], body
    assert run.kinds("model.loaded") == []


async def test_lone_surrogates_never_reach_a_worker(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await server(start_server, tiny_models)
    escaped = b'{"model": "a", "messages": [{"role": "user", "content": "x\\ud800y"}]}'
    on_the_wire = b'{"model": "a", "messages": [{"role": "user", "content": "x' + (
        "\ud800".encode("utf-8", "surrogatepass") + b'"}]}'
    )
    for raw in (escaped, on_the_wire):
        status, body = await post_raw(run, "/v1/chat/completions", raw)
        assert status == 400, body
        assert "surrogate" in body["error"]["message"] or "JSON" in body["error"]["message"]
    assert run.kinds("model.loaded") == []
    # A proper pair (an emoji, escaped) is fine.
    pair = json.dumps({"model": "a", "max_tokens": 1, "messages": [
        {"role": "user", "content": "\U0001f600"}]}).encode()  # fmt: skip
    status, body = await post_raw(run, "/v1/chat/completions", pair)
    assert status == 200, body


async def test_bodies_over_the_limits_are_413_naming_them(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await server(start_server, tiny_models, max_json_body="1MiB", max_upload_body="2MiB")
    big = json.dumps({"model": "a", "messages": [{"role": "user", "content": "x" * (2 * MiB)}]})
    headers = {"Content-Type": "application/json"}
    async with run.http.post(
        "/v1/chat/completions", data=io.BytesIO(big.encode()), headers=headers
    ) as r:
        status, body = r.status, await r.json()
    assert status == 413, body
    message = body["error"]["message"]
    assert "1.0 MiB" in message and "max_json_body" in message

    async def chunks() -> object:  # no Content-Length: the limit holds while reading
        for _ in range(3):
            yield b"x" * MiB

    async with run.http.post(
        "/v1/embeddings", data=chunks(), headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 413

    form = aiohttp.FormData()
    form.add_field("model", "hear")
    form.add_field(
        "file", io.BytesIO(b"\0" * (3 * MiB)), filename="a.wav", content_type="audio/wav"
    )
    async with run.http.post("/v1/audio/transcriptions", data=form) as r:
        body = await r.json()
        assert r.status == 413 and "max_upload_body" in body["error"]["message"], body
    assert run.kinds("model.loaded") == []
