"""Ollama's API (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``...), translated
to the OpenAI requests the workers take.

Every call to a model goes through :mod:`mlx_serve.router.calls`, so the scheduler,
``keep_alive``, the API key and the metrics apply as on the OpenAI routes; the ``request``
event names the Ollama path. What is translated:

- ``/api/chat`` -> ``/v1/chat/completions``: ``messages`` (``images`` become ``image_url``
  data-URL parts for vision models, assistant ``tool_calls`` get ids and JSON-string
  arguments, ``tool`` messages are matched to them), ``tools``, ``format`` ->
  ``response_format``, ``options`` -> sampling fields (``num_predict`` -> ``max_tokens``...).
- ``/api/generate`` -> ``/v1/chat/completions`` with ``system`` + the prompt as messages (what
  Ollama's template does), or ``/v1/completions`` for ``raw: true``. An empty prompt only loads
  the model (``keep_alive: 0``: unloads it), as in Ollama; so does ``/api/chat`` without
  messages.
- ``/api/embed`` and the older ``/api/embeddings`` -> ``/v1/embeddings``.

The worker is always asked for a stream (with ``stream_options.include_usage``), whatever the
client asked: the answer is either relayed as NDJSON lines or gathered into one object, and
the timings Ollama reports (nanoseconds) come from the same measurements either way.

A ``model`` with a ``:tag`` that is not configured under its full name resolves to the name
without the tag (``chat:latest`` -> ``chat``), and a name without a tag to ``name:latest`` when
that is what is configured; answers carry the name the client sent. Errors are Ollama's
``{"error": "..."}`` (see :data:`mlx_serve.errors.OLLAMA_PATHS`); once a stream has started, an
error is a last ``{"error": "..."}`` line, as Ollama sends it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from mlx_serve import __version__
from mlx_serve.config import ModelType
from mlx_serve.errors import ApiError
from mlx_serve.grammar import with_article
from mlx_serve.router.calls import Reply, call_model
from mlx_serve.router.keys import SUPERVISOR
from mlx_serve.router.management import delete_model_files
from mlx_serve.router.prepare import (
    Prepared,
    lifecycle_error,
    pop_keep_alive,
    prepare,
    resolve_or_404,
)
from mlx_serve.router.request_body import read_json_object
from mlx_serve.supervisor import (
    QueueFull,
    ShuttingDown,
    Supervisor,
    WorkerStartError,
    WorkerView,
)

#: The model types each Ollama endpoint serves.
_ENDPOINT_TYPES: dict[str, frozenset[ModelType]] = {
    "/api/chat": frozenset({ModelType.TEXT, ModelType.VISION}),
    "/api/generate": frozenset({ModelType.TEXT, ModelType.VISION}),
    "/api/embed": frozenset({ModelType.EMBEDDING}),
    "/api/embeddings": frozenset({ModelType.EMBEDDING}),
}

#: Where a model of each type is served instead, for "wrong endpoint" errors (other types:
#: the OpenAI routes, see /v1/models).
_TYPE_HINTS: dict[str, str] = {
    "text": "use /api/chat or /api/generate",
    "vision": "use /api/chat or /api/generate",
    "embedding": "use /api/embed",
    "tts": "it is served at /v1/audio/speech",
    "stt": "it is served at /v1/audio/transcriptions",
    "rerank": "it is served at /v1/rerank",
}

#: Ollama options with an OpenAI (or mlx_lm) request field of the same meaning, and the
#: type each must have. ``num_predict`` is handled on its own; the rest (``num_ctx``,
#: ``num_gpu``, ``num_thread``, ``mirostat``...) tune llama.cpp and are ignored.
_OPTION_FIELDS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "temperature": ("temperature", (int, float)),
    "top_p": ("top_p", (int, float)),
    "top_k": ("top_k", int),
    "min_p": ("min_p", (int, float)),
    "seed": ("seed", int),
    "stop": ("stop", (str, list)),
    "presence_penalty": ("presence_penalty", (int, float)),
    "frequency_penalty": ("frequency_penalty", (int, float)),
    "repeat_penalty": ("repetition_penalty", (int, float)),
    "repeat_last_n": ("repetition_context_size", int),
}

#: Request fields that change the prompt in ways mlx-serve cannot: refused when not empty.
_REFUSED_GENERATE_FIELDS = {
    "suffix": "'suffix' (fill-in-the-middle) is not supported by mlx-serve",
    "template": "'template' is not supported by mlx-serve: the model's own chat template is "
    "used (send raw: true with a prompt you formatted yourself)",
}

#: Leading bytes of the image formats the vision worker decodes, and their MIME types.
_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)

#: ``expires_at`` of a model that never unloads (``keep_alive: -1``).
_NEVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


# --------------------------------------------------------------------------------- names


def configured_name(resolve: Callable[[str], str | None], requested: str) -> str | None:
    """The configured model ``requested`` names: itself (or an alias), else the name without
    its ``:tag`` (``chat:latest`` -> ``chat``), else ``name:latest`` for a name without one."""
    name = resolve(requested)
    if name is not None:
        return name
    base, sep, tag = requested.rpartition(":")
    if sep:
        return resolve(base) if base and tag and "/" not in tag else None
    return resolve(requested + ":latest")


def _resolve(supervisor: Supervisor, requested: object, endpoint: str | None) -> tuple[str, str]:
    """(the name the client sent, the configured model): 400 without a name, 404 for an
    unknown one, 400 when the model's type is not served at ``endpoint``."""
    if not isinstance(requested, str) or not requested.strip():
        raise ApiError(400, "'model' is required: the name of a configured model", param="model")
    # Not configured under any form: resolve_or_404 raises the 404 listing the models.
    name = configured_name(supervisor.resolve, requested) or resolve_or_404(
        supervisor, requested, param="model"
    )
    model_type = supervisor.workers[name].model.type
    allowed = _ENDPOINT_TYPES.get(endpoint or "")
    if allowed is not None and model_type not in allowed:
        raise ApiError(
            400,
            f"model {requested!r} is {with_article(model_type.value)} model and does not support "
            f"{endpoint}; "
            + _TYPE_HINTS.get(model_type.value, "it is served on the OpenAI routes (/v1/...)"),
            param="model",
        )
    return requested, name


def _prepare(
    supervisor: Supervisor, body: dict[str, Any], endpoint: str, requested: str
) -> Prepared:
    """:func:`prepare`, answering (and reporting) under the name the client sent."""
    return dataclasses.replace(prepare(supervisor, body, endpoint), requested=requested)


# --------------------------------------------------------------------------- translation


def nanoseconds(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def timestamp(wall: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes ``created_at``."""
    when = datetime.now(UTC) if wall is None else datetime.fromtimestamp(wall, UTC)
    return when.isoformat().replace("+00:00", "Z")


def stream_flag(body: dict[str, Any]) -> bool:
    """Ollama streams unless told not to."""
    stream = body.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    return stream


def options_to_openai(options: object) -> dict[str, Any]:
    """Ollama ``options`` as OpenAI request fields; llama.cpp-only options are dropped."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ApiError(400, "'options' must be an object", param="options")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApiError(400, "'options.num_predict' must be an integer", param="options")
            if value > 0:  # -1 (no limit) and -2 (fill the context) leave the worker's default
                out["max_tokens"] = value
            continue
        mapped = _OPTION_FIELDS.get(key)
        if mapped is None:
            continue
        name, kind = mapped
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = "an integer" if kind is int else "a number"
            if key == "stop":
                expected = "a string or a list of strings"
            raise ApiError(400, f"'options.{key}' must be {expected}", param="options")
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiError(400, f"'options.{key}' must be a finite number", param="options")
        if key == "stop" and isinstance(value, list) and not all(isinstance(s, str) for s in value):
            raise ApiError(400, "'options.stop' must be a list of strings", param="options")
        out[name] = value
    return out


def format_to_openai(value: object) -> dict[str, Any] | None:
    """Ollama's ``format`` (``"json"`` or a JSON schema) as an OpenAI ``response_format``."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise ApiError(400, "'format' must be \"json\" or a JSON schema object", param="format")


def image_data_url(image: object, where: str) -> str:
    """An Ollama image (base64 bytes, no prefix) as the ``data:`` URL the worker takes."""
    if not isinstance(image, str) or not image:
        raise ApiError(400, f"{where} must be a base64-encoded image", param="images")
    if image.startswith("data:"):
        return image  # already a data URL: the router's image checks apply to it
    try:
        head = base64.b64decode(image[:64] + "=" * (-len(image[:64]) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{where} is not valid base64", param="images") from exc
    mime = next((m for magic, m in _IMAGE_TYPES if head.startswith(magic)), None)
    if mime is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise ApiError(
            400,
            f"{where} is not a PNG, JPEG, GIF, WebP, BMP or TIFF image",
            param="images",
        )
    return f"data:{mime};base64,{image}"


def _with_images(content: object, images: object, where: str, vision: bool) -> object:
    """``content`` plus ``images`` as OpenAI content parts (text first)."""
    if images is None or images == []:
        return content
    if not isinstance(images, list):
        raise ApiError(400, f"{where}.images must be a list of base64 images", param="images")
    if not vision:
        raise ApiError(
            400,
            "this model does not take images; send them to a vision model",
            param="images",
        )
    parts: list[Any] = []
    if isinstance(content, list):
        parts.extend(content)
    elif isinstance(content, str) and content:
        parts.append({"type": "text", "text": content})
    for i, image in enumerate(images):
        url = image_data_url(image, f"{where}.images[{i}]")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def messages_to_openai(messages: list[Any], *, vision: bool) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI ones.

    Assistant ``tool_calls`` get ids (``call_<n>``) and their ``arguments`` become JSON text;
    each ``tool`` message answers the oldest unanswered call of its ``tool_name`` (or, without
    one, the oldest unanswered call), whose id it gets as ``tool_call_id``.
    """
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, function name) of calls not yet answered
    count = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"{where} must be an object with a 'role'", param="messages")
        role = message["role"]
        content = message.get("content")
        if content is None:
            content = ""
        converted: dict[str, Any] = {
            "role": role,
            "content": _with_images(content, message.get("images"), where, vision),
        }
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise ApiError(400, f"{where}.tool_calls must be a list", param="messages")
            converted["tool_calls"] = []
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise ApiError(
                        400,
                        f"{where}.tool_calls: each call needs 'function': {{'name', 'arguments'}}",
                        param="messages",
                    )
                arguments = function.get("arguments")
                if arguments is None:
                    arguments = {}
                count += 1
                call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{count}"
                converted["tool_calls"].append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": function["name"],
                            "arguments": arguments
                            if isinstance(arguments, str)
                            else json.dumps(arguments),
                        },
                    }
                )
                pending.append((call_id, function["name"]))
        if role == "tool":
            name = message.get("tool_name") or message.get("name")
            match = next((p for p in pending if p[1] == name), None) if name else None
            match = match or (pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                converted["tool_call_id"] = match[0]
            if isinstance(name, str):
                converted["name"] = name
        out.append(converted)
    return out


def _common(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The fields every generation request shares: sampling, format, keep_alive, stream."""
    openai: dict[str, Any] = {
        "model": name,
        **options_to_openai(body.get("options")),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response_format = format_to_openai(body.get("format"))
    if response_format is not None:
        openai["response_format"] = response_format
    if "keep_alive" in body:
        openai["keep_alive"] = body["keep_alive"]  # parsed (and removed) by prepare()
    return openai


def chat_to_openai(body: dict[str, Any], name: str, *, vision: bool) -> dict[str, Any]:
    """An Ollama ``/api/chat`` body as a ``/v1/chat/completions`` one."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ApiError(400, "'messages' must be a list", param="messages")
    openai = _common(body, name)
    openai["messages"] = messages_to_openai(messages, vision=vision)
    if body.get("tools"):
        openai["tools"] = body["tools"]
    return openai


def generate_to_openai(
    body: dict[str, Any], name: str, *, vision: bool
) -> tuple[str, dict[str, Any]]:
    """An Ollama ``/api/generate`` body as (the OpenAI endpoint, its body)."""
    for key, why in _REFUSED_GENERATE_FIELDS.items():
        if body.get(key):
            raise ApiError(400, why, param=key)
    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string", param="prompt")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise ApiError(400, "'system' must be a string", param="system")
    raw = body.get("raw", False)
    if raw is not None and not isinstance(raw, bool):
        raise ApiError(400, "'raw' must be true or false", param="raw")
    openai = _common(body, name)
    if raw:
        if vision or body.get("images"):
            raise ApiError(
                400,
                "'raw' prompts go to text models only (vision models and images need the "
                "model's chat template): send this without raw",
                param="raw",
            )
        openai["prompt"] = prompt
        return "/v1/completions", openai
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    content = _with_images(prompt, body.get("images"), "request", vision)
    messages.append({"role": "user", "content": content})
    openai["messages"] = messages
    return "/v1/chat/completions", openai


# ------------------------------------------------------------------------------ answers


@dataclass
class Turn:
    """What the worker has streamed so far (chat deltas or completion text)."""

    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> tuple[str, str]:
        """Take one streamed chunk; return its (text, thinking) increments."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return "", ""
        choice = choices[0]
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        text = choice.get("text") if "text" in choice else delta.get("content")
        thinking = delta.get("reasoning") or delta.get("reasoning_content")
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                self._add_call(call)
        text = text if isinstance(text, str) else ""
        thinking = thinking if isinstance(thinking, str) else ""
        if text:
            self.text.append(text)
        if thinking:
            self.thinking.append(thinking)
        return text, thinking

    def _add_call(self, call: dict[str, Any]) -> None:
        """Merge a streamed tool-call delta (OpenAI: keyed by ``index``, arguments in pieces)."""
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        index = call.get("index")
        if not isinstance(index, int):
            new = isinstance(function.get("name"), str) or not self.calls
            index = len(self.calls) if new else max(self.calls)
        entry = self.calls.setdefault(index, {"name": "", "arguments": ""})
        if isinstance(function.get("name"), str):
            entry["name"] += function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            entry["arguments"] = arguments
        elif isinstance(arguments, str) and isinstance(entry["arguments"], str):
            entry["arguments"] += arguments

    def tool_calls(self) -> list[dict[str, Any]]:
        """The calls in Ollama's shape (``arguments`` an object); 502 when the model wrote
        arguments that are not a JSON object."""
        out: list[dict[str, Any]] = []
        for index in sorted(self.calls):
            entry = self.calls[index]
            arguments = entry["arguments"]
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except ValueError:
                    arguments = None
            if not isinstance(arguments, dict):
                raise ApiError(
                    502,
                    f"the model called {entry['name']!r} with arguments that are not a JSON "
                    f"object: {str(entry['arguments'])[:200]!r}",
                    code="bad_tool_call",
                )
            out.append(
                {"function": {"index": index, "name": entry["name"], "arguments": arguments}}
            )
        return out

    def done_reason(self) -> str:
        return "length" if self.finish_reason == "length" else "stop"


def _stats(turn: Turn, reply: Reply, started: float) -> dict[str, Any]:
    """Ollama's counts and durations (nanoseconds) for a finished call."""
    trace = reply.trace
    now = time.perf_counter()
    elapsed = now - trace.started
    first = trace.ttft_s if trace.ttft_s is not None else elapsed
    usage = turn.usage or {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if not isinstance(completion_tokens, int):
        completion_tokens = trace.chunks
    return {
        "total_duration": nanoseconds(now - started),
        "load_duration": nanoseconds(trace.load_s),
        "prompt_eval_count": prompt_tokens if isinstance(prompt_tokens, int) else 0,
        "prompt_eval_duration": nanoseconds(first),
        "eval_count": completion_tokens,
        "eval_duration": nanoseconds(elapsed - first),
    }


def _chat_message(
    text: str, thinking: str, calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


def _piece(kind: str, requested: str, text: str, thinking: str) -> dict[str, Any]:
    """One streamed line."""
    line: dict[str, Any] = {"model": requested, "created_at": timestamp()}
    if kind == "chat":
        line["message"] = _chat_message(text, thinking)
    else:
        line["response"] = text
        if thinking:
            line["thinking"] = thinking
    line["done"] = False
    return line


def _final(
    kind: str, requested: str, turn: Turn, stats: dict[str, Any], *, whole: bool
) -> dict[str, Any]:
    """The last line (``whole``: the whole answer, for ``stream: false``)."""
    text = "".join(turn.text) if whole else ""
    thinking = "".join(turn.thinking) if whole else ""
    line: dict[str, Any] = {"model": requested, "created_at": timestamp()}
    if kind == "chat":
        line["message"] = _chat_message(text, thinking, turn.tool_calls() if whole else None)
    else:
        line["response"] = text
        if thinking:
            line["thinking"] = thinking
    return {**line, "done": True, "done_reason": turn.done_reason(), **stats}


async def _ndjson(resp: web.StreamResponse, item: dict[str, Any]) -> None:
    await resp.write(json.dumps(item).encode() + b"\n")


async def _answer(
    request: web.Request, prepared: Prepared, *, kind: str, stream: bool, started: float
) -> web.StreamResponse:
    """Call the worker (always streamed) and answer as Ollama: NDJSON lines or one object."""
    requested = prepared.requested
    turn = Turn()
    async with call_model(request, prepared) as reply:
        if not stream:
            async for chunk in reply.events():
                turn.add(chunk)
            return web.json_response(
                _final(kind, requested, turn, _stats(turn, reply, started), whole=True)
            )
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            try:
                async for chunk in reply.events():
                    text, thinking = turn.add(chunk)
                    if text or thinking:
                        await _ndjson(resp, _piece(kind, requested, text, thinking))
                if kind == "chat" and turn.calls:
                    line = _piece(kind, requested, "", "")
                    line["message"]["tool_calls"] = turn.tool_calls()
                    await _ndjson(resp, line)
                stats = _stats(turn, reply, started)
                await _ndjson(resp, _final(kind, requested, turn, stats, whole=False))
            except ApiError as exc:  # headers are sent: the error is the last line
                reply.trace.status, reply.trace.error = exc.status, exc.message
                await _ndjson(resp, {"error": exc.message})
            await resp.write_eof()
        except ConnectionError:  # the client left (aiohttp's ClientConnectionResetError)
            reply.trace.status, reply.trace.error = 499, "client closed the request"
        return resp


async def _load_or_unload(supervisor: Supervisor, name: str, body: dict[str, Any]) -> str:
    """What an empty prompt does in Ollama: load the model (``keep_alive: 0``: unload it).
    Returns the ``done_reason``."""
    keep_alive = pop_keep_alive({"keep_alive": body.get("keep_alive")})
    if keep_alive == 0:
        await supervisor.unload(name)
        return "unload"
    try:
        await supervisor.load(name, keep_alive=keep_alive)
    except (QueueFull, WorkerStartError, ShuttingDown) as exc:
        raise lifecycle_error(exc) from exc
    return "load"


# ------------------------------------------------------------------------------ handlers


async def chat(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request)
    stream = stream_flag(body)
    requested, name = _resolve(supervisor, body.get("model"), "/api/chat")
    if not body.get("messages"):
        reason = await _load_or_unload(supervisor, name, body)
        return web.json_response(
            {
                "model": requested,
                "created_at": timestamp(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
            }
        )
    vision = supervisor.workers[name].model.type is ModelType.VISION
    openai = chat_to_openai(body, name, vision=vision)
    prepared = _prepare(supervisor, openai, "/v1/chat/completions", requested)
    return await _answer(request, prepared, kind="chat", stream=stream, started=started)


async def generate(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request)
    stream = stream_flag(body)
    requested, name = _resolve(supervisor, body.get("model"), "/api/generate")
    if not body.get("prompt") and not body.get("images") and not body.get("system"):
        reason = await _load_or_unload(supervisor, name, body)
        return web.json_response(
            {
                "model": requested,
                "created_at": timestamp(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        )
    vision = supervisor.workers[name].model.type is ModelType.VISION
    endpoint, openai = generate_to_openai(body, name, vision=vision)
    prepared = _prepare(supervisor, openai, endpoint, requested)
    return await _answer(request, prepared, kind="generate", stream=stream, started=started)


async def _embed_call(
    request: web.Request, requested: str, name: str, body: dict[str, Any], value: object
) -> tuple[list[Any], dict[str, Any], Reply]:
    supervisor = request.app[SUPERVISOR]
    openai: dict[str, Any] = {"model": name, "input": value, "encoding_format": "float"}
    if body.get("dimensions") is not None:
        openai["dimensions"] = body["dimensions"]
    if "keep_alive" in body:
        openai["keep_alive"] = body["keep_alive"]
    prepared = _prepare(supervisor, openai, "/v1/embeddings", requested)
    async with call_model(request, prepared) as reply:
        data = await reply.json()
    rows = data.get("data")
    if not isinstance(rows, list):
        raise ApiError(502, "the embedding worker's answer has no 'data'", code="bad_upstream")
    rows = sorted((r for r in rows if isinstance(r, dict)), key=lambda r: r.get("index", 0))
    usage = data.get("usage")
    return [r.get("embedding") for r in rows], usage if isinstance(usage, dict) else {}, reply


async def embed(request: web.Request) -> web.Response:
    started = time.perf_counter()
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request)
    requested, name = _resolve(supervisor, body.get("model"), "/api/embed")
    value = body.get("input")
    if value is None or value in ("", []):
        await _load_or_unload(supervisor, name, body)
        return web.json_response({"model": requested, "embeddings": []})
    vectors, usage, reply = await _embed_call(request, requested, name, body, value)
    tokens = usage.get("prompt_tokens")
    return web.json_response(
        {
            "model": requested,
            "embeddings": vectors,
            "total_duration": nanoseconds(time.perf_counter() - started),
            "load_duration": nanoseconds(reply.trace.load_s),
            "prompt_eval_count": tokens if isinstance(tokens, int) else 0,
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    """The older single-text endpoint: ``prompt`` -> ``{"embedding": [...]}``."""
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request)
    requested, name = _resolve(supervisor, body.get("model"), "/api/embeddings")
    prompt = body.get("prompt")
    if prompt is None or prompt == "":
        await _load_or_unload(supervisor, name, body)
        return web.json_response({"embedding": []})
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string", param="prompt")
    vectors, _, _ = await _embed_call(request, requested, name, body, prompt)
    return web.json_response({"embedding": vectors[0] if vectors else []})


# --------------------------------------------------------------------- model information


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_template(root: Path) -> str:
    """The model's chat template (``chat_template.jinja``/``.json`` or tokenizer_config's)."""
    try:
        return (root / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    template = _read_json(root / "chat_template.json").get("chat_template")
    if template is None:
        template = _read_json(root / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):  # named templates: the default one, else the first
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else ""


def parameter_size(count: object) -> str:
    """Ollama's ``parameter_size`` ("7.2B", "494.0M")."""
    if not isinstance(count, int) or count <= 0:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def quantization_level(info: dict[str, Any]) -> str:
    """``Q4``/``Q8`` for MLX-quantized weights, else the weights' dtype (``BF16``...)."""
    quant = info.get("quantization")
    if isinstance(quant, dict) and isinstance(quant.get("bits"), int):
        return f"Q{quant['bits']}"
    dtype = info.get("dtype")
    return dtype.upper() if isinstance(dtype, str) else ""


@dataclass
class Facts:
    """What the disk says about one model (nothing when its files are not there)."""

    info: dict[str, Any]
    config: dict[str, Any]
    modified: float | None
    template: str = ""

    @property
    def root(self) -> Path | None:
        path = self.info.get("path")
        return Path(path) if isinstance(path, str) and self.info.get("cached") else None


def read_facts(path: str, *, template: bool = False) -> Facts:
    """Describe the model at ``path`` from disk (blocking: run it in a thread)."""
    from mlx_serve import hub  # noqa: PLC0415 - huggingface_hub only when used

    try:
        info = hub.show(path)
    except Exception:  # a model whose files are missing or unreadable is still listed
        return Facts({}, {}, None)
    facts = Facts(info, {}, None)
    root = facts.root
    if root is not None:
        facts.config = _read_json(root / "config.json")
        try:
            facts.modified = (root / "config.json").stat().st_mtime
        except OSError:
            facts.modified = None
        if template:
            facts.template = chat_template(root)
    return facts


def details(facts: Facts) -> dict[str, Any]:
    family = facts.info.get("architecture") or ""
    return {
        "parent_model": "",
        "format": "mlx",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": parameter_size(facts.info.get("parameters")),
        "quantization_level": quantization_level(facts.info),
    }


def _digest(path: str, facts: Facts) -> str:
    revision = facts.info.get("revision") or ""
    key = f"{path}\0{revision}\0{facts.info.get('size_bytes')}\0{facts.modified}"
    return hashlib.sha256(key.encode()).hexdigest()


def _size(facts: Facts) -> int:
    size = facts.info.get("size_bytes")
    return size if isinstance(size, int) else 0


async def version(_: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def tags(request: web.Request) -> web.Response:
    """Every configured model, as ``ollama list`` shows them."""
    supervisor = request.app[SUPERVISOR]
    names = list(supervisor.workers)
    paths = [supervisor.workers[n].model.path for n in names]
    facts = await asyncio.to_thread(lambda: [read_facts(p) for p in paths])
    models = []
    for name, path, fact in zip(names, paths, facts, strict=True):
        models.append(
            {
                "name": name,
                "model": name,
                "modified_at": timestamp(fact.modified or supervisor.started_at),
                "size": _size(fact),
                "digest": _digest(path, fact),
                "details": details(fact),
            }
        )
    return web.json_response({"models": models})


def _expires_at(supervisor: Supervisor, view: WorkerView) -> str:
    if view.idle_expires_in_s is None:
        return timestamp(_NEVER.timestamp())
    expires = supervisor.clock.wall() + view.idle_expires_in_s
    # keep_alive may be any finite number of seconds (1e308): past what a date can hold.
    return timestamp(min(expires, _NEVER.timestamp()))


async def ps(request: web.Request) -> web.Response:
    """The loaded models, as ``ollama ps`` shows them (unified memory: size_vram == size)."""
    supervisor = request.app[SUPERVISOR]
    names = supervisor.loaded()
    paths = [supervisor.workers[n].model.path for n in names]
    facts = await asyncio.to_thread(lambda: [read_facts(p) for p in paths])
    models = []
    for name, path, fact in zip(names, paths, facts, strict=True):
        view = supervisor.view(name)
        footprint = view.footprint
        size = footprint.measured_bytes or footprint.planned_bytes or _size(fact)
        entry: dict[str, Any] = {
            "name": name,
            "model": name,
            "size": size,
            "size_vram": size,
            "digest": _digest(path, fact),
            "details": details(fact),
            "expires_at": _expires_at(supervisor, view),
        }
        context = view.model.context_length or fact.config.get("max_position_embeddings")
        if isinstance(context, int):
            entry["context_length"] = context
        if view.status == "loading":
            entry["status"] = "loading"
        models.append(entry)
    return web.json_response({"models": models})


def _parameters(defaults: dict[str, Any]) -> str:
    """A model's request defaults as Modelfile ``PARAMETER`` lines (Ollama's names)."""
    names = {v[0]: k for k, v in _OPTION_FIELDS.items()} | {"max_tokens": "num_predict"}
    lines = []
    for key, value in defaults.items():
        name = names.get(key, key)
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{name} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


def capabilities(model_type: ModelType, template: str) -> list[str]:
    if model_type is ModelType.EMBEDDING:
        return ["embedding"]
    if model_type not in (ModelType.TEXT, ModelType.VISION):
        return []
    caps = ["completion"]
    if model_type is ModelType.VISION:
        caps.append("vision")
    if "tools" in template:
        caps.append("tools")
    return caps


async def show(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request)
    requested, name = _resolve(supervisor, body.get("model") or body.get("name"), None)
    model = supervisor.workers[name].model
    facts = await asyncio.to_thread(read_facts, model.path, template=True)
    parameters = _parameters(model.defaults)
    family = facts.info.get("architecture") or ""
    info: dict[str, Any] = {"general.architecture": family, "general.basename": name}
    if isinstance(facts.info.get("parameters"), int):
        info["general.parameter_count"] = facts.info["parameters"]
    context = model.context_length or facts.config.get("max_position_embeddings")
    if family and isinstance(context, int):
        info[f"{family}.context_length"] = context
    hidden = facts.config.get("hidden_size")
    if family and isinstance(hidden, int):
        info[f"{family}.embedding_length"] = hidden
    modelfile = [
        f"# Modelfile of {requested!r}, generated by mlx-serve (models are configured in "
        "models.yaml)",
        f"FROM {model.path}",
    ]
    modelfile += [f"PARAMETER {line}" for line in parameters.splitlines()]
    return web.json_response(
        {
            "modelfile": "\n".join(modelfile) + "\n",
            "parameters": parameters,
            "template": facts.template,
            "details": details(facts),
            "model_info": info,
            "capabilities": capabilities(model.type, facts.template),
            "modified_at": timestamp(facts.modified or supervisor.started_at),
        }
    )


async def delete(request: web.Request) -> web.Response:
    """``DELETE /api/delete``: the model's files, as ``DELETE /api/models/{name}/files`` does
    (a local directory only with ``"local": true`` or ``?local=true``; 409 while loaded).
    The model stays in models.yaml."""
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request)
    _, name = _resolve(supervisor, body.get("model") or body.get("name"), None)
    local_ok = body.get("local") is True or request.query.get("local", "").lower() in (
        "1",
        "true",
        "yes",
    )
    result = await delete_model_files(supervisor, name, local_ok)
    return web.json_response({"status": "success", **result})


#: Ollama endpoints mlx-serve does not implement, and why.
_UNSUPPORTED = {
    "/api/copy": "models are named in models.yaml; add an alias there instead",
    "/api/create": "models are configured in models.yaml (a local directory or a Hugging Face "
    "repo id) and pulled with /api/pull; Modelfiles are not supported",
    "/api/push": "it does not upload models",
}


async def unsupported(request: web.Request) -> web.Response:
    why = _UNSUPPORTED.get(
        request.path, "it does not store Ollama blobs; use /api/pull with a Hugging Face repo id"
    )
    message = f"mlx-serve does not support {request.method} {request.path}: {why}"
    # Answered here rather than raised: /api/blobs is not one of errors.OLLAMA_PATHS.
    return web.json_response({"error": message, "code": "not_implemented"}, status=501)


def add_routes(app: web.Application) -> None:
    """Register Ollama's routes (``/api/pull`` is the management API's own)."""
    r = app.router
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_get("/api/ps", ps)
    r.add_post("/api/chat", chat)
    r.add_post("/api/generate", generate)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embeddings)
    r.add_post("/api/show", show)
    r.add_delete("/api/delete", delete)
    for path in _UNSUPPORTED:
        r.add_post(path, unsupported)
    r.add_route("*", "/api/blobs/{digest}", unsupported)
