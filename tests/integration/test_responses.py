"""OpenAI's Responses API (``/v1/responses``) through the ``openai`` SDK, end to end.

A tiny random-weight model answers through the real ``mlx_lm server``; the tool-call paths use
the fake worker's ``--tool-call`` (a random model cannot be made to call a tool), and its
``--echo`` shows the chat request the dialect translated. One server of each per module.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai.types.responses import (
    FunctionToolParam,
    Response,
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInputParam,
    ResponseStreamEvent,
    ResponseTextConfigParam,
    ResponseTextDeltaEvent,
)

from mlx_serve.config import ModelType
from mlx_serve.testing import FakeWorkerDriver
from tests.integration.conftest import Running, server_factory

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
#: The first Responses call and the first use of the SDK's stream helper build the SDK's
#: pydantic models (100-300 ms under coverage, in the test's loop): the client's cost, not
#: the server's. The event-loop guard records those tests' stalls without failing them.
SDK_WARM_UP = "the openai SDK builds its Responses models on first use, in the test's loop"

WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
SCHEMA: dict[str, object] = {"type": "object", "properties": {"city": {"type": "string"}}}
JSON_FORMAT: ResponseTextConfigParam = {
    "format": {"type": "json_schema", "name": "answer", "schema": SCHEMA}
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake_run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with server_factory(tmp_path_factory.mktemp("responses-fake")) as start:
        yield await start(
            {
                "caller": {"path": "fake/caller", "args": {"tool_call": json.dumps(CALL)}},
                "echo": {"path": "fake/echo", "args": {"echo": True}},
                "crashy": {"path": "fake/crashy", "args": {"crash_after_tokens": 2}},
            },
            drivers={ModelType.TEXT: FakeWorkerDriver()},
            max_loaded_models=3,
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tiny_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> AsyncIterator[Running]:
    async with server_factory(tmp_path_factory.mktemp("responses-tiny")) as start:
        yield await start({"tiny": {"path": str(tiny_models["a"])}})


@contextlib.asynccontextmanager
async def client(run: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=run.url + "/v1", api_key="x", max_retries=0) as api:
        yield api


def echoed(response: Response) -> dict[str, Any]:
    """The chat request the echo worker received."""
    received: dict[str, Any] = json.loads(response.output_text)
    return received


def final(events: list[ResponseStreamEvent]) -> Response:
    """The Response the last event of a stream carries (it must be the last one's)."""
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent | ResponseIncompleteEvent), last.type
    return last.response


def the_call(response: Response) -> ResponseFunctionToolCall:
    (call,) = response.output
    assert isinstance(call, ResponseFunctionToolCall)
    return call


# --------------------------------------------------------------------------- the real worker


@pytest.mark.loop_block_ok(SDK_WARM_UP)
async def test_a_tiny_model_answers_whole_and_streamed(tiny_run: Running) -> None:
    async with client(tiny_run) as api:
        response = await api.responses.create(model="tiny", input="hi", max_output_tokens=8)
        assert response.id.startswith("resp_") and response.model == "tiny"
        assert response.output_text and response.status in ("completed", "incomplete")
        assert response.usage is not None and 0 < response.usage.output_tokens <= 8
        assert response.usage.total_tokens == (
            response.usage.input_tokens + response.usage.output_tokens
        )
        assert tiny_run.kinds("request")[-1].data["endpoint"] == "/v1/responses"

        stream = await api.responses.create(
            model="tiny", input="hi", max_output_tokens=8, stream=True
        )
        events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    streamed = final(events)
    assert events[-1].type == f"response.{streamed.status}"
    deltas = [e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert deltas and "".join(deltas) == streamed.output_text
    assert streamed.usage is not None
    request = tiny_run.kinds("request")[-1].data
    assert request["endpoint"] == "/v1/responses" and request["stream"] is True
    assert request["completion_tokens"] == streamed.usage.output_tokens


async def test_previous_response_id_continues_the_conversation(tiny_run: Running) -> None:
    async with client(tiny_run) as api:
        first = await api.responses.create(model="tiny", input="hi", max_output_tokens=4)
        second = await api.responses.create(
            model="tiny", input="and then?", previous_response_id=first.id, max_output_tokens=4
        )
        assert second.previous_response_id == first.id and second.output_text
        assert first.usage is not None and second.usage is not None
        # The first turn (its input and answer) was sent again, before the new input.
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        with pytest.raises(openai.BadRequestError) as caught:
            await api.responses.create(model="tiny", input="x", previous_response_id="resp_unknown")
        assert caught.value.code == "previous_response_not_found"
        assert "in memory" in caught.value.message
        unstored = await api.responses.create(
            model="tiny", input="hi", max_output_tokens=2, store=False
        )
        with pytest.raises(openai.BadRequestError):
            await api.responses.create(model="tiny", input="x", previous_response_id=unstored.id)


# --------------------------------------------------------------------------- fake workers


CONVERSATION: ResponseInputParam = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": '{"c": 21}'},
]


async def test_the_translated_chat_request(fake_run: Running) -> None:
    async with client(fake_run) as api:
        response = await api.responses.create(
            model="echo",
            instructions="Be brief.",
            input=CONVERSATION,
            tools=[WEATHER],
            tool_choice="none",
            text=JSON_FORMAT,
            max_output_tokens=5,
            temperature=0.3,
            extra_body={"keep_alive": "10m"},
        )
    received = echoed(response)
    assert received["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"c": 21}'},
    ]
    assert received["tools"] == [
        {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    ]
    assert received["tool_choice"] == "none"
    assert received["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA},
    }
    assert (received["max_tokens"], received["temperature"]) == (5, 0.3)
    assert "keep_alive" not in received and "stream" not in received
    assert response.temperature == 0.3 and response.instructions == "Be brief."
    assert fake_run.kinds("request")[-1].data["endpoint"] == "/v1/responses"


async def test_a_function_call_and_the_follow_up(fake_run: Running) -> None:
    async with client(fake_run) as api:
        response = await api.responses.create(
            model="caller",
            input="Weather in Paris?",
            tools=[WEATHER],
        )
        assert response.status == "completed"
        call = the_call(response)
        assert call.call_id == "call_fake_1"
        assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')

        follow_up = await api.responses.create(
            model="echo",
            previous_response_id=response.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}],
        )
    messages = echoed(follow_up)["messages"]
    assert messages[0] == {"role": "user", "content": "Weather in Paris?"}
    assert messages[1]["tool_calls"][0]["id"] == "call_fake_1"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_fake_1", "content": "21C"}


@pytest.mark.loop_block_ok(SDK_WARM_UP)
async def test_a_streamed_function_call(fake_run: Running) -> None:
    async with client(fake_run) as api:
        stream = await api.responses.create(
            model="caller",
            input="Weather in Paris?",
            tools=[WEATHER],
            stream=True,
        )
        events = [event async for event in stream]
        done = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDoneEvent)]
        assert [e.arguments for e in done] == ['{"city": "Paris"}']
        assert events[-1].type == "response.completed"
        assert the_call(final(events)).arguments == '{"city": "Paris"}'

        # The SDK's stream helper accumulates the same response.
        async with api.responses.stream(
            model="caller",
            input="Weather in Paris?",
            tools=[WEATHER],
        ) as helper:
            async for _ in helper:
                pass
            accumulated = await helper.get_final_response()
    assert the_call(accumulated).arguments == '{"city": "Paris"}'


async def test_stored_responses_can_be_read_and_deleted(fake_run: Running) -> None:
    async with client(fake_run) as api:
        response = await api.responses.create(model="echo", input="hi")
        again = await api.responses.retrieve(response.id)
        assert again.id == response.id and again.output_text == response.output_text
        await api.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            await api.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            await api.responses.delete(response.id)


async def test_what_cannot_be_served_is_refused_before_any_worker(fake_run: Running) -> None:
    async with client(fake_run) as api:
        with pytest.raises(openai.NotFoundError) as missing:
            await api.responses.create(model="nope", input="hi")
        assert "available models" in missing.value.message
        with pytest.raises(openai.BadRequestError) as tool:
            await api.responses.create(
                model="echo",
                input="hi",
                tools=[{"type": "web_search"}],
            )
        assert tool.value.code == "unsupported_tool" and "'function'" in tool.value.message
        with pytest.raises(openai.BadRequestError) as empty:
            await api.responses.create(model="echo", input=[])
        body = empty.value.body
        assert isinstance(body, dict) and body["param"] == "input"


async def test_a_worker_that_dies_mid_stream_fails_the_response(fake_run: Running) -> None:
    body = {"model": "crashy", "input": "hi", "max_output_tokens": 8, "stream": True}
    async with fake_run.http.post("/v1/responses", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    for lines in events:  # every event names its type twice, in the SSE field and the JSON
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ")
        assert json.loads(lines[1][6:])["type"] == lines[0][7:]
    data = [json.loads(lines[1][6:]) for lines in events]
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    assert [d["type"] for d in data][-2:] == ["response.failed", "error"]
    failed = data[-2]["response"]
    assert failed["status"] == "failed" and "worker" in failed["error"]["message"]
    assert data[-1]["code"] == "worker_died"
    assert fake_run.kinds("request")[-1].data["status"] == 502
