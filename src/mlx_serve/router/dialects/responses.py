"""OpenAI's Responses API (``POST /v1/responses``), what Codex CLI and the Agents SDK speak,
answered by the same chat completions the OpenAI routes forward.

A Responses request becomes one chat request (:func:`to_chat`), sent through
:mod:`mlx_serve.router.calls` so the scheduler, ``keep_alive``, retries, error mapping and the
metrics apply as on ``/v1/chat/completions``; the worker's answer, whole or streamed, becomes a
Response (:class:`Translation`). Both directions are pure functions of JSON, tested without a
worker.

What is translated: :func:`to_chat`; what is accepted and ignored, or refused:
:func:`refuse_unsupported`; ``previous_response_id`` and ``GET``/``DELETE``:
:class:`ResponseStore`.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mlx_serve.errors import ApiError
from mlx_serve.grammar import with_article
from mlx_serve.router.calls import call_model
from mlx_serve.router.keys import SUPERVISOR
from mlx_serve.router.prepare import Prepared, prepare
from mlx_serve.router.request_body import read_json_object
from mlx_serve.supervisor import Supervisor

Json = dict[str, Any]

PATH = "/v1/responses"
CHAT = "/v1/chat/completions"

#: How many responses ``previous_response_id`` can refer to, and their total JSON size.
STORE_LIMIT = 256
STORE_BYTES = 256 * 2**20

#: Chat request fields mlx_lm reads that Responses has no name for: passed through as sent.
PASSTHROUGH = (
    "top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "keep_alive",
)  # fmt: skip

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
TOOL_CHOICES = ("none", "auto", "required")

#: Responses' name for a chat ``finish_reason`` that leaves the answer incomplete.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}

#: Chat parameter names in errors raised by the chat checks, in this API's terms.
PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text"}

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def bad(message: str, param: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Stored:
    response: Json
    items: list[Json]
    """Every input item the response answered, earlier turns of its chain included."""
    size: int

    def history(self) -> list[Json]:
        """The conversation a follow-up continues: this response's input, then its output."""
        return [*self.items, *self.response["output"]]


class ResponseStore:
    """The last responses, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

    ``previous_response_id`` is served from this bounded in-memory store (the last
    :data:`STORE_LIMIT` responses, at most :data:`STORE_BYTES` of JSON, least recently used
    first out; ``store: false`` responses are not kept). A response remembers its whole input,
    so a chain survives the eviction of its older links; ``instructions`` are not carried over,
    as on OpenAI. The store is lost on restart, and an unknown id is a 400 saying so.
    ``GET``/``DELETE /v1/responses/{id}`` read and drop stored responses.
    """

    def __init__(self, limit: int = STORE_LIMIT, max_bytes: int = STORE_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: Json, items: list[Json]) -> None:
        size = len(json.dumps([response, items]))
        if size > self.max_bytes:
            return  # larger than the whole store: a follow-up gets the "not kept" 400
        self.delete(response["id"])
        self._entries[response["id"]] = Stored(response, items, size)
        self._bytes += size
        while len(self._entries) > self.limit or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size

    def get(self, response_id: str) -> Stored | None:
        stored = self._entries.get(response_id)
        if stored is not None:
            self._entries.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        stored = self._entries.pop(response_id, None)
        if stored is not None:
            self._bytes -= stored.size
        return stored is not None

    def history(self, response_id: object) -> list[Json]:
        """The items a request with ``previous_response_id`` continues, or a 400."""
        if response_id is None:
            return []
        if not isinstance(response_id, str):
            raise bad("'previous_response_id' must be a string", "previous_response_id")
        stored = self.get(response_id)
        if stored is None:
            raise bad(
                f"previous response {response_id!r} not found: mlx-serve keeps only the last "
                f"{self.limit} responses, in memory (they are lost when it restarts; those "
                "sent with store: false are not kept); send the whole conversation in 'input'",
                "previous_response_id",
                "previous_response_not_found",
            )
        return stored.history()


RESPONSES = web.AppKey("responses", ResponseStore)


# --------------------------------------------------------------------------- request


def to_chat(body: Json, history: list[Json]) -> tuple[Json, list[Json]]:
    """The chat request for a Responses ``body`` continuing ``history``, and the input items
    it answers (``history`` and the body's own), to store with its response.

    What is translated: ``input`` (a string, or ``message`` / ``function_call`` /
    ``function_call_output`` items; ``developer`` messages become ``system`` ones,
    ``input_image`` parts ``image_url`` parts), ``instructions`` (a first system message),
    ``max_output_tokens`` (``max_tokens``), ``temperature``, ``top_p``, ``parallel_tool_calls``,
    function ``tools``, ``tool_choice``, ``text.format`` (``response_format``), ``stream`` (with
    the usage chunk asked for) and our ``keep_alive``. Sampling extensions mlx_lm reads
    (``top_k``, ``min_p``, ``seed``, ...) pass through.
    """
    refuse_unsupported(body)
    items = [*history, *input_items(body.get("input"))]
    messages = to_messages(items)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad("'instructions' must be a string", "instructions")
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise bad("'input' is required: a string or a list of input items", "input")
    chat: Json = {"model": body.get("model"), "messages": messages}
    chat.update(sampling(body))
    chat.update(tool_fields(body))
    response_format = to_response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    if stream_wanted(body):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, items


def refuse_unsupported(body: Json) -> None:
    """Refuse the fields that ask for what mlx-serve cannot do.

    Refused with a 400 naming the field (here, or where the field is read): tools other than
    ``function`` (web search, file search, computer use... run on OpenAI's side),
    ``background: true``, ``conversation``, ``prompt`` (stored prompt templates),
    ``item_reference`` and other input item types, ``input_file`` parts and images by
    ``file_id`` (there is no Files API).

    Accepted and ignored, because nothing here could honour them and refusing would break
    clients that always send them: ``reasoning`` (the model thinks or not as its chat template
    makes it), ``include`` (there is no encrypted reasoning, logprobs or tool source to add),
    ``truncation`` (the input is never truncated: too long an input gets the worker's error;
    the Response says ``"disabled"``), ``metadata`` and ``user`` (echoed), ``service_tier``,
    ``prompt_cache_key``, ``safety_identifier``, ``max_tool_calls``, ``text.verbosity``.
    """
    if body.get("background"):
        raise bad(
            "background responses are not supported: mlx-serve answers while the request is "
            "open (set stream: true to see it progress)",
            "background",
        )
    if body.get("conversation") is not None:
        raise bad(
            "conversations are not supported; chain responses with previous_response_id or "
            "send the whole conversation in 'input'",
            "conversation",
        )
    if body.get("prompt") is not None:
        raise bad("stored prompts are not supported; send 'input' (and 'instructions')", "prompt")
    if not isinstance(body.get("store", True), bool):
        raise bad("'store' must be true or false", "store")


def stream_wanted(body: Json) -> bool:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    return bool(stream)


def sampling(body: Json) -> Json:
    chat: Json = {key: body[key] for key in PASSTHROUGH if key in body}
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
        chat["max_tokens"] = limit
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    return chat


def input_items(value: object) -> list[Json]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise bad("'input' must be a string or a list of input items (objects)", "input")
    return value


def to_messages(items: list[Json]) -> list[Json]:
    """Chat messages for the input items; ``reasoning`` items are dropped (chat templates drop
    past reasoning too)."""
    messages: list[Json] = []
    for item in items:
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            messages.append(to_message(item))
        elif kind == "function_call":
            add_tool_call(messages, item)
        elif kind == "function_call_output":
            messages.append(to_tool_message(item))
        elif kind != "reasoning":
            raise bad(
                f"input items of type {kind!r} are not supported; mlx-serve takes message, "
                "function_call and function_call_output items (reasoning items are ignored)",
                "input",
                "unsupported_input_item",
            )
    return messages


def to_message(item: Json) -> Json:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a list or object is unhashable
        raise bad(f"a message's 'role' must be one of {', '.join(ROLES)}, not {role!r}", "input")
    return {"role": ROLES[role], "content": to_content(item.get("content"))}


def to_content(content: object) -> str | list[Json]:
    """Chat content: a string when it is all text (what every chat template takes)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad("a message's 'content' must be a string or a list of content parts", "input")
    parts = [to_part(part) for part in content]
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def to_part(part: object) -> Json:
    if not isinstance(part, dict):
        raise bad("content parts must be objects with a 'type'", "input")
    kind = part.get("type")
    if isinstance(kind, str) and (kind in TEXT_PARTS or kind == "refusal"):  # [] is unhashable
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise bad(f"{with_article(str(kind))} content part needs a 'text' string", "input")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise bad(
                "input_image parts need an 'image_url' (a data: URL); images by file_id are "
                "not supported (mlx-serve has no Files API)",
                "input",
                "unsupported_content",
            )
        return {"type": "image_url", "image_url": {"url": url}}
    raise bad(
        f"content parts of type {kind!r} are not supported; use input_text, output_text or "
        "input_image",
        "input",
        "unsupported_content",
    )


def add_tool_call(messages: list[Json], item: Json) -> None:
    """A ``function_call`` item joins the assistant turn it follows (parallel calls, or text
    then calls), or starts one."""
    name, call_id, arguments = item.get("name"), item.get("call_id"), item.get("arguments")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise bad("a function_call item needs a 'name' and a 'call_id'", "input")
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments)
    if not isinstance(arguments, str):
        raise bad(f"function_call {name!r}: 'arguments' must be a JSON string", "input")
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})


def to_tool_message(item: Json) -> Json:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str):
        raise bad("a function_call_output item needs the 'call_id' it answers", "input")
    content = to_content(output) if isinstance(output, list) else output
    if not isinstance(content, str):
        raise bad(
            f"function_call_output {call_id!r}: 'output' must be a string or text parts", "input"
        )
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tool_fields(body: Json) -> Json:
    chat: Json = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad("'tools' must be a list of function tools", "tools")
        if tools:
            chat["tools"] = [to_tool(tool) for tool in tools]
    choice = body.get("tool_choice")
    if choice is not None:
        chat["tool_choice"] = to_tool_choice(choice)
    return chat


def to_tool(tool: object) -> Json:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise bad(
            f"tools of type {kind!r} are not supported: mlx-serve runs only 'function' tools "
            "(the client runs them); built-in tools like web_search run on OpenAI's side",
            "tools",
            "unsupported_tool",
        )
    assert isinstance(tool, dict)
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise bad("a function tool needs a 'name'", "tools")
    function = {
        key: tool[key]
        for key in ("name", "description", "parameters", "strict")
        if tool.get(key) is not None
    }
    return {"type": "function", "function": function}


def to_tool_choice(choice: object) -> object:
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad(
        '\'tool_choice\' must be "none", "auto", "required" or '
        '{"type": "function", "name": ...} (built-in and allowed_tools choices are not supported)',
        "tool_choice",
    )


def to_response_format(text: object) -> Json | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if not isinstance(text, dict) or (fmt is not None and kind is None):
        raise bad('\'text\' must be {"format": {"type": ...}}', "text")
    if kind is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise bad(f"text.format type {kind!r} is not one of text, json_object, json_schema", "text")
    assert isinstance(fmt, dict)
    schema = {
        key: fmt[key]
        for key in ("name", "description", "schema", "strict")
        if fmt.get(key) is not None
    }
    return {"type": "json_schema", "json_schema": schema}


def prepare_chat(supervisor: Supervisor, chat: Json) -> Prepared:
    """:func:`prepare` for the chat endpoint, its errors told in this API's terms."""
    try:
        return prepare(supervisor, chat, CHAT)
    except ApiError as exc:
        raise in_our_terms(exc) from None


def in_our_terms(exc: ApiError) -> ApiError:
    param = PARAMS.get(exc.param or "", exc.param)
    message = exc.message.replace(CHAT, PATH)
    for chat_name, ours in PARAMS.items():
        message = message.replace(f"'{chat_name}'", f"'{ours}'")
    if (param, message) == (exc.param, exc.message):
        return exc
    return ApiError(
        exc.status, message, type=exc.type, code=exc.code, param=param, headers=exc.headers
    )


# --------------------------------------------------------------------------- reply


def new_response(body: Json, prepared: Prepared) -> Json:
    """A Response with nothing generated yet, echoing the request as OpenAI does."""
    chat = prepared.body
    text: Json = body["text"] if isinstance(body.get("text"), dict) else {}
    reasoning = body.get("reasoning")
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": chat.get("max_tokens"),
        "metadata": body.get("metadata") or {},
        "model": prepared.requested,
        "output": [],
        "parallel_tool_calls": chat.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": reasoning
        if isinstance(reasoning, dict)
        else {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": chat.get("temperature"),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": chat.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
    }


def to_usage(usage: Json | None) -> Json | None:
    if usage is None:
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached or 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


#: Per kind of output item with text: its content part type and its delta/done event names.
TEXT_EVENTS = {
    "message": ("output_text", "response.output_text.delta", "response.output_text.done"),
    "reasoning": (
        "reasoning_text",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
    ),
}


@dataclass
class Item:
    """One output item being generated: a message, reasoning or a function call."""

    kind: str
    index: int
    id: str
    text: str = ""
    """The message or reasoning text, or the call's arguments."""
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"

    def part(self, text: str) -> Json:
        if self.kind == "message":
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": text}

    def render(self, *, empty: bool = False) -> Json:
        """The item as the API shows it (``empty``: as first announced)."""
        status = "in_progress" if empty else self.status
        common = {"id": self.id, "type": self.kind, "status": status}
        if self.kind == "function_call":
            arguments = "" if empty else self.text
            return {**common, "call_id": self.call_id, "name": self.name, "arguments": arguments}
        content = [] if empty else [self.part(self.text)]
        if self.kind == "message":
            return {**common, "role": "assistant", "content": content}
        return {**common, "summary": [], "content": content}

    def where(self) -> Json:
        return {"item_id": self.id, "output_index": self.index}


class Translation:
    """Chat completion chunks in, the Response and its stream events out.

    The worker's reasoning text (mlx_lm's ``reasoning``), when a thinking model produces it,
    comes back as a ``reasoning`` output item.

    A whole (non-streamed) completion is fed as one chunk, so both ways build the same output:
    items in the order the model produced them, each announced, filled and closed before the
    next one starts.
    """

    def __init__(self, response: Json) -> None:
        self.response = response
        self._items: list[Item] = []
        self._open: Item | None = None
        self._calls: dict[int, Item] = {}
        self._finish: str | None = None
        self._usage: Json | None = None

    def start(self) -> list[Json]:
        return [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]

    def feed(self, chunk: Json) -> list[Json]:
        """The events for one chat chunk (or a whole completion)."""
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        events: list[Json] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or choice.get("message")
            if isinstance(delta, dict):
                events += self._delta(delta)
            if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
                self._finish = choice["finish_reason"]
        return events

    def finish(self) -> list[Json]:
        """Close what is open and complete the Response (``incomplete`` when cut short)."""
        reason = INCOMPLETE.get(self._finish or "")
        events = [] if self._items else self._start_item("message")  # always an answer
        if self._open is not None:
            events += self._close("incomplete" if reason else "completed")
        self.response = self._snapshot("incomplete" if reason else "completed")
        if reason:
            self.response["incomplete_details"] = {"reason": reason}
        return [*events, {"type": f"response.{self.response['status']}", "response": self.response}]

    def fail(self, error: ApiError) -> list[Json]:
        """The worker failed mid-stream: the Response failed, and an ``error`` event."""
        self.response = self._snapshot("failed")
        self.response["error"] = {"code": "server_error", "message": error.message}
        return [
            {"type": "response.failed", "response": self.response},
            {"type": "error", "code": error.code, "message": error.message, "param": None},
        ]

    def _snapshot(self, status: str) -> Json:
        return {
            **self.response,
            "status": status,
            "output": [item.render() for item in self._items],
            "usage": to_usage(self._usage),
            **({"completed_at": int(time.time())} if status == "completed" else {}),
        }

    def _lifecycle(self, kind: str) -> Json:
        return {"type": kind, "response": self._snapshot("in_progress")}

    def _delta(self, delta: Json) -> list[Json]:
        events: list[Json] = []
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            events += self._text("reasoning", reasoning)
        if isinstance(delta.get("content"), str) and delta["content"]:
            events += self._text("message", delta["content"])
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                events += self._tool_call(call, position)
        return events

    def _text(self, kind: str, text: str) -> list[Json]:
        open_item = self._open
        events = [] if open_item and open_item.kind == kind else self._start_item(kind)
        item = self._open
        assert item is not None
        item.text += text
        delta = {"type": TEXT_EVENTS[kind][1], **item.where(), "content_index": 0, "delta": text}
        return [*events, {**delta, "logprobs": []} if kind == "message" else delta]

    def _tool_call(self, call: Json, position: int) -> list[Json]:
        index = call.get("index")
        index = index if isinstance(index, int) else position  # a dict key: hashable
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        events: list[Json] = []
        item = self._calls.get(index)
        if item is None:
            call_id = call.get("id") or new_id("call")
            events = self._start_item(
                "function_call", call_id=call_id, name=function.get("name") or ""
            )
            item = self._calls[index] = self._items[-1]
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments)
        if isinstance(arguments, str) and arguments:
            item.text += arguments
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    **item.where(),
                    "delta": arguments,
                }
            )
        return events

    def _start_item(self, kind: str, call_id: str = "", name: str = "") -> list[Json]:
        events = self._close("completed") if self._open else []
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = Item(kind, len(self._items), new_id(prefix), call_id=call_id, name=name)
        self._items.append(item)
        self._open = item
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": item.index,
                "item": item.render(empty=True),
            }
        )
        if kind in TEXT_EVENTS:
            events.append(
                {
                    "type": "response.content_part.added",
                    **item.where(),
                    "content_index": 0,
                    "part": item.part(""),
                }
            )
        return events

    def _close(self, status: str) -> list[Json]:
        item = self._open
        assert item is not None
        self._open, item.status = None, status
        if item.kind == "function_call":
            events = [
                {
                    "type": "response.function_call_arguments.done",
                    **item.where(),
                    "name": item.name,
                    "arguments": item.text,
                }
            ]
        else:
            done = {
                "type": TEXT_EVENTS[item.kind][2],
                **item.where(),
                "content_index": 0,
                "text": item.text,
            }
            events = [
                {**done, "logprobs": []} if item.kind == "message" else done,
                {
                    "type": "response.content_part.done",
                    **item.where(),
                    "content_index": 0,
                    "part": item.part(item.text),
                },
            ]
        events.append(
            {"type": "response.output_item.done", "output_index": item.index, "item": item.render()}
        )
        return events


# --------------------------------------------------------------------------- handlers


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request)
    store = request.app[RESPONSES]
    chat, items = to_chat(body, store.history(body.get("previous_response_id")))
    prepared = prepare_chat(request.app[SUPERVISOR], chat)
    translation = Translation(new_response(body, prepared))

    def keep(response: Json) -> None:
        if response["store"]:
            store.put(response, items)

    if prepared.body.get("stream"):
        return await stream_response(request, prepared, translation, keep)
    async with call_model(request, prepared) as reply:
        data = await reply.json()
    translation.feed(data)
    translation.finish()
    keep(translation.response)
    return web.json_response(translation.response)


class EventWriter:
    """Responses' server-sent events: ``event:`` and ``data:`` lines, numbered in order."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._sequence = 0

    async def send(self, events: list[Json]) -> None:
        if not events:
            return
        data = bytearray()
        for event in events:
            event["sequence_number"] = self._sequence
            self._sequence += 1
            data += b"event: %s\ndata: %s\n\n" % (
                event["type"].encode(),
                json.dumps(event).encode(),
            )
        await self._response.write(bytes(data))


async def stream_response(
    request: web.Request,
    prepared: Prepared,
    translation: Translation,
    keep: Callable[[Json], None],
) -> web.StreamResponse:
    """Stream the Response's events; the headers go only once the worker answered, so every
    failure before that is still an HTTP error."""
    async with call_model(request, prepared) as reply:
        resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await resp.prepare(request)
        writer = EventWriter(resp)
        try:
            await writer.send(translation.start())
            try:
                async for chunk in reply.events():
                    await writer.send(translation.feed(chunk))
            except ApiError as exc:  # the worker died mid-stream (already in the trace)
                await writer.send(translation.fail(exc))
            else:
                await writer.send(translation.finish())
                keep(translation.response)
        except ConnectionError:  # the client left; leaving the block stops the worker
            reply.trace.status, reply.trace.error = 499, "client closed the request"
            return resp
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


def not_stored(response_id: str) -> ApiError:
    return ApiError(
        404,
        f"response {response_id!r} not found: mlx-serve keeps the last {STORE_LIMIT} responses "
        "in memory only (not those sent with store: false, and none across restarts)",
        code="response_not_found",
    )


async def get_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    stored = request.app[RESPONSES].get(response_id)
    if stored is None:
        raise not_stored(response_id)
    return web.json_response(stored.response)


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if not request.app[RESPONSES].delete(response_id):
        raise not_stored(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


def add_routes(app: web.Application) -> None:
    """``/v1/responses`` and its in-memory store of past responses."""
    app[RESPONSES] = ResponseStore()
    app.router.add_post(PATH, create_response)
    app.router.add_get(PATH + "/{response_id}", get_response)
    app.router.add_delete(PATH + "/{response_id}", delete_response)
