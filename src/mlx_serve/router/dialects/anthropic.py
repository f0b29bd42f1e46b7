"""Anthropic's Messages API (``POST /v1/messages`` and ``/v1/messages/count_tokens``).

Why: Claude Code and every Anthropic SDK speak only this API; with it they can use a local
model by pointing ``ANTHROPIC_BASE_URL`` at mlx-serve. The workers speak only OpenAI's chat
completions, so each request is translated to an OpenAI chat request, sent through
:mod:`mlx_serve.router.calls` (scheduler, ``keep_alive``, retries, metrics and the worker's
errors work as on the OpenAI routes) and the answer translated back, streamed or whole.

What is translated (see :func:`to_openai`): the system prompt, text, image, ``tool_use`` and
``tool_result`` blocks, tools and ``tool_choice``, ``stop_sequences``, the sampling settings
and ``keep_alive`` (our extension). What cannot be honoured (Anthropic's server tools, files,
documents, MCP servers) is refused with a 400 naming it, rather than silently ignored.
``metadata``, ``thinking``, ``service_tier``, ``cache_control``, ``output_config.effort`` and
the like are accepted and ignored: they change nothing a local model could do differently.

Token counting renders the model's own chat template with ``jinja2`` and encodes the text with
the ``tokenizers`` package, in a thread: the router never imports transformers (seconds) nor
loads the model. Templates are untrusted code from the hub: they run in jinja2's sandbox, as
transformers runs them.

Every error on these routes is in Anthropic's shape: the error middleware renders
:class:`ApiError` so under ``/v1/messages``; once a stream has started, an ``event: error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from aiohttp import web

from mlx_serve.errors import ApiError
from mlx_serve.router.calls import Reply, call_model
from mlx_serve.router.keys import SUPERVISOR
from mlx_serve.router.prepare import prepare, resolve_model
from mlx_serve.router.request_body import read_json_object

log = logging.getLogger("mlx_serve.router.anthropic")

#: The worker endpoint every Messages request becomes.
CHAT: Final = "/v1/chat/completions"
#: Seconds without a token after which a ``ping`` event keeps the stream (and proxies) alive,
#: e.g. while a long prompt is processed or a tool call is generated (mlx_lm sends nothing then).
PING_INTERVAL = 10.0
#: Request fields that need Anthropic's own servers: refused, never ignored.
REFUSED_FIELDS: Final = {
    "mcp_servers": "MCP servers run by the API",
    "container": "code-execution containers",
}
#: ``tool_choice`` types and the OpenAI value each becomes (``tool`` names a function).
TOOL_CHOICES: Final = {"auto": "auto", "any": "required", "none": "none"}
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

Event = tuple[str, dict[str, Any]]
"""One server-sent event: its ``event:`` name and its ``data:`` object."""


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_request")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --------------------------------------------------------------------- request translation


def to_openai(body: Mapping[str, Any], *, counting: bool = False) -> dict[str, Any]:
    """The OpenAI chat request for an Anthropic Messages ``body``; 400 for what is malformed
    or cannot be served. ``counting``: for count_tokens (no ``max_tokens``, no sampling)."""
    for field, what in REFUSED_FIELDS.items():
        if body.get(field):
            raise _bad(f"'{field}' is not supported: mlx-serve has no {what}", field)
    out: dict[str, Any] = {"model": body.get("model")}
    out["messages"] = system_messages(body.get("system")) + chat_messages(body.get("messages"))
    tools = body.get("tools")
    if tools:
        out["tools"] = openai_tools(tools)
    if body.get("tool_choice") is not None:
        out.update(openai_tool_choice(body["tool_choice"]))
    if not counting:
        out.update(sampling(body))
        out.update(response_format(body.get("output_config")))
    return out


def sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """``max_tokens`` (required), ``stop_sequences`` -> ``stop``, the sampling settings,
    ``stream`` (with usage asked for) and ``keep_alive``, in OpenAI's names."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("'max_tokens' is required: the most tokens to generate", "max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("'max_tokens' must be a positive integer", "max_tokens")
    out: dict[str, Any] = {"max_tokens": max_tokens}
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise _bad("'stop_sequences' must be a list of non-empty strings", "stop_sequences")
        if stops:
            out["stop"] = stops
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise _bad("'top_k' must be a non-negative integer", "top_k")
    for key in ("temperature", "top_p", "top_k", "stream", "keep_alive"):
        if body.get(key) is not None:
            out[key] = body[key]
    if out.get("stream") is True:
        out["stream_options"] = {"include_usage": True}
    return out


def response_format(config: object) -> dict[str, Any]:
    """``output_config.format`` (a JSON schema for the answer) as OpenAI's ``response_format``;
    ``output_config.effort`` has no local meaning and is ignored."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _bad("'output_config' must be an object", "output_config")
    fmt = config.get("format")
    if fmt is None:
        return {}
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    if not isinstance(schema, dict) or fmt.get("type") != "json_schema":
        raise _bad(
            "'output_config.format' must be {'type': 'json_schema', 'schema': {...}}",
            "output_config",
        )
    json_schema = {"name": "output", "schema": schema}
    return {"response_format": {"type": "json_schema", "json_schema": json_schema}}


def system_messages(system: object) -> list[dict[str, Any]]:
    """``system`` (a string or text blocks) as the leading OpenAI system message."""
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _bad("'system' must be a string or a list of text blocks", "system")
    texts = [_text_of(block, f"system[{i}]") for i, block in enumerate(system)]
    return [{"role": "system", "content": "\n".join(texts)}]


def _text_of(block: object, where: str) -> str:
    """The text of a block that may only be text (system prompt, tool results)."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind != "text":
        raise _bad(
            f"{where}: content block type {kind!r} is not supported here; only 'text' is",
            "system" if where.startswith("system") else "messages",
        )
    assert isinstance(block, dict)
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}: a text block needs a 'text' string", "messages")
    return text


def chat_messages(messages: object) -> list[dict[str, Any]]:
    """Anthropic turns as OpenAI messages (a user turn may become several: tool results
    first, as ``role: tool`` messages, then what the user said)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _bad(f"messages[{i}].role must be 'user' or 'assistant'", "messages")
        assert isinstance(message, dict)
        blocks = _blocks(message.get("content"), f"messages[{i}]")
        out += user_turn(blocks, i) if role == "user" else [assistant_turn(blocks, i)]
    return out


def _blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or a list of content blocks", "messages")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}.content[{j}] must be an object with a 'type'", "messages")
    return content


def _unsupported(kind: str, where: str, role: str) -> ApiError:
    return _bad(
        f"{where}: content block type {kind!r} is not supported in a {role} message "
        "(mlx-serve translates text, image, tool_use and tool_result blocks)",
        "messages",
    )


def user_turn(blocks: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    """One user turn: its ``tool_result`` blocks as tool messages, the rest as a user message.
    Images inside tool results go into that user message (tool messages hold only text)."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"messages[{i}].content[{j}]"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, where)})
        elif kind == "image":
            parts.append(image_part(block, where))
        elif kind == "tool_result":
            message, images = tool_message(block, where)
            tool_messages.append(message)
            parts += images
        else:
            raise _unsupported(kind, where, "user")
    if not parts:
        return tool_messages
    return [*tool_messages, {"role": "user", "content": _content(parts)}]


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string (what every chat template takes); with images, parts."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An image block as an OpenAI ``image_url`` part (base64 -> a ``data:`` URL)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not media.startswith("image/"):
            raise _bad(f"{where}: a base64 image needs a 'media_type' like image/png", "messages")
        if not isinstance(data, str) or not data:
            raise _bad(f"{where}: a base64 image needs its 'data'", "messages")
        url = f"data:{media};base64,{data}"
    elif kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _bad(
            f"{where}: image source type {kind!r} is not supported; send 'base64' (or 'url')",
            "messages",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def tool_message(
    block: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool_result`` block as an OpenAI tool message, plus the images it carried."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}: a tool_result needs its 'tool_use_id'", "messages")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for k, part in enumerate(_blocks("" if content is None else content, where)):
        if part["type"] == "image":
            images.append(image_part(part, f"{where}.content[{k}]"))
        else:
            texts.append(_text_of(part, f"{where}.content[{k}]"))
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def assistant_turn(blocks: list[dict[str, Any]], i: int) -> dict[str, Any]:
    """An assistant turn: its text, and its ``tool_use`` blocks as OpenAI tool calls.
    Thinking blocks are dropped (chat templates drop past reasoning too)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"messages[{i}].content[{j}]"
        kind = block["type"]
        if kind == "text":
            texts.append(_text_of(block, where))
        elif kind == "tool_use":
            calls.append(tool_call(block, where))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _unsupported(kind, where, "assistant")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def tool_call(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A ``tool_use`` block as an OpenAI tool call (its ``input`` JSON-encoded)."""
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}: a tool_use block needs an 'id'", "messages")
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}: a tool_use block needs a 'name'", "messages")
    if not isinstance(arguments, dict):
        raise _bad(f"{where}: a tool_use block's 'input' must be an object", "messages")
    function = {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}
    return {"id": call_id, "type": "function", "function": function}


def openai_tools(tools: object) -> list[dict[str, Any]]:
    """Custom tools (``name``, ``description``, ``input_schema``) as OpenAI function tools;
    Anthropic's own tool types (web search, code execution...) are refused by name."""
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list of tools", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type", "custom") if isinstance(tool, dict) else None
        if kind not in ("custom", None):
            raise _bad(
                f"tools[{i}]: tool type {kind!r} is not supported: it runs on Anthropic's "
                "servers; mlx-serve serves custom tools (name, description, input_schema)",
                "tools",
            )
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"tools[{i}] must be an object with a 'name'", "tools")
        schema = tool.get("input_schema", {"type": "object", "properties": {}})
        if not isinstance(schema, dict):
            raise _bad(f"tools[{i}].input_schema must be a JSON schema object", "tools")
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def openai_tool_choice(choice: object) -> dict[str, Any]:
    """``tool_choice`` in OpenAI's words (plus ``parallel_tool_calls`` when forbidden)."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any] = {}
    if isinstance(kind, str) and kind in TOOL_CHOICES:  # a list or object is unhashable
        out["tool_choice"] = TOOL_CHOICES[kind]
    elif kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad(
            "'tool_choice' must be {'type': 'auto' | 'any' | 'none'} or "
            "{'type': 'tool', 'name': ...}",
            "tool_choice",
        )
    assert isinstance(choice, dict)
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# --------------------------------------------------------------------- answer translation


def usage(openai_usage: object) -> dict[str, int]:
    """OpenAI usage as Anthropic's: ``input_tokens`` excludes the prompt-cache hits, which
    are ``cache_read_input_tokens`` (their sum is the whole prompt, as on Anthropic's API)."""
    data = openai_usage if isinstance(openai_usage, dict) else {}
    prompt = _int(data.get("prompt_tokens"))
    details = data.get("prompt_tokens_details")
    cached = min(_int(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": _int(data.get("completion_tokens")),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def stop_reason(finish_reason: object, *, called_tool: bool, matched: str | None) -> str:
    """Anthropic's ``stop_reason`` for how the worker stopped."""
    if finish_reason == "length":
        return "max_tokens"
    if called_tool:
        return "tool_use"
    if matched is not None:
        return "stop_sequence"
    return "end_turn"  # "stop", and "tool_calls" without a call that could be parsed


def matched_stop(choice: Mapping[str, Any], stops: list[str]) -> str | None:
    """The stop sequence that ended generation, when the worker says which (vLLM's
    ``stop_reason``, SGLang's ``matched_stop``). mlx_lm does not: its stops end as end_turn."""
    for key in ("stop_reason", "matched_stop"):
        value = choice.get(key)
        if isinstance(value, str) and value in stops:
            return value
    return None


def tool_use_block(call: object) -> dict[str, Any]:
    """An OpenAI tool call as a ``tool_use`` block with its arguments parsed into ``input``."""
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    raw = function.get("arguments")
    arguments: object = raw
    if isinstance(raw, str):
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        log.warning("tool call %r: arguments are not a JSON object: %.200r", function, raw)
        arguments = {}
    call_id = call.get("id") if isinstance(call, dict) else None
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else new_id("toolu"),
        "name": str(function.get("name") or ""),
        "input": arguments,
    }


def from_openai(data: Mapping[str, Any], *, model: str, stops: list[str]) -> dict[str, Any]:
    """A whole OpenAI chat completion as an Anthropic message."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise ApiError(
            502, f"model {model!r}: the worker's answer has no message", code="bad_answer"
        )
    message = choice["message"]
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    matched = matched_stop(choice, stops)
    text = message.get("content")
    if isinstance(text, str) and text:
        if matched is None and choice.get("finish_reason") == "stop":
            matched = next((s for s in stops if text.endswith(s)), None)
            text = text[: -len(matched)] if matched else text  # a worker that kept it
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    tools = [tool_use_block(call) for call in (calls if isinstance(calls, list) else [])]
    content += tools
    reason = stop_reason(choice.get("finish_reason"), called_tool=bool(tools), matched=matched)
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": matched if reason == "stop_sequence" else None,
        "usage": usage(data.get("usage")),
    }


class StreamTranslator:
    """OpenAI chat chunks in, Anthropic stream events out (no I/O: a pure state machine).

    Content blocks open and close in order: thinking, text and each tool call get their own
    block; a tool call's arguments become ``input_json_delta`` pieces.
    """

    def __init__(self, model: str, stops: list[str]) -> None:
        self._model = model
        self._stops = stops
        self._index = -1  # the latest block's index
        self._open: str | None = None  # the open block's type
        self._tools: dict[object, int] = {}  # OpenAI tool-call index -> block index
        self._finish: object = None
        self._matched: str | None = None
        self._usage: object = None

    def start(self) -> list[Event]:
        message: dict[str, Any] = {
            "id": new_id("msg"), "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage(None),  # the prompt's size comes with the worker's usage, at the end
        }  # fmt: skip
        return [("message_start", {"type": "message_start", "message": message}), PING]

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return []
        delta = choice.get("delta")
        events: list[Event] = []
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            events += self._piece("thinking", reasoning)
            events += self._piece("text", delta.get("content"))
            events += self._tool_calls(delta.get("tool_calls"))
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._matched = matched_stop(choice, self._stops)
        return events

    def finish(self) -> list[Event]:
        events = self._close()
        reason = stop_reason(self._finish, called_tool=bool(self._tools), matched=self._matched)
        delta = {
            "stop_reason": reason,
            "stop_sequence": self._matched if reason == "stop_sequence" else None,
        }
        ending = {"type": "message_delta", "delta": delta, "usage": usage(self._usage)}
        return [*events, ("message_delta", ending), ("message_stop", {"type": "message_stop"})]

    def _piece(self, kind: str, text: object) -> list[Event]:
        """A text or thinking piece, in the open block of its kind or a new one."""
        if not isinstance(text, str) or not text:
            return []
        events: list[Event] = []
        if self._open != kind:
            empty = {"type": "text", "text": ""}
            if kind == "thinking":
                empty = {"type": "thinking", "thinking": "", "signature": ""}
            events = self._start_block(empty)
        field = "text" if kind == "text" else "thinking"
        events.append(_block_delta(self._index, {"type": f"{kind}_delta", field: text}))
        return events

    def _tool_calls(self, calls: object) -> list[Event]:
        events: list[Event] = []
        for n, call in enumerate(calls if isinstance(calls, list) else []):
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            key = index if isinstance(index, int) else n  # a worker's odd index: a dict key
            function: dict[str, Any] = call.get("function") or {}
            if not isinstance(function, dict):
                continue
            if key not in self._tools:
                call_id = call.get("id")
                events += self._start_block({
                    "type": "tool_use",
                    "id": call_id if isinstance(call_id, str) and call_id else new_id("toolu"),
                    "name": str(function.get("name") or ""),
                    "input": {},
                })  # fmt: skip
                self._tools[key] = self._index
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                piece = {"type": "input_json_delta", "partial_json": arguments}
                events.append(_block_delta(self._tools[key], piece))
        return events

    def _start_block(self, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._index += 1
        self._open = block["type"]
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        events.append(("content_block_start", start))
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]


PING: Final[Event] = ("ping", {"type": "ping"})


def _block_delta(index: int, delta: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def sse(events: list[Event]) -> bytes:
    """Events in SSE framing, each with its ``event:`` line (Anthropic's clients need it)."""
    return b"".join(
        b"event: " + name.encode() + b"\ndata: "
        + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
        for name, data in events
    )  # fmt: skip


# --------------------------------------------------------------------------- /v1/messages


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request)
    openai_body = to_openai(body)
    prepared = prepare(request.app[SUPERVISOR], openai_body, CHAT, clamp_max_tokens=True)
    stops = stop_list(prepared.body.get("stop"))
    async with call_model(request, prepared) as reply:
        if prepared.body.get("stream"):
            return await _stream(request, reply, StreamTranslator(prepared.requested, stops))
        data = await reply.json()
        return web.json_response(from_openai(data, model=prepared.requested, stops=stops))


def stop_list(stop: object) -> list[str]:
    """The stop sequences in force (a model's defaults may give one as a string)."""
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []


async def _stream(
    request: web.Request, reply: Reply, translator: StreamTranslator
) -> web.StreamResponse:
    """Write the translated stream. Headers go out only now, after the worker accepted the
    request; a worker failing mid-stream becomes an ``event: error``."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        await response.write(sse(translator.start()))
        async with contextlib.aclosing(paced(reply.events(), PING_INTERVAL)) as chunks:
            async for chunk in chunks:
                if out := [PING] if chunk is None else translator.feed(chunk):
                    await response.write(sse(out))
        await response.write(sse(translator.finish()))
    except ApiError as exc:
        with contextlib.suppress(ConnectionError):
            await response.write(sse([("error", exc.anthropic_body())]))
    except ConnectionError:  # the client left; call_model closes the worker's stream
        reply.trace.status, reply.trace.error = 499, "client closed the request"
        return response
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


T = TypeVar("T")
_END: Final = object()


async def _next(iterator: AsyncIterator[T]) -> object:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END


async def paced(items: AsyncIterator[T], interval: float) -> AsyncGenerator[T | None, None]:
    """``items``, with a ``None`` each time ``interval`` seconds pass without one. Closing
    this generator closes ``items`` (a pending read is cancelled)."""
    pending: asyncio.Task[object] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(items))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            item, pending = pending.result(), None
            if item is _END:
                return
            yield cast(T, item)
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # retrieved: it raced the close, nobody wants it now
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


# --------------------------------------------------------------- /v1/messages/count_tokens


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's size in the model's own tokens, without loading the model."""
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request)
    openai_body = to_openai(body, counting=True)
    name = resolve_model(supervisor, openai_body, CHAT)
    model = supervisor.workers[name].model
    count = await asyncio.to_thread(
        count_prompt_tokens,
        model.path,
        openai_body["messages"],
        openai_body.get("tools"),
        template_args(model.args),
    )
    return web.json_response({"input_tokens": count})


def template_args(args: Mapping[str, Any] | list[str]) -> dict[str, Any]:
    """The worker's ``--chat-template-args`` (JSON), which mlx_lm renders the template with."""
    if isinstance(args, list):
        flags = dict(zip(args, [*args[1:], None], strict=True))
        value = flags.get("--chat-template-args")
    else:
        keys = {k.lstrip("-").replace("-", "_"): v for k, v in args.items()}
        value = keys.get("chat_template_args")
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def count_prompt_tokens(
    path: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    extra: dict[str, Any],
) -> int:
    """Tokens of the prompt the worker would build (blocking: run it in a thread)."""
    directory = model_directory(path)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise _no_tokenizer(path, f"{directory} has no tokenizer.json")
    try:
        counter = load_counter(str(directory), tokenizer_file.stat().st_mtime_ns)
    except ImportError as exc:
        raise ApiError(
            501,
            f"counting tokens needs the packages 'tokenizers' and 'jinja2' ({exc}); "
            "install mlx-serve[text]",
            code="not_installed",
        ) from exc
    except Exception as exc:  # files from the hub: a broken tokenizer.json or template
        raise _no_tokenizer(path, f"its tokenizer files could not be loaded: {exc}") from exc
    return counter.count(messages, tools, extra)


def _no_tokenizer(path: str, why: str) -> ApiError:
    return ApiError(
        400,
        f"cannot count tokens for {path!r}: {why} (count_tokens reads the model's "
        "tokenizer.json and chat template from disk)",
        code="tokenizer_unavailable",
    )


def model_directory(path: str) -> Path:
    """Where the model's files are: its directory, or its snapshot in the hub cache."""
    from mlx_serve.hub.cache import resolve_model_dir  # noqa: PLC0415 - huggingface_hub: slow
    from mlx_serve.hub.errors import HubError  # noqa: PLC0415

    try:
        found = resolve_model_dir(path)
    except HubError as exc:
        raise _no_tokenizer(path, str(exc)) from exc
    if found.path is None:
        raise _no_tokenizer(path, "the model is not downloaded yet")
    return found.path


@dataclass(frozen=True)
class TokenCounter:
    """A model's tokenizer and chat template, ready to count prompts with."""

    tokenizer: Any
    """A ``tokenizers.Tokenizer`` (no truncation, no padding)."""
    templates: dict[str, Any]
    """Compiled chat templates by name (``default``, maybe ``tool_use``); empty: none."""
    special: dict[str, str]
    """``bos_token`` and the like, which templates print."""

    def count(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        extra: dict[str, Any],
    ) -> int:
        template = self.templates.get("tool_use" if tools else "default")
        template = template or self.templates.get("default")
        if template is None:  # mlx_lm's own prompt format for models without a template
            text, special_tokens = plain_prompt(messages), True
        else:
            try:
                text = template.render(
                    **self.special, **extra, messages=template_messages(messages),
                    tools=tools, documents=None, add_generation_prompt=True,
                )  # fmt: skip
            except Exception as exc:  # untrusted template code: any failure is its message
                raise _bad(f"the model's chat template refused the conversation: {exc}") from exc
            special_tokens = False  # the template wrote them
        return len(self.tokenizer.encode(text, add_special_tokens=special_tokens).ids)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as mlx_lm hands them to the template: text parts joined, no ``None``
    content, tool-call arguments parsed back into objects."""
    out = []
    for original in messages:
        message = {**original}
        content = message.get("content")
        if content is None:
            message["content"] = ""
        elif isinstance(content, list) and all(p.get("type") == "text" for p in content):
            message["content"] = "".join(p["text"] for p in content)
        if message.get("tool_calls"):
            message["tool_calls"] = [_parsed_call(call) for call in message["tool_calls"]]
        out.append(message)
    return out


def _parsed_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str) and arguments:
        with contextlib.suppress(ValueError):
            function = {**function, "arguments": json.loads(arguments)}
    return {**call, "function": function}


def plain_prompt(messages: list[dict[str, Any]]) -> str:
    """mlx_lm's prompt for a model without a chat template (``convert_chat``)."""
    roles = {"system": "ASSISTANT's RULE: ", "user": "USER: ", "assistant": "ASSISTANT: "}
    prompt = "".join(f"{roles.get(m['role'], '')}{m.get('content') or ''}\n" for m in messages)
    return (prompt + roles["assistant"]).rstrip()


@lru_cache(maxsize=4)
def load_counter(directory: str, stamp: int) -> TokenCounter:
    """Load a model's tokenizer and templates once per directory and ``tokenizer.json``
    version (``stamp``: its mtime)."""
    from tokenizers import Tokenizer  # noqa: PLC0415 - optional extra, loaded on first count

    del stamp  # part of the cache key only
    root = Path(directory)
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    config = _read_json(root / "tokenizer_config.json")
    environment = template_environment()
    templates = {name: environment.from_string(text) for name, text in chat_templates(root).items()}
    return TokenCounter(tokenizer, templates, special_tokens(root, config))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_templates(root: Path) -> dict[str, str]:
    """The model's chat templates by name, where transformers looks for them (in its order):
    ``chat_template.jinja``, ``chat_template.json``, ``tokenizer_config.json``."""
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return {"default": jinja.read_text(encoding="utf-8")}
    found = _read_json(root / "chat_template.json").get("chat_template")
    if found is None:
        found = _read_json(root / "tokenizer_config.json").get("chat_template")
    if isinstance(found, str):
        return {"default": found}
    if isinstance(found, list):  # [{"name": ..., "template": ...}]
        return {
            t["name"]: t["template"]
            for t in found
            if isinstance(t, dict) and isinstance(t.get("name"), str)
            and isinstance(t.get("template"), str)
        }  # fmt: skip
    return {}


def special_tokens(root: Path, config: dict[str, Any]) -> dict[str, str]:
    """``bos_token``, ``eos_token``... as strings (configs hold a string or ``{"content"}``)."""
    merged = {**_read_json(root / "special_tokens_map.json"), **config}
    out: dict[str, str] = {}
    for key, value in merged.items():
        if not key.endswith("_token"):
            continue
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str):
            out[key] = text
    return out


@lru_cache(maxsize=1)
def template_environment() -> Any:
    """A jinja2 sandbox set up as transformers sets it up for chat templates."""
    import jinja2  # noqa: PLC0415 - optional (mlx-lm's dependency), loaded on first count
    import jinja2.ext  # noqa: PLC0415
    import jinja2.sandbox  # noqa: PLC0415

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (training masks): render the body."""

        tags = {"generation"}

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
            sort_keys=sort_keys,
        )  # fmt: skip

    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return environment


def add_routes(app: web.Application) -> None:
    """Register this dialect's routes."""
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
