"""The Anthropic Messages dialect's pure parts: request and answer translation, the stream
state machine, ping pacing and token counting from a model directory's files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.errors import ApiError
from mlx_serve.router.dialects.anthropic import (
    StreamTranslator,
    count_prompt_tokens,
    from_openai,
    load_counter,
    paced,
    sse,
    template_args,
    to_openai,
)
from tests.conftest import POLL_INTERVAL, eventually

#: A 1x1 PNG, base64.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgG"
    "AWjR9awAAAABJRU5ErkJggg=="
)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def request(**extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def refused(body: dict[str, Any], *, counting: bool = False) -> ApiError:
    with pytest.raises(ApiError) as caught:
        to_openai(body, counting=counting)
    assert caught.value.status == 400
    assert caught.value.anthropic_body()["error"]["type"] == "invalid_request_error"
    return caught.value


# ------------------------------------------------------------------------- requests


def test_a_whole_tool_conversation_becomes_openai_messages() -> None:
    body = request(
        system=[
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use tools."},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "text", "text": "21C"},
                            {"type": "text", "text": "sunny"},
                        ],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": "boom",
                        "is_error": True,
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        tools=[{"name": "get_weather", "description": "Weather.", "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        metadata={"user_id": "u"},
        keep_alive="5m",
    )
    out = to_openai(body)
    assert out["messages"] == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21C\nsunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
        {"role": "user", "content": "Thanks"},
    ]
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": SCHEMA, "description": "Weather."},
        }
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["parallel_tool_calls"] is False
    assert {k: out[k] for k in ("max_tokens", "stop", "temperature", "top_p", "top_k")} == {
        "max_tokens": 16,
        "stop": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
    }
    assert out["keep_alive"] == "5m" and "metadata" not in out and "stream" not in out


def test_tool_choice_types_and_streaming_usage() -> None:
    choices = {"auto": "auto", "any": "required", "none": "none"}
    for anthropic_type, openai_value in choices.items():
        out = to_openai(request(tool_choice={"type": anthropic_type}))
        assert out["tool_choice"] == openai_value and "parallel_tool_calls" not in out
    streamed = to_openai(request(stream=True))
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}


def test_output_config_format_becomes_response_format() -> None:
    out = to_openai(request(output_config={"format": {"type": "json_schema", "schema": SCHEMA}}))
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA},
    }
    assert "response_format" not in to_openai(request(output_config={"effort": "low"}))


def test_tool_results_carry_images_into_the_next_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    out = to_openai(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": [image]},
                    ],
                }
            ]
        )
    )
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "t", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
            ],
        },
    ]


def test_counting_needs_no_max_tokens() -> None:
    out = to_openai({"model": "m", "messages": [{"role": "user", "content": "x"}]}, counting=True)
    assert out == {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert (
        "max_tokens"
        in refused({"model": "m", "messages": [{"role": "user", "content": "x"}]}).message
    )


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "assistant", "content": list(blocks)}]}


TOOL_USE = {"type": "tool_use", "id": "a", "name": "b", "input": {}}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role"),
        (user({"type": "document", "source": {}}), "'document'"),
        (user(TOOL_USE), "'tool_use'"),
        (assistant({"type": "tool_result", "tool_use_id": "a"}), "'tool_result'"),
        (user({"type": "image", "source": {"type": "file", "file_id": "f"}}), "'file'"),
        (assistant({**TOOL_USE, "input": "x"}), "input"),
        (
            user(
                {"type": "tool_result", "tool_use_id": "a", "content": [{"type": "search_result"}]}
            ),
            "'search_result'",
        ),
        ({"system": [{"type": "image"}]}, "'image'"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
        ({"tools": [{"description": "no name"}]}, "name"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"top_k": -1}, "top_k"),
        ({"mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
        ({"output_config": {"format": {"type": "yaml"}}}, "output_config"),
        ({"output_config": "json"}, "output_config"),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_it(extra: dict[str, Any], named: str) -> None:
    assert named in refused(request(**extra)).message


# --------------------------------------------------------------------------- answers


def openai_answer(message: dict[str, Any], finish: str, **usage: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "model": "w",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, **usage},
    }


def test_a_text_answer_becomes_a_message() -> None:
    data = openai_answer(
        {"role": "assistant", "content": "Hello", "reasoning": "think"},
        "length",
        prompt_tokens_details={"cached_tokens": 6},
    )
    out = from_openai(data, model="alias", stops=[])
    assert out["id"].startswith("msg_") and out["type"] == "message" and out["role"] == "assistant"
    assert out["model"] == "alias"
    assert out["content"] == [
        {"type": "thinking", "thinking": "think", "signature": ""},
        {"type": "text", "text": "Hello"},
    ]
    assert out["stop_reason"] == "max_tokens" and out["stop_sequence"] is None
    assert out["usage"] == {
        "input_tokens": 4,
        "output_tokens": 4,
        "cache_read_input_tokens": 6,
        "cache_creation_input_tokens": 0,
    }


def test_tool_calls_become_tool_use_blocks() -> None:
    calls = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"type": "function", "function": {"name": "broken", "arguments": "{not json"}},
    ]
    out = from_openai(
        openai_answer({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"),
        model="m",
        stops=[],
    )
    first, second = out["content"]
    assert first == {
        "type": "tool_use",
        "id": "c1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert second["id"].startswith("toolu_") and second["input"] == {}
    assert out["stop_reason"] == "tool_use"


def test_stop_reasons() -> None:
    def reason(text: str, finish: str, stops: list[str], **choice: Any) -> tuple[Any, ...]:
        data = openai_answer({"role": "assistant", "content": text}, finish)
        data["choices"][0].update(choice)
        out = from_openai(data, model="m", stops=stops)
        return out["stop_reason"], out["stop_sequence"], out["content"][0]["text"]

    assert reason("done", "stop", []) == ("end_turn", None, "done")
    assert reason("done", "stop", ["END"]) == ("end_turn", None, "done")  # mlx_lm: can't tell
    assert reason("doneEND", "stop", ["END"]) == ("stop_sequence", "END", "done")
    assert reason("done", "stop", ["END"], stop_reason="END") == ("stop_sequence", "END", "done")
    assert reason("done", "stop", ["END"], matched_stop="END") == ("stop_sequence", "END", "done")
    assert reason("doneEND", "length", ["END"]) == ("max_tokens", None, "doneEND")


def test_an_answer_without_a_message_is_the_workers_fault() -> None:
    with pytest.raises(ApiError) as caught:
        from_openai({"choices": []}, model="m", stops=[])
    assert caught.value.status == 502


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def run_stream(chunks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    translator = StreamTranslator("alias", ["END"])
    events = translator.start()
    for item in chunks:
        events += translator.feed(item)
    return events + translator.finish()


def test_a_text_stream_is_anthropics_event_sequence() -> None:
    events = run_stream(
        [
            chunk({"role": "assistant", "reasoning": "hm"}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
        ]
    )
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["model"] == "alias" and start["stop_reason"] is None
    assert events[2][1]["content_block"]["type"] == "thinking"
    assert events[5][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[7][1]["delta"] == {"type": "text_delta", "text": "lo"}
    ending = events[-2][1]
    assert ending["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert ending["usage"]["output_tokens"] == 3 and ending["usage"]["input_tokens"] == 7


def test_streamed_tool_calls_become_input_json_deltas() -> None:
    events = run_stream(
        [
            chunk({"content": "Let me see."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "other", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        ]
    )
    starts = [data for name, data in events if name == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "c1",
        "name": "get_weather",
        "input": {},
    }
    pieces = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["index"] == 1
    ]
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1, 2]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_stop_reasons() -> None:
    assert run_stream([chunk({"content": "x"}, "length")])[-2][1]["delta"]["stop_reason"] == (
        "max_tokens"
    )
    matched = run_stream(
        [{"choices": [{"delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}]
    )
    assert matched[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    empty = run_stream([])
    assert [n for n, _ in empty] == ["message_start", "ping", "message_delta", "message_stop"]


def test_sse_framing_names_every_event() -> None:
    framed = sse([("ping", {"type": "ping"}), ("x", {"t": "é"})])
    assert framed == 'event: ping\ndata: {"type":"ping"}\n\nevent: x\ndata: {"t":"é"}\n\n'.encode()


async def test_paced_yields_none_while_the_source_is_silent_and_cancels_it() -> None:
    release = asyncio.Event()
    finished = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await release.wait()
            yield 2
            await asyncio.Event().wait()  # never ends on its own
        finally:
            finished.set()

    seen: list[int | None] = []
    items = paced(source(), POLL_INTERVAL)
    async for item in items:
        seen.append(item)
        if item is None:
            release.set()
        if item == 2:
            break
    assert seen[0] == 1 and None in seen and seen[-1] == 2
    async for item in items:  # the source is silent again: pings until it is closed
        assert item is None
        break
    await items.aclose()
    await eventually(finished.is_set, what="the source to be cancelled")


async def test_closing_paced_closes_its_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.set()

    items = paced(source(), POLL_INTERVAL)
    assert await anext(items) == 1
    await items.aclose()
    assert closed.is_set()


def test_template_args_come_from_the_workers_flags() -> None:
    assert template_args({"chat_template_args": '{"enable_thinking": false}'}) == {
        "enable_thinking": False
    }
    assert template_args({"chat-template-args": '{"a": 1}', "max_tokens": 9}) == {"a": 1}
    assert template_args(["--max-tokens", "9", "--chat-template-args", '{"b": 2}']) == {"b": 2}
    assert template_args({"chat_template_args": "not json"}) == {}
    assert template_args({}) == {}


# -------------------------------------------------------------------------- counting


def write_model(root: Path, **files: Any) -> Path:
    """A model directory whose tokenizer makes one token of each word and punctuation mark."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<s>"])
    tokenizer.save(str(root / "tokenizer.json"))
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (root / name.replace("__", ".")).write_text(text)
    return root


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m.role }} : {{ m.content }}\n"
    "{% for c in m.tool_calls or [] %}call {{ c.function.arguments.city }}\n{% endfor %}"
    "{% endfor %}{% if tools %}tools {{ tools | length }}\n{% endif %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def count(root: Path, body: dict[str, Any], args: dict[str, Any] | None = None) -> int:
    out = to_openai(body, counting=True)
    return count_prompt_tokens(str(root), out["messages"], out.get("tools"), args or {})


def test_counting_renders_the_template_as_mlx_lm_does(tmp_path: Path) -> None:
    root = write_model(
        tmp_path / "m",
        tokenizer_config__json={"chat_template": TEMPLATE, "bos_token": {"content": "<s>"}},
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "one two"}]}
    # <s> user : one two \n assistant :  -> "<s>", "user", ":", "one", "two", "assistant", ":"
    assert count(root, body) == 7
    longer = {
        "model": "m",
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "one two"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t", "name": "w", "input": {"city": "Paris"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}],
            },
        ],
        "tools": [{"name": "w", "input_schema": SCHEMA}],
    }
    # + "system : be brief" (4), "assistant :" (2), "call Paris" (2: arguments are parsed
    # back into an object, as mlx_lm does), "tool : ok" (3), "tools 1" (2)
    assert count(root, longer) == 7 + 4 + 2 + 2 + 3 + 2


def test_template_sources_and_named_templates(tmp_path: Path) -> None:
    named = [
        {"name": "default", "template": "d {{ messages | length }}"},
        {"name": "tool_use", "template": "tools a b c {{ tools | tojson }}"},
    ]
    root = write_model(tmp_path / "named", tokenizer_config__json={"chat_template": named})
    plain = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert count(root, plain) == 2
    with_tools = {**plain, "tools": [{"name": "w", "input_schema": {}}]}
    assert count(root, with_tools) > 4
    jinja = write_model(
        tmp_path / "jinja",
        tokenizer_config__json={"chat_template": "ignored words here"},
        chat_template__jinja="{% generation %}a b {% endgeneration %}{{ extra_word }}",
    )
    assert count(jinja, plain, {"extra_word": "c"}) == 3
    from_json = write_model(tmp_path / "json", chat_template__json={"chat_template": "a"})
    assert count(from_json, plain) == 1


def test_a_model_without_a_template_counts_mlx_lms_plain_prompt(tmp_path: Path) -> None:
    root = write_model(tmp_path / "plain")
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    # "USER: hello\nASSISTANT:" -> USER, :, hello, ASSISTANT, :
    assert count(root, body) == 5


def test_counting_errors_are_the_clients_400s(tmp_path: Path) -> None:
    failing = write_model(
        tmp_path / "strict",
        tokenizer_config__json={"chat_template": "{{ raise_exception('roles must alternate') }}"},
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ApiError) as caught:
        count(failing, body)
    assert caught.value.status == 400 and "roles must alternate" in caught.value.message
    broken = write_model(tmp_path / "broken", chat_template__jinja="{% for %}")
    with pytest.raises(ApiError) as caught:
        count(broken, body)
    assert caught.value.status == 400 and "could not be loaded" in caught.value.message
    no_tokenizer = tmp_path / "empty"
    no_tokenizer.mkdir()
    for path in (str(no_tokenizer), "fake/not-downloaded", "not a repo id"):
        with pytest.raises(ApiError) as caught:
            count_prompt_tokens(path, [{"role": "user", "content": "x"}], None, {})
        assert caught.value.status == 400 and "cannot count tokens" in caught.value.message


def test_the_counter_is_cached_per_directory_and_tokenizer_version(tmp_path: Path) -> None:
    root = write_model(tmp_path / "cached", tokenizer_config__json={"chat_template": "a"})
    stamp = (root / "tokenizer.json").stat().st_mtime_ns
    assert load_counter(str(root), stamp) is load_counter(str(root), stamp)
    assert load_counter(str(root), stamp + 1) is not load_counter(str(root), stamp)
