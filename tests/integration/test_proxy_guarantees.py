"""The proxy's guarantees (:mod:`mlx_serve.router.proxy`), against a worker that misbehaves
exactly when told: an aiohttp app in the test's loop (:mod:`tests.integration.inprocess`),
behind the real router and supervisor.

* A request whose connection failed before any response byte is retried; once a byte came
  back it never is (the worker may have started generating).
* A stream that breaks after it started ends with an SSE error event, not a silent cut.
* The client sees the model name it asked for, never the worker's own (its path).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from mlx_serve.router import proxy
from mlx_serve.router.upstream import UpstreamResponse
from tests.integration.conftest import StartApp
from tests.integration.inprocess import AppRun, InProcessLauncher

WORKER_PATH = "org/the-workers-own-path"
MODELS = {"chat": {"path": WORKER_PATH, "aliases": ["my-model"]}}


@dataclass
class Upstream:
    """What the worker does with its next chat requests, and what it received.

    ``drop``: that many requests lose their connection before any byte is answered.
    ``cut_after``: the answer is cut after this many bytes of body (``b""``: right after
    the headers). ``events``: a stream sends this many events, then (with ``die``) the
    connection drops instead of ``[DONE]``. ``gap``: seconds between two events (``0``: the
    next loop iteration).
    """

    drop: int = 0
    cut_after: int | None = None
    events: int = 3
    die: bool = False
    gap: float | None = None
    received: list[dict[str, Any]] = field(default_factory=list)

    def app(self, _argv: Sequence[str]) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._probe)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _probe(self, request: web.Request) -> web.Response:
        """The readiness probe of the text driver: answered at once."""
        body = await request.json()
        return web.json_response({"model": body["model"], "choices": [{"text": "ok"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        if self.drop:
            self.drop -= 1
            return await _hang_up(request)
        model = body["model"]  # what the router sent: the worker's own model id
        if not body.get("stream"):
            answer = {
                "model": model,
                "choices": [{"message": {"role": "assistant", "content": "hello"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }
            data = json.dumps(answer).encode()
            if self.cut_after is None:
                return web.Response(body=data, content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: self.cut_after])
            return await _hang_up(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.cut_after == 0:
            return await _hang_up(request)
        for i in range(self.events):
            chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if self.gap is not None:
                await asyncio.sleep(self.gap)
        if self.die:
            return await _hang_up(request)
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def _hang_up(request: web.Request) -> web.StreamResponse:
    """Drop the connection, as a worker that dies (or mlx_lm under a burst) does."""
    assert request.transport is not None
    request.transport.abort()
    raise asyncio.CancelledError


@pytest.fixture
async def worker(start_app: StartApp) -> tuple[AppRun, Upstream]:
    upstream = Upstream()
    run = await start_app(MODELS, launcher=InProcessLauncher(upstream.app))
    await run.load("chat")
    return run, upstream


async def stream(run: AppRun, model: str) -> tuple[int, list[Any]]:
    """A streamed chat: the status and every SSE data payload (JSON, or "[DONE]")."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with run.http.post("/v1/chat/completions", json=body) as r:
        raw = await r.read()
        status = r.status
    events: list[Any] = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return status, events


async def test_a_connection_dropped_before_the_first_byte_is_retried(
    worker: tuple[AppRun, Upstream],
) -> None:
    run, upstream = worker
    upstream.drop = 2
    status, body = await run.chat("chat")
    assert status == 200, body
    assert len(upstream.received) == 3, "two drops, then the answer"
    event = await run.event("request", "chat")
    assert event.data["retries"] == 2 and event.data["status"] == 200


async def test_a_worker_that_drops_every_attempt_is_a_502_unreachable(
    worker: tuple[AppRun, Upstream],
) -> None:
    run, upstream = worker
    upstream.drop = proxy.CONNECT_ATTEMPTS + 10
    status, body = await run.chat("chat")
    assert status == 502, body
    assert body["error"]["code"] == "worker_unreachable"
    assert len(upstream.received) == proxy.CONNECT_ATTEMPTS


@pytest.mark.parametrize("cut_after", [0, 10])
async def test_after_the_first_byte_a_request_is_never_retried(
    worker: tuple[AppRun, Upstream], cut_after: int
) -> None:
    """Headers alone, or part of the body: the worker had the request, so no second try."""
    run, upstream = worker
    upstream.cut_after = cut_after
    status, body = await run.chat("chat")
    assert status == 502, body
    assert body["error"]["code"] == "worker_died"
    assert len(upstream.received) == 1
    event = await run.event("request", "chat")
    assert event.data["retries"] == 0 and event.data["status"] == 502


async def test_a_stream_cut_before_its_first_event_is_not_retried(
    worker: tuple[AppRun, Upstream],
) -> None:
    run, upstream = worker
    upstream.cut_after = 0
    status, events = await stream(run, "chat")
    assert status == 200  # the stream had begun: its error comes in it
    assert [e["error"]["code"] for e in events] == ["worker_died"]
    assert len(upstream.received) == 1


async def test_a_stream_that_dies_midway_ends_with_an_sse_error_event(
    worker: tuple[AppRun, Upstream],
) -> None:
    run, upstream = worker
    upstream.die = True
    status, events = await stream(run, "chat")
    assert status == 200
    *tokens, last = events
    assert [e["choices"][0]["delta"]["content"] for e in tokens] == ["t0 ", "t1 ", "t2 "]
    assert "[DONE]" not in events
    assert last["error"]["code"] == "worker_died", last
    assert "mid-stream" in last["error"]["message"]
    event = await run.event("request", "chat")
    assert event.data["status"] == 502 and event.data["code"] == "worker_died"
    assert len(upstream.received) == 1


@pytest.mark.parametrize("asked", ["chat", "my-model"])
async def test_the_client_sees_its_own_model_name_never_the_workers(
    worker: tuple[AppRun, Upstream], asked: str
) -> None:
    run, upstream = worker
    status, body = await run.chat(asked)
    assert status == 200, body
    assert body["model"] == asked
    status, events = await stream(run, asked)
    assert status == 200 and events[-1] == "[DONE]"
    assert {e["model"] for e in events[:-1]} == {asked}
    # The worker was always asked for its own model: never a name it could load another by.
    assert [r["model"] for r in upstream.received] == [WORKER_PATH, WORKER_PATH]
    assert WORKER_PATH not in json.dumps([body, events])


@pytest.fixture
def gathers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float]]:
    """The steps the relay asks of the kernel in reading from workers (``nbytes``, deadline;
    see ``proxy._relay_stream``)."""
    taken: list[tuple[int, float]] = []
    real = UpstreamResponse.gather

    def spy(self: UpstreamResponse, nbytes: int, within: float) -> None:
        taken.append((nbytes, within))
        real(self, nbytes, within)

    monkeypatch.setattr(UpstreamResponse, "gather", spy)
    return taken


@pytest.mark.parametrize("die", [False, True])
async def test_a_fast_stream_is_read_in_steps_and_loses_nothing(
    worker: tuple[AppRun, Upstream], gathers: list[tuple[int, float]], die: bool
) -> None:
    run, upstream = worker
    upstream.events, upstream.gap, upstream.die = 200, 0, die
    status, events = await stream(run, "chat")
    assert status == 200
    *tokens, last = events
    assert [e["choices"][0]["delta"]["content"] for e in tokens] == [f"t{i} " for i in range(200)]
    if die:
        assert last["error"]["code"] == "worker_died", last
    else:
        assert last == "[DONE]"
        event = await run.event("request", "chat")
        assert event.data["completion_tokens"] == 200
    assert gathers
    # At most PACE_TOKENS of this stream's events (each well under 200 bytes), never longer
    # than PACE_MAX_S.
    assert all(0 < n < 200 * proxy.PACE_TOKENS and w == proxy.PACE_MAX_S for n, w in gathers)


@pytest.mark.parametrize("die", [False, True])
async def test_a_translated_fast_stream_is_read_in_steps_and_loses_nothing(
    worker: tuple[AppRun, Upstream], gathers: list[tuple[int, float]], die: bool
) -> None:
    """The dialects' reader (``router.calls``) paces its reads as the OpenAI relay does; an
    Anthropic Messages stream still carries every token, and a worker dying mid-stream still
    ends it with an ``event: error``."""
    run, upstream = worker
    upstream.events, upstream.gap, upstream.die = 200, 0, die
    body = {
        "model": "chat",
        "max_tokens": 500,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with run.http.post("/v1/messages", json=body) as r:
        assert r.status == 200
        raw = await r.read()
    events = [
        (
            block.split(b"\n")[0].removeprefix(b"event: ").decode(),
            json.loads(block.split(b"data: ", 1)[1]),
        )
        for block in raw.split(b"\n\n")
        if b"data: " in block
    ]
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "".join(f"t{i} " for i in range(200))
    if die:
        assert events[-1][0] == "error", events[-1]
    else:
        assert events[-1][0] == "message_stop", events[-1]
    assert gathers
    assert all(0 < n < 200 * proxy.PACE_TOKENS and w == proxy.PACE_MAX_S for n, w in gathers)


async def test_a_slow_stream_is_relayed_token_by_token(
    worker: tuple[AppRun, Upstream], gathers: list[tuple[int, float]]
) -> None:
    run, upstream = worker
    upstream.events, upstream.gap = 5, 0.02  # 50 tokens/s: faster than most real models
    status, events = await stream(run, "chat")
    assert status == 200 and events[-1] == "[DONE]" and len(events) == 6
    assert gathers == []
