"""The Ollama dialect's translation, without a server: request bodies to OpenAI ones, streamed
OpenAI chunks back to Ollama's answer, model names with tags."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import ModelType
from mlx_serve.errors import ApiError
from mlx_serve.router.dialects.ollama import (
    Turn,
    capabilities,
    chat_template,
    chat_to_openai,
    configured_name,
    format_to_openai,
    generate_to_openai,
    image_data_url,
    messages_to_openai,
    nanoseconds,
    options_to_openai,
    parameter_size,
    quantization_level,
    stream_flag,
    timestamp,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 40).decode()


def resolver(*names: str) -> Any:
    return lambda name: name if name in names else None


# ------------------------------------------------------------------------------ names


def test_a_configured_name_wins_over_tag_stripping() -> None:
    resolve = resolver("chat", "org/c:latest")
    assert configured_name(resolve, "chat") == "chat"
    assert configured_name(resolve, "org/c:latest") == "org/c:latest"


def test_a_tag_is_stripped_when_the_full_name_is_not_configured() -> None:
    resolve = resolver("chat")
    assert configured_name(resolve, "chat:latest") == "chat"
    assert configured_name(resolve, "chat:7b") == "chat"
    assert configured_name(resolve, "other:latest") is None
    assert configured_name(resolve, ":latest") is None
    assert configured_name(resolve, "chat:") is None


def test_a_name_without_tag_finds_its_latest_form() -> None:
    assert configured_name(resolver("chat:latest"), "chat") == "chat:latest"
    assert configured_name(resolver("chat:7b"), "chat") is None


# ---------------------------------------------------------------------------- options


def test_options_map_to_openai_fields_and_llama_cpp_ones_are_dropped() -> None:
    out = options_to_openai(
        {
            "temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n"],
            "num_predict": 12, "num_ctx": 4096, "num_gpu": 1, "repeat_penalty": 1.1,
            "repeat_last_n": 64, "min_p": 0.05, "mirostat": 0,
        }
    )  # fmt: skip
    assert out == {
        "temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n"],
        "max_tokens": 12, "repetition_penalty": 1.1, "repetition_context_size": 64,
        "min_p": 0.05,
    }  # fmt: skip


@pytest.mark.parametrize("num_predict", [-1, -2, 0])
def test_unlimited_num_predict_leaves_max_tokens_out(num_predict: int) -> None:
    assert options_to_openai({"num_predict": num_predict}) == {}


@pytest.mark.parametrize(
    "options",
    [
        "fast",
        {"temperature": "hot"},
        {"top_k": 1.5},
        {"num_predict": "10"},
        {"seed": True},
        {"stop": [1]},
        {"temperature": float("nan")},
    ],
)
def test_bad_options_are_a_400(options: Any) -> None:
    with pytest.raises(ApiError) as err:
        options_to_openai(options)
    assert err.value.status == 400


def test_format() -> None:
    assert format_to_openai(None) is None
    assert format_to_openai("") is None
    assert format_to_openai("json") == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert format_to_openai(schema) == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    with pytest.raises(ApiError):
        format_to_openai("yaml")


def test_stream_defaults_to_true() -> None:
    assert stream_flag({}) is True
    assert stream_flag({"stream": None}) is True
    assert stream_flag({"stream": False}) is False
    with pytest.raises(ApiError):
        stream_flag({"stream": "no"})


# ----------------------------------------------------------------------------- images


def test_images_become_data_urls_of_their_sniffed_type() -> None:
    assert image_data_url(PNG, "x") == "data:image/png;base64," + PNG
    assert image_data_url(JPEG, "x") == "data:image/jpeg;base64," + JPEG
    already = "data:image/png;base64," + PNG
    assert image_data_url(already, "x") == already


@pytest.mark.parametrize("image", ["", 3, "!!!not base64!!!", base64.b64encode(b"hello").decode()])
def test_what_is_not_an_image_is_a_400(image: object) -> None:
    with pytest.raises(ApiError) as err:
        image_data_url(image, "messages[0].images[0]")
    assert err.value.status == 400


# --------------------------------------------------------------------------- messages


def test_messages_with_images_tool_calls_and_tool_results() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?", "images": [PNG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "time", "arguments": {"zone": "CET"}}},
            ],
        },
        {"role": "tool", "content": "12:00", "tool_name": "time"},
        {"role": "tool", "content": "sunny"},
    ]
    out = messages_to_openai(messages, vision=True)
    assert out[0] == {"role": "system", "content": "be brief"}
    assert out[1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}},
    ]
    assert out[2]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "time", "arguments": '{"zone": "CET"}'},
        },
    ]
    # Matched by name, then the oldest unanswered call.
    assert out[3] == {"role": "tool", "content": "12:00", "tool_call_id": "call_2", "name": "time"}
    assert out[4] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


def test_images_for_a_text_model_are_a_400() -> None:
    with pytest.raises(ApiError) as err:
        messages_to_openai([{"role": "user", "content": "x", "images": [PNG]}], vision=False)
    assert err.value.status == 400 and "images" in err.value.message


@pytest.mark.parametrize(
    "messages",
    [
        ["hi"],
        [{"content": "no role"}],
        [{"role": "assistant", "tool_calls": "call"}],
        [{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}],
    ],
)
def test_malformed_messages_are_a_400(messages: list[Any]) -> None:
    with pytest.raises(ApiError) as err:
        messages_to_openai(messages, vision=False)
    assert err.value.status == 400


def test_chat_body() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = {
        "model": "chat:latest",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "format": "json",
        "options": {"num_predict": 5, "num_ctx": 2048},
        "keep_alive": "5m",
        "think": True,
        "stream": False,
    }
    assert chat_to_openai(body, "chat", vision=False) == {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "response_format": {"type": "json_object"},
        "max_tokens": 5,
        "keep_alive": "5m",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_generate_is_a_chat_turn_with_the_system_prompt() -> None:
    endpoint, body = generate_to_openai(
        {"prompt": "hi", "system": "be brief", "images": [PNG]}, "see", vision=True
    )
    assert endpoint == "/v1/chat/completions"
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["messages"][1]["content"][0] == {"type": "text", "text": "hi"}
    assert body["messages"][1]["content"][1]["type"] == "image_url"


def test_raw_generate_is_a_completion() -> None:
    endpoint, body = generate_to_openai(
        {"prompt": "<s>hi", "raw": True, "system": "ignored", "suffix": ""}, "chat", vision=False
    )
    assert endpoint == "/v1/completions"
    assert body["prompt"] == "<s>hi" and "messages" not in body


@pytest.mark.parametrize(
    ("body", "vision"),
    [
        ({"prompt": "def f(", "suffix": "return 1"}, False),
        ({"prompt": "x", "template": "{{ .Prompt }}"}, False),
        ({"prompt": 5}, False),
        ({"prompt": "x", "raw": "yes"}, False),
        ({"prompt": "x", "raw": True}, True),
        ({"prompt": "x", "raw": True, "images": [PNG]}, False),
    ],
)
def test_generate_refusals(body: dict[str, Any], vision: bool) -> None:
    with pytest.raises(ApiError) as err:
        generate_to_openai(body, "m", vision=vision)
    assert err.value.status == 400


# -------------------------------------------------------------------------- answers


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_turn_gathers_text_thinking_and_usage() -> None:
    turn = Turn()
    assert turn.add(chunk({"role": "assistant", "content": "Hel"})) == ("Hel", "")
    assert turn.add(chunk({"reasoning": "hmm"})) == ("", "hmm")
    assert turn.add(chunk({"content": "lo"}, "length")) == ("lo", "")
    assert turn.add({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}) == (
        "",
        "",
    )
    assert "".join(turn.text) == "Hello" and "".join(turn.thinking) == "hmm"
    assert turn.done_reason() == "length"
    assert turn.usage == {"prompt_tokens": 3, "completion_tokens": 2}


def test_a_completion_turn_reads_text() -> None:
    turn = Turn()
    turn.add({"choices": [{"index": 0, "text": "abc", "finish_reason": "stop"}]})
    assert turn.text == ["abc"] and turn.done_reason() == "stop"


def test_tool_calls_streamed_in_pieces_come_back_as_objects() -> None:
    turn = Turn()
    first: dict[str, Any] = {"index": 0, "id": "c", "type": "function"}
    turn.add(chunk({"tool_calls": [{**first, "function": {"name": "weather", "arguments": ""}}]}))
    for piece in ('{"ci', 'ty": "Pa', 'ris"}'):
        turn.add(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    # mlx_lm sends each call whole (its arguments may be an object already).
    turn.add(chunk({"tool_calls": [{"index": 1, "function": {"name": "t", "arguments": {}}}]}))
    turn.add(chunk({}, "tool_calls"))
    assert turn.tool_calls() == [
        {"function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}},
        {"function": {"index": 1, "name": "t", "arguments": {}}},
    ]
    assert turn.done_reason() == "stop"  # Ollama says "stop" after tool calls too


def test_tool_call_arguments_that_are_not_an_object_are_a_502() -> None:
    turn = Turn()
    turn.add(chunk({"tool_calls": [{"function": {"name": "f", "arguments": '{"cut'}}]}))
    with pytest.raises(ApiError) as err:
        turn.tool_calls()
    assert err.value.status == 502 and "'f'" in err.value.message


def test_units() -> None:
    assert nanoseconds(1.5) == 1_500_000_000 and nanoseconds(-1) == 0
    assert timestamp(0) == "1970-01-01T00:00:00Z"
    assert parameter_size(7_241_732_096) == "7.2B"
    assert parameter_size(494_032_768) == "494.0M"
    assert parameter_size(None) == ""
    assert quantization_level({"quantization": {"bits": 4, "group_size": 64}}) == "Q4"
    assert quantization_level({"quantization": None, "dtype": "bf16"}) == "BF16"
    assert quantization_level({}) == ""


def test_capabilities() -> None:
    assert capabilities(ModelType.TEXT, "{{ messages }}") == ["completion"]
    assert capabilities(ModelType.TEXT, "{% if tools %}") == ["completion", "tools"]
    assert capabilities(ModelType.VISION, "") == ["completion", "vision"]
    assert capabilities(ModelType.EMBEDDING, "tools") == ["embedding"]
    assert capabilities(ModelType.TTS, "") == []


def test_chat_template_sources(tmp_path: Path) -> None:
    assert chat_template(tmp_path) == ""
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": [
                    {"name": "tool_use", "template": "T"},
                    {"name": "default", "template": "D"},
                ]
            }
        )
    )
    assert chat_template(tmp_path) == "D"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert chat_template(tmp_path) == "J"
    (tmp_path / "chat_template.jinja").write_text("K")
    assert chat_template(tmp_path) == "K"
