"""Tools and structured output on /v1/chat/completions reach the text worker intact, and tool
calls come back in OpenAI's shape, streamed or not.

A random-weight model cannot be made to call a tool, so the tool-call paths use the fake
worker's ``--tool-call``; ``--echo`` shows the body the worker received. The real ``mlx_lm
server`` is checked to accept a whole tool conversation (tools, an assistant turn with
``tool_calls``, a ``tool`` message, ``tool_choice`` and ``response_format``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
import pytest_asyncio

from mlx_serve.config import ModelType
from mlx_serve.testing import FakeWorkerDriver
from tests.integration.conftest import Running, StartServer, server_factory

if TYPE_CHECKING:  # the SDK's request types (names of recent SDKs; only for the checker)
    from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam
    from openai.types.shared_params import ResponseFormatJSONSchema

pytestmark = pytest.mark.slow

WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
SCHEMA_FORMAT: ResponseFormatJSONSchema = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
CONVERSATION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You answer with tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake_run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with server_factory(tmp_path_factory.mktemp("tools")) as start:
        yield await start(
            {
                "caller": {"path": "fake/caller", "args": {"tool_call": json.dumps(CALL)}},
                "echo": {"path": "fake/echo", "args": {"echo": True}},
            },
            drivers={ModelType.TEXT: FakeWorkerDriver()},
            max_loaded_models=2,
        )


@contextlib.asynccontextmanager
async def client(run: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=run.url + "/v1", api_key="unused", max_retries=0) as api:
        yield api


@pytest.mark.asyncio(loop_scope="module")
async def test_tools_tool_choice_and_response_format_reach_the_worker_intact(
    fake_run: Running,
) -> None:
    async with client(fake_run) as api:
        reply = await api.chat.completions.create(
            model="echo",
            messages=CONVERSATION,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            response_format=SCHEMA_FORMAT,
        )
    received = json.loads(reply.choices[0].message.content or "")
    assert received["tools"] == [WEATHER_TOOL]
    assert received["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert received["response_format"] == SCHEMA_FORMAT
    assert received["messages"] == CONVERSATION


@pytest.mark.asyncio(loop_scope="module")
async def test_a_tool_call_comes_back_in_openai_shape(fake_run: Running) -> None:
    async with client(fake_run) as api:
        reply = await api.chat.completions.create(
            model="caller",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert len(calls) == 1
        assert calls[0].type == "function"
        assert calls[0].function.name == "get_weather"
        assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
        assert reply.model == "caller"

        # Streamed: the SDK's accumulator rebuilds the same call from the deltas.
        async with api.chat.completions.stream(
            model="caller",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
        streamed = final.choices[0]
        assert streamed.finish_reason == "tool_calls"
        call = (streamed.message.tool_calls or [])[0]
        assert call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}


@pytest.mark.asyncio(loop_scope="module")
async def test_malformed_tools_are_the_clients_mistake(fake_run: Running) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"tools": {"not": "a list"}}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
    ]
    for extra, param in bad:
        async with fake_run.http.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "x"}], **extra},
        ) as r:
            body = await r.json()
        assert r.status == 400, (extra, body)
        assert body["error"]["param"] == param, body
    # An assistant tool call whose arguments are not a JSON object: mlx_lm would fail on it.
    messages = [*CONVERSATION[:2], json.loads(json.dumps(CONVERSATION[2]))]
    messages[2]["tool_calls"][0]["function"]["arguments"] = "{not json"
    async with fake_run.http.post(
        "/v1/chat/completions", json={"model": "echo", "messages": messages}
    ) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["param"] == "messages", body


async def test_the_real_text_worker_accepts_a_whole_tool_conversation(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server({"chat": {"type": "text", "path": str(tiny_models["a"])}})
    async with client(run) as api:
        for stream in (False, True):
            kwargs: dict[str, Any] = {
                "model": "chat",
                "messages": CONVERSATION,
                "tools": [WEATHER_TOOL],
                "tool_choice": "auto",
                "response_format": {"type": "json_object"},
                "max_tokens": 8,
            }
            if stream:
                chunks = [c async for c in await api.chat.completions.create(stream=True, **kwargs)]
                assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")
            else:
                reply = await api.chat.completions.create(**kwargs)
                assert reply.choices[0].finish_reason in ("length", "stop")
