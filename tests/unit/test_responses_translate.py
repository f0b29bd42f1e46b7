"""The Responses dialect's translations, both ways, without a worker: Responses requests to chat
requests, chat completions (whole or as chunks) to a Response and its stream events, each
event and Response checked against the ``openai`` SDK's own models (every required field)."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from openai import BaseModel
from openai.types.responses import (
    FunctionTool,
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseStreamEvent,
)

from mlx_serve.errors import ApiError
from mlx_serve.router.dialects.responses import (
    CHAT,
    ResponseStore,
    Translation,
    in_our_terms,
    new_response,
    to_chat,
)
from mlx_serve.router.prepare import Prepared

Json = dict[str, Any]

#: Each stream event model of the SDK by its ``type``.
EVENT_MODELS: dict[str, type[BaseModel]] = {
    typing.get_args(model.model_fields["type"].annotation)[0]: model
    for model in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}


def chat_of(body: Json, history: list[Json] | None = None) -> Json:
    return to_chat({"model": "m", **body}, history or [])[0]


def refused(body: Json) -> ApiError:
    with pytest.raises(ApiError) as caught:
        chat_of(body)
    assert caught.value.status == 400
    return caught.value


def translation(**body: Any) -> Translation:
    chat = chat_of({"input": "hi", **body})
    return Translation(new_response(body, Prepared("m", "alias", None, chat, CHAT)))


def checked(events: list[Json]) -> list[Json]:
    """``events`` after each parsed by the SDK's model of its type (sequence numbers added)."""
    for n, event in enumerate(events):
        EVENT_MODELS[event["type"]].model_validate({**event, "sequence_number": n})
    return events


def types(events: list[Json]) -> list[str]:
    return [event["type"] for event in events]


def chunk(delta: Json | None = None, finish: str | None = None, **extra: Any) -> Json:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}

# --------------------------------------------------------------------------- requests


def test_a_string_input_with_instructions_and_sampling() -> None:
    chat = chat_of(
        {
            "input": "hi",
            "instructions": "Be brief.",
            "max_output_tokens": 8,
            "temperature": 0.2,
            "top_p": 0.9,
            "keep_alive": "5m",
            "top_k": 40,
            "metadata": {"a": "b"},
            "user": "u",
            "reasoning": {"effort": "low"},
            "include": ["reasoning.encrypted_content"],
            "truncation": "auto",
        }
    )
    assert chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 8,
        "temperature": 0.2,
        "top_p": 0.9,
        "keep_alive": "5m",
        "top_k": 40,
    }


def test_streaming_asks_for_the_usage_chunk() -> None:
    chat = chat_of({"input": "hi", "stream": True})
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "stream" not in chat_of({"input": "hi", "stream": False})


def test_messages_with_and_without_type_and_content_parts() -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    chat = chat_of(
        {
            "input": [
                {"role": "developer", "content": "Rules."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "one "},
                        {"type": "input_text", "text": "two"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": image, "detail": "auto"},
                    ],
                },
            ]
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "one two"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        },
    ]


def test_function_calls_and_their_outputs() -> None:
    call = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
        "status": "completed",
    }
    chat = chat_of(
        {
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": "Checking."},
                call,
                {**call, "call_id": "call_2", "arguments": {"city": "Rome"}},
                {"type": "function_call_output", "call_id": "call_1", "output": '{"c": 21}'},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": '{"c": 25}'}],
                },
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": True,
        }
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"c": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"c": 25}'},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is True


def test_a_call_without_text_starts_its_own_assistant_turn() -> None:
    item = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    chat = chat_of({"input": [{"role": "user", "content": "go"}, item]})
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"},
                        "strict": True}},
            {"type": "json_schema",
             "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True}},
        ),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        ({"format": {"type": "text"}, "verbosity": "low"}, None),
    ],
)  # fmt: skip
def test_text_format_becomes_response_format(text: Json, expected: Json | None) -> None:
    assert chat_of({"input": "x", "text": text}).get("response_format") == expected


def test_history_comes_first() -> None:
    history: list[Json] = [
        {"type": "message", "role": "user", "content": "a"},
        {"type": "message", "role": "assistant", "status": "completed", "id": "msg_1",
         "content": [{"type": "output_text", "text": "b", "annotations": []}]},
    ]  # fmt: skip
    chat, items = to_chat({"model": "m", "input": "c", "instructions": "I"}, history)
    assert [m["content"] for m in chat["messages"]] == ["I", "a", "b", "c"]
    assert items == [*history, {"type": "message", "role": "user", "content": "c"}]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools", "only 'function' tools"),
        ({"tools": [{"type": "function"}]}, "tools", "needs a 'name'"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "not supported"),
        ({"text": {"format": {"type": "yaml"}}}, "text", "json_schema"),
        ({"background": True}, "background", "not supported"),
        ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"prompt": {"id": "p"}}, "prompt", "not supported"),
        ({"max_output_tokens": 0}, "max_output_tokens", "positive integer"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"store": "no"}, "store", "true or false"),
        ({"instructions": 3}, "instructions", "string"),
        ({"input": 3}, "input", "string or a list"),
        ({"input": []}, "input", "required"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "item_reference"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input", "'role'"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input",
            "input_file",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input",
            "file_id",
        ),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input", "call_id"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input", "call_id"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_the_field(
    body: Json, param: str, words: str
) -> None:
    error = refused({"input": "x", **body})
    assert error.param == param
    assert words in error.message


def test_chat_check_errors_are_told_in_responses_terms() -> None:
    error = in_our_terms(
        ApiError(400, "'max_tokens' is 9, more than the model's context length (8)",
                 param="max_tokens", code="context_length_exceeded")
    )  # fmt: skip
    assert error.param == "max_output_tokens" and error.message.startswith("'max_output_tokens'")
    assert error.code == "context_length_exceeded"
    kind = in_our_terms(ApiError(400, "served at /v1/embeddings, not /v1/chat/completions"))
    assert kind.message.endswith("not /v1/responses")


# --------------------------------------------------------------------------- the store


def stored_response(response_id: str, pad: int = 0) -> Json:
    return {"id": response_id, "output": [{"type": "message", "pad": "x" * pad}]}


def test_the_store_keeps_the_most_recently_used() -> None:
    store = ResponseStore(limit=2)
    store.put(stored_response("a"), [{"role": "user", "content": "1"}])
    store.put(stored_response("b"), [])
    assert store.get("a") is not None  # a is now the most recently used
    store.put(stored_response("c"), [])
    assert store.get("b") is None and len(store) == 2
    assert store.history("a") == [{"role": "user", "content": "1"}, {"type": "message", "pad": ""}]
    assert store.delete("a") and not store.delete("a")


def test_the_store_is_bounded_in_bytes_too() -> None:
    store = ResponseStore(limit=10, max_bytes=1000)
    store.put(stored_response("a", 400), [])
    store.put(stored_response("b", 400), [])
    store.put(stored_response("c", 400), [])
    assert [store.get(k) is not None for k in "abc"] == [False, True, True]
    store.put(stored_response("huge", 2000), [])
    assert store.get("huge") is None and store.get("c") is not None


def test_an_unknown_previous_response_says_what_is_kept() -> None:
    with pytest.raises(ApiError) as caught:
        ResponseStore(limit=3).history("resp_gone")
    error = caught.value
    assert (error.status, error.code, error.param) == (
        400,
        "previous_response_not_found",
        "previous_response_id",
    )
    assert "last 3 responses" in error.message and "restart" in error.message
    assert ResponseStore().history(None) == []


# --------------------------------------------------------------------------- replies


def test_a_streamed_answer_as_sdk_events() -> None:
    t = translation()
    events = t.start()
    events += t.feed(chunk({"role": "assistant", "content": "Hel", "reasoning_content": ""}))
    events += t.feed(chunk({"content": "lo"}, "stop"))
    events += t.feed({"choices": [], "usage": USAGE})
    events += t.finish()
    assert types(checked(events)) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    response = Response.model_validate(events[-1]["response"])
    assert response.output_text == "Hello" and response.status == "completed"
    assert response.model == "alias"
    assert response.usage is not None and response.usage.total_tokens == 7
    assert events[6]["text"] == "Hello"
    assert events[2]["item"]["id"] == events[-2]["item"]["id"] == events[4]["item_id"]


def test_an_answer_cut_by_max_output_tokens_is_incomplete() -> None:
    t = translation(max_output_tokens=2)
    message = {"role": "assistant", "content": "a b"}
    t.feed(
        {"choices": [{"index": 0, "finish_reason": "length", "message": message}], "usage": USAGE}
    )
    events = checked(t.finish())
    assert events[-1]["type"] == "response.incomplete"
    response = Response.model_validate(t.response)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 2
    assert isinstance(response.output[0], ResponseOutputMessage)
    assert response.output[0].status == "incomplete"


def test_a_streamed_tool_call_in_pieces() -> None:
    t = translation(tools=[WEATHER])
    first = {"index": 0, "id": "call_9", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    events = t.start() + t.feed(chunk({"role": "assistant", "tool_calls": [first]}))
    for piece in ('{"city"', ': "Paris"}'):
        events += t.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    events += t.feed(chunk({}, "tool_calls")) + t.finish()
    assert types(checked(events))[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-3]["arguments"] == '{"city": "Paris"}'
    (call,) = Response.model_validate(t.response).output
    assert call.type == "function_call" and call.call_id == "call_9"
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')


def test_a_whole_completion_with_reasoning_text_and_calls() -> None:
    t = translation()
    message = {
        "role": "assistant",
        "reasoning": "Let me think.",
        "content": "Calling.",
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": {"x": 1}}},
        ],
    }
    t.feed({"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})
    checked(t.finish())
    response = Response.model_validate(t.response)
    assert [item.type for item in response.output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert response.output_text == "Calling."
    calls = [o for o in response.output[2:] if isinstance(o, ResponseFunctionToolCall)]
    assert [(o.call_id, o.arguments) for o in calls] == [
        ("a", "{}"),
        ("b", '{"x": 1}'),
    ]
    assert response.usage is None
    # Fed back as the next turn's history, the output is the same assistant turn.
    chat = chat_of({"input": "next"}, [{"role": "user", "content": "go"}, *t.response["output"]])
    assert chat["messages"][1]["content"] == "Calling."
    assert [c["id"] for c in chat["messages"][1]["tool_calls"]] == ["a", "b"]


def test_an_empty_answer_is_still_a_message() -> None:
    t = translation()
    checked(t.start() + t.feed(chunk({}, "stop")) + t.finish())
    response = Response.model_validate(t.response)
    assert response.output_text == "" and len(response.output) == 1


def test_a_worker_failure_mid_stream() -> None:
    t = translation()
    events = t.start() + t.feed(chunk({"content": "par"}))
    events += t.fail(ApiError(502, "model 'm': the worker failed mid-stream", code="worker_died"))
    assert types(checked(events))[-2:] == ["response.failed", "error"]
    assert events[-1]["code"] == "worker_died"
    response = Response.model_validate(t.response)
    assert response.status == "failed" and response.error is not None
    assert "mid-stream" in response.error.message


def test_the_response_echoes_the_request() -> None:
    body = {
        "instructions": "I",
        "temperature": 0.5,
        "tools": [WEATHER],
        "tool_choice": "required",
        "text": {"format": {"type": "json_object"}},
        "metadata": {"k": "v"},
        "store": False,
    }
    t = translation(**body)
    t.finish()
    response = Response.model_validate(t.response)
    assert response.instructions == "I" and response.temperature == 0.5
    assert response.tool_choice == "required"
    assert isinstance(response.tools[0], FunctionTool) and response.tools[0].name == "get_weather"
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_object"
    assert response.metadata == {"k": "v"} and t.response["store"] is False
    assert json.loads(json.dumps(t.response)) == t.response  # plain JSON
