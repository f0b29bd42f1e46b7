"""Anthropic's Messages API end to end, through the official ``anthropic`` SDK.

The tiny random-weight model runs in a real ``mlx_lm server`` (answers, streams, token
counts checked against the worker's own prompt size). A random model cannot be made to call a
tool, so tool calls come from the fake worker's ``--tool-call``; its ``--echo`` answers with
the OpenAI body it received, which shows what the dialect translated. The fake-worker server
has an API key, as a Claude Code user's server would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from mlx_serve.config import ModelType
from mlx_serve.router.dialects import anthropic as dialect
from mlx_serve.testing import FakeWorkerDriver
from tests.conftest import POLL_INTERVAL, eventually
from tests.integration.conftest import Running, server_factory

if TYPE_CHECKING:  # the SDK's request types, only for the checker
    from anthropic.types import MessageParam, ToolParam

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KEY = "k"
CALL: dict[str, Any] = {"name": "get_weather", "arguments": {"city": "Paris"}}
SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER: ToolParam = {
    "name": "get_weather", "description": "The weather in a city.", "input_schema": SCHEMA
}  # fmt: skip
ASK: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tiny(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> AsyncIterator[Running]:
    async with server_factory(tmp_path_factory.mktemp("anthropic-tiny")) as start:
        yield await start(
            {
                "tiny": {"path": str(tiny_models["a"]), "aliases": ["claude-tiny"]},
                "idle": {"path": str(tiny_models["b"])},  # only ever counted: never loaded
            }
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with server_factory(tmp_path_factory.mktemp("anthropic-fake")) as start:
        yield await start(
            {
                "caller": {"path": "fake/caller", "args": {"tool_call": json.dumps(CALL)}},
                "echo": {"path": "fake/echo", "args": {"echo": True}},
                "slow": {"path": "fake/slow", "args": {"token_delay": 0.05}},
                "crasher": {"path": "fake/crasher", "args": {"crash_after_tokens": 2}},
                "broken": {"path": "fake/broken", "args": {"exit_on_start": 7}},
            },
            drivers={ModelType.TEXT: FakeWorkerDriver()},
            max_loaded_models=4,
            api_key=KEY,
        )


def client(run: Running, key: str = KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=run.url, api_key=key, max_retries=0)


async def raw_events(run: Running, body: dict[str, Any]) -> tuple[int, list[tuple[str, Any]]]:
    """POST /v1/messages with the key; the status and the (event, data) pairs of the answer."""
    events: list[tuple[str, Any]] = []
    async with run.http.post("/v1/messages", json=body, headers={"x-api-key": KEY}) as r:
        if r.content_type != "text/event-stream":
            return r.status, [("json", await r.json())]
        name = ""
        async for line in r.content:
            if line.startswith(b"event: "):
                name = line[7:].decode().strip()
            elif line.startswith(b"data: "):
                events.append((name, json.loads(line[6:])))
    return r.status, events


def statuses(run: Running, model: str) -> list[int]:
    """The statuses of ``model``'s request events, oldest first."""
    return [e.data["status"] for e in run.kinds("request") if e.model == model]


# ------------------------------------------------------------------ the real text worker


async def test_create_answers_and_counts_tokens_like_the_worker(tiny: Running) -> None:
    seen = tiny.mark()
    async with client(tiny) as api:
        reply = await api.messages.create(
            model="claude-tiny", max_tokens=8, system="Be brief.", messages=ASK
        )
        assert reply.id.startswith("msg_") and reply.type == "message"
        assert reply.role == "assistant" and reply.model == "claude-tiny"
        assert [block.type for block in reply.content] in (["text"], [])
        assert reply.stop_reason in ("max_tokens", "end_turn")
        assert 0 < reply.usage.output_tokens <= 8
        prompt = reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0)
        counted = await api.messages.count_tokens(
            model="claude-tiny", system="Be brief.", messages=ASK
        )
        assert counted.input_tokens == prompt, "the same template and tokenizer as the worker"
        longer = await api.messages.count_tokens(
            model="tiny",
            system="Be brief.",
            messages=[{"role": "user", "content": "Weather in Paris? And in Rome, please."}],
        )
        assert longer.input_tokens > counted.input_tokens
        other = await api.messages.count_tokens(model="idle", system="Be brief.", messages=ASK)
        assert other.input_tokens > 0
    assert tiny.supervisor.workers["idle"].state.value == "stopped", "counting loads nothing"
    assert not [e for e in tiny.events if e.model == "idle"]
    event = await tiny.event("request", after=seen)
    assert event.data["endpoint"] == "/v1/messages" and event.data["status"] == 200
    assert event.data["completion_tokens"] == reply.usage.output_tokens


async def test_stream_through_the_sdk(tiny: Running) -> None:
    seen = tiny.mark()
    async with (
        client(tiny) as api,
        api.messages.stream(model="tiny", max_tokens=8, messages=ASK) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert final.stop_reason in ("max_tokens", "end_turn")
    assert "".join(texts) == "".join(b.text for b in final.content if b.type == "text")
    assert 0 < final.usage.output_tokens <= 8
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) > 0
    streamed = await tiny.event("request", after=seen)
    assert streamed.data["stream"]
    assert streamed.data["endpoint"] == "/v1/messages" and streamed.data["status"] == 200


async def test_tools_are_accepted_by_the_real_worker(tiny: Running) -> None:
    async with client(tiny) as api:
        reply = await api.messages.create(
            model="tiny",
            max_tokens=4,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "auto"},
            stop_sequences=["\n\n"],
            metadata={"user_id": "someone"},
            # The SDK no longer types sampling settings; clients such as Claude Code send them.
            extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 20},
        )
        assert reply.stop_reason in ("max_tokens", "end_turn", "stop_sequence")
        counted = await api.messages.count_tokens(
            model="tiny",
            messages=ASK,
            tools=[WEATHER],
        )
        assert counted.input_tokens > 0


async def test_client_mistakes_are_anthropic_errors(tiny: Running) -> None:
    async with client(tiny) as api:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await api.messages.create(model="nope", max_tokens=8, messages=ASK)
        body = missing.value.body
        assert isinstance(body, dict) and body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.NotFoundError):
            await api.messages.count_tokens(model="nope", messages=ASK)
        with pytest.raises(anthropic.BadRequestError) as no_max:
            await api.post("/v1/messages", body={"model": "tiny", "messages": ASK}, cast_to=object)
        assert "max_tokens" in str(no_max.value)
    bad_block = {"type": "document", "source": {"type": "text", "data": "x"}}
    async with tiny.http.post(
        "/v1/messages",
        json={"model": "tiny", "max_tokens": 8,
              "messages": [{"role": "user", "content": [bad_block]}]},
    ) as r:  # fmt: skip
        assert r.status == 400
        body = await r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "'document'" in body["error"]["message"]


# ----------------------------------------------------------------- the fake worker: tools


async def test_a_tool_call_comes_back_as_a_tool_use_block(fake: Running) -> None:
    async with client(fake) as api:
        reply = await api.messages.create(
            model="caller",
            max_tokens=64,
            messages=ASK,
            tools=[WEATHER],
        )
        assert reply.stop_reason == "tool_use"
        (block,) = reply.content
        assert block.type == "tool_use" and block.name == "get_weather"
        assert block.input == {"city": "Paris"} and block.id

        async with api.messages.stream(
            model="caller",
            max_tokens=64,
            messages=ASK,
            tools=[WEATHER],
        ) as stream:
            final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (streamed,) = final.content
    assert streamed.type == "tool_use" and streamed.name == "get_weather"
    assert streamed.input == {"city": "Paris"}, "input_json_delta pieces reassembled"
    assert final.usage.output_tokens > 0


ROUND_TRIP: list[MessageParam] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": CALL["arguments"],
            },
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C and sunny"},
            {"type": "text", "text": "Thanks!"},
        ],
    },
]
TRANSLATED: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer with tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_1", "content": "21C and sunny"},
    {"role": "user", "content": "Thanks!"},
]


async def test_a_tool_round_trip_reaches_the_worker_as_openai_messages(fake: Running) -> None:
    async with client(fake) as api:
        reply = await api.messages.create(
            model="echo",
            max_tokens=64,
            system=[{"type": "text", "text": "You answer with tools."}],
            messages=ROUND_TRIP,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
            stop_sequences=["STOP"],
            extra_body={
                "keep_alive": "10m",
                "top_k": 5,
                "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
            },
        )
        assert reply.content[0].type == "text"
        received = json.loads(reply.content[0].text)
        assert received["messages"] == TRANSLATED
        assert received["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": WEATHER["description"],
                    "parameters": WEATHER["input_schema"],
                },
            }
        ]
        assert received["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert received["stop"] == ["STOP"] and received["top_k"] == 5
        assert received["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": SCHEMA},
        }
        assert received["max_tokens"] == 64
        assert "keep_alive" not in received and "stream" not in received
        assert fake.supervisor.workers["echo"].keep_alive == 600

        async with api.messages.stream(model="echo", max_tokens=8, messages=ASK) as stream:
            streamed = json.loads(await stream.get_final_text())
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}


async def test_the_stream_is_anthropics_exact_event_sequence(fake: Running) -> None:
    status, events = await raw_events(
        fake, {"model": "echo", "max_tokens": 8, "stream": True, "messages": ASK}
    )
    assert status == 200
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    message = events[0][1]["message"]
    assert message["content"] == [] and message["model"] == "echo"
    assert message["usage"]["input_tokens"] == 0  # the worker tells the size at the end
    ending = events[-2][1]
    assert ending["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert ending["usage"]["input_tokens"] == 3 and ending["usage"]["output_tokens"] == 1


# ------------------------------------------------------------- failures and the lifecycle


async def test_a_worker_dying_mid_stream_ends_with_an_error_event(fake: Running) -> None:
    status, events = await raw_events(
        fake, {"model": "crasher", "max_tokens": 8, "stream": True, "messages": ASK}
    )
    assert status == 200
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and "content_block_delta" in names
    assert names[-1] == "error" and "message_stop" not in names
    error = events[-1][1]
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "crasher" in error["error"]["message"]
    await fake.event("request", "crasher")
    assert statuses(fake, "crasher") == [502]


async def test_lifecycle_errors_stay_http_errors_when_streaming(fake: Running) -> None:
    status, events = await raw_events(
        fake, {"model": "broken", "max_tokens": 8, "stream": True, "messages": ASK}
    )
    assert status == 503, events
    ((_, body),) = events
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "exited with code 7" in body["error"]["message"]


async def test_pings_keep_a_slow_stream_alive(
    fake: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialect, "PING_INTERVAL", POLL_INTERVAL)  # tokens come every 50 ms
    status, events = await raw_events(
        fake, {"model": "slow", "max_tokens": 3, "stream": True, "messages": ASK}
    )
    assert status == 200
    names = [name for name, _ in events]
    first, last = names.index("content_block_start"), names.index("content_block_stop")
    assert "ping" in names[first:last], "pings between tokens"
    assert names[-1] == "message_stop"


async def test_a_client_that_leaves_mid_stream_cancels_the_generation(fake: Running) -> None:
    seen = fake.mark()
    body = {"model": "slow", "max_tokens": 200, "stream": True, "messages": ASK}
    async with fake.http.post("/v1/messages", json=body, headers={"x-api-key": KEY}) as r:
        async for line in r.content:
            if line.startswith(b"event: content_block_delta"):
                break  # one token seen: leave
    worker = fake.supervisor.workers["slow"]
    await eventually(lambda: worker.inflight == 0, what="the worker to be released")
    cancelled = await fake.event("request", "slow", after=seen)
    assert cancelled.data["status"] == 499


async def test_count_tokens_without_tokenizer_files_is_a_clear_400(fake: Running) -> None:
    async with client(fake) as api:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await api.messages.count_tokens(model="echo", messages=ASK)
    assert "cannot count tokens" in str(caught.value)


async def test_the_api_key_is_checked_and_failures_are_anthropic_shaped(fake: Running) -> None:
    async with client(fake, key="wrong") as api:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await api.messages.create(model="echo", max_tokens=8, messages=ASK)
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    count = {"model": "echo", "messages": ASK}
    async with (
        aiohttp.ClientSession(base_url=fake.url) as anonymous,
        anonymous.post("/v1/messages/count_tokens", json=count) as r,
    ):
        assert r.status == 401
        assert (await r.json())["error"]["type"] == "authentication_error"
    async with client(fake) as api:  # the right key, as x-api-key with anthropic-version
        reply = await api.messages.create(model="echo", max_tokens=8, messages=ASK)
    assert reply.content and reply.usage.output_tokens == 1
