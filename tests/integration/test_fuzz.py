"""Property-based fuzzing (hypothesis) of every JSON and multipart endpoint of the real router:
the OpenAI routes, and the dialects translated to them (Anthropic Messages and count_tokens,
OpenAI Responses, Ollama's API), rerank, and the tool/structured-output checks of chat.

One real server per test, with fast fake workers behind every model type, so a request that
is valid enough to reach a model gets a real answer (200), never a "could not start" 503:

- text and vision models: :mod:`mlx_serve.testing.fake_worker` (:class:`FakeWorkerDriver`);
  model ``k`` calls the tool it is offered (``--tool-call``), so the dialects translate tool
  calls back; model ``c`` (dialect tests only) has a tiny model's real tokenizer and chat
  template on disk, so Anthropic's count_tokens renders and counts what the fuzz sends;
- embedding, tts, stt and rerank models: this module run as a worker
  (:func:`_fake_model_server`, at the bottom). It checks requests with the real workers' own
  code (``embedding_server.parse_request`` and ``compute`` around a fake model,
  ``tts_server.parse_speech_request``, ``stt_server.read_form``/``parse_form``,
  ``rerank_server.parse_request`` and ``compute`` around a fake cross-encoder) and answers
  with canned output, so the fuzz also covers what the router forwards and a worker chokes on.

The dialects' bodies come two ways. About half are point mutations (:func:`point_mutations`) of
rich valid requests (:data:`SEEDS`: every structure of each dialect, tool calls and images
included, each checked to get a 200 as it is): one or two values at any depth replaced by a
wrong one, taken away or emptied. The others are built (:func:`mutated_bodies`): a valid
request with one field changed, often one holding a nested structure (messages, content
blocks, input items, tools) built of parts that are each wrong now and then
(:func:`mostly`). Between them: wrong types everywhere, missing fields, empty lists, unknown
block/item types, unhashable values where a name is expected, bad base64 images, tool calls
with bad ids or arguments, huge and negative numbers, junk and huge ``keep_alive``,
``stream`` true and false. After each 200 to a body with a ``keep_alive``, the routes that
show when models unload (``/api/ps``, ``/api/models``) must still answer.

Invariants, for every request: an answer arrives (no dropped connection, no hang); no 5xx
(except ``/api/pull``'s 503 ``hub_offline``: the tests run with ``HF_HUB_OFFLINE=1``); every
error is JSON in its route's dialect: OpenAI's ``{"error": {"message": str, "type": str,
"code": str | None}}``, Anthropic's ``{"type": "error", "error": {"type", "message"}}`` under
``/v1/messages``, Ollama's ``{"error": str, "code": ...}`` on Ollama's routes; a body that
cannot be a request (not JSON, not UTF-8, a lone surrogate) is a 4xx, never forwarded; a 200
is a whole answer of its route's kind: a stream ends with ``[DONE]``, Anthropic's with
``message_stop``, a Response's with ``response.completed``/``incomplete``/``failed`` (its
events numbered in order), Ollama's NDJSON with a ``"done": true`` line and no error line.
After each run: ``GET /health`` and every route showing the server's state answer, a valid
chat completion gets 200, and the router logged no error (the error middleware logs every
unhandled exception).

Requests are written to the socket by hand (:func:`raw_request`), so header values can hold
bytes that are not UTF-8, and bodies can be sent chunked, as any client may.

Hypothesis runs in a thread and hands each request to the server's event loop (see
:func:`fuzz`). It is derandomized and keeps no example database: runs are reproducible.
The bugs it found keep a minimal reproducer each (:func:`test_found_bug`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_serve.config import ModelType
from mlx_serve.errors import Dialect, dialect_of
from mlx_serve.testing import FakeWorkerDriver
from mlx_serve.workers.base import LaunchContext, guarded_argv
from mlx_serve.workers.model_server_driver import ModelServerDriver
from mlx_serve.workers.process import LaunchSpec
from tests.conftest import error_code

if TYPE_CHECKING:
    from tests.integration.conftest import Running, StartServer

pytestmark = [
    pytest.mark.slow,
    # Thousands of generated requests through the same checks: tracing them for the coverage
    # report cost a third more time (25 s) and added nothing the other tests do not cover.
    pytest.mark.no_cover,
]

ROOT = Path(__file__).resolve().parents[2]
WORKER_MODULE = "tests.integration.test_fuzz"

# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------


class FakeModelServerDriver(ModelServerDriver):
    """Embedding/tts/stt models served by this module's fake worker (readiness: /health)."""

    def __init__(self) -> None:
        super().__init__(WORKER_MODULE)

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec:
        return LaunchSpec(argv=guarded_argv(ctx, WORKER_MODULE), log_path=ctx.log_path, cwd=ROOT)


DRIVERS = {
    ModelType.TEXT: FakeWorkerDriver(),
    ModelType.VISION: FakeWorkerDriver(),
    ModelType.EMBEDDING: FakeModelServerDriver(),
    ModelType.TTS: FakeModelServerDriver(),
    ModelType.STT: FakeModelServerDriver(),
    ModelType.RERANK: FakeModelServerDriver(),
}

#: What model ``k`` calls when it is offered tools.
TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
#: ``context_length`` bounds ``max_tokens`` (the fake text worker makes that many tokens).
MODELS: dict[str, dict[str, Any]] = {
    "t": {
        "path": "fake/t",
        "aliases": ["tee", "org/t:latest"],
        "context_length": 64,
        "defaults": {"temperature": 0.5},
    },
    "v": {"type": "vision", "path": "fake/v", "context_length": 64},
    "e": {"type": "embedding", "path": "fake/e"},
    "s": {"type": "tts", "path": "fake/s"},
    "w": {"type": "stt", "path": "fake/w"},
    "r": {"type": "rerank", "path": "fake/r", "aliases": ["rerank-v3.5"]},
    # Calls a tool whenever it is offered one: the dialects translate the call back.
    "k": {"path": "fake/k", "context_length": 64, "args": {"tool_call": json.dumps(TOOL_CALL)}},
}
#: Every model may stay resident: the fuzz is about requests, not swaps. Small body limits
#: make the 413 paths cheap to reach.
SERVER: dict[str, Any] = {
    "max_loaded_models": len(MODELS),
    "idle_timeout": "1h",
    "max_json_body": 64 * 1024,
    "max_upload_body": 64 * 1024,
    "watch_config": False,
}
NAMES = ["t", "tee", "org/t:latest", "v", "e", "s", "w", "r"]
TEXT_NAMES = ["t", "tee", "org/t:latest"]

FUZZ = settings(
    # Derandomized: the same examples every run. 50 per property keeps the suite inside its
    # 10 minutes on 2 cores (100 cost ~35 s more).
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

REQUEST_TIMEOUT = 30.0


async def fuzz_server(start_server: StartServer, tiny: Path | None = None) -> Running:
    """The server; with ``tiny`` (a tiny text model's directory), also model ``c``: a fake
    text worker whose directory holds a real tokenizer and chat template, so Anthropic's
    count_tokens renders and counts (the other text models have no files: a 400)."""
    models = MODELS if tiny is None else {**MODELS, "c": {"path": str(tiny), "context_length": 64}}
    return await start_server(models, drivers=DRIVERS, **SERVER)


# ---------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: exact bytes out, the whole answer (or the proof there was none) in
# ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Dropped(Exception):
    """The server closed the connection without a complete answer."""


@dataclass
class Request:
    method: str
    path: str
    body: bytes = b""
    content_type: bytes | None = b"application/json"
    #: True when no server may accept this body (it is not JSON, not UTF-8...): 4xx expected.
    refuse: bool = False
    #: Sent with ``Transfer-Encoding: chunked`` in chunks of this size, if set.
    chunk: int | None = None

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        body = self.body if len(self.body) <= 600 else self.body[:600] + b"...(truncated)"
        return (
            f"Request({self.method} {self.path!r}, content_type={self.content_type!r}, "
            f"chunk={self.chunk}, body[{len(self.body)}]={body!r})"
        )

    def encoded_body(self) -> bytes:
        if self.chunk is None:
            return self.body
        size = self.chunk if len(self.body) <= 4096 else max(self.chunk, 4096)  # not 64k chunks
        pieces = [self.body[i : i + size] for i in range(0, len(self.body), size)]
        return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def raw_request(run: Running, req: Request) -> Reply:
    host, port = run.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    head = [
        f"{req.method} {req.path} HTTP/1.1".encode("latin-1", "replace"),
        f"Host: {host}:{port}".encode(),
        b"Connection: close",
        b"Content-Length: " + str(len(req.body)).encode()
        if req.chunk is None
        else b"Transfer-Encoding: chunked",
    ]
    if req.content_type is not None:
        head.append(b"Content-Type: " + req.content_type)
    async with asyncio.timeout(REQUEST_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"\r\n".join(head) + b"\r\n\r\n" + req.encoded_body())
            # An early answer (a 413) may close before the body is sent: read it anyway.
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                data = await reader.read()
            except ConnectionError as exc:
                raise Dropped(f"connection reset: {exc!r}") from exc
        finally:
            writer.close()
    return _parse_reply(data)


def _parse_reply(data: bytes) -> Reply:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise Dropped(f"no complete response head in {data[:200]!r}")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise Dropped(f"not an HTTP response: {data[:200]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise Dropped(f"body cut short: {len(body)} of {length} bytes")
    return Reply(int(parts[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            raise Dropped("chunked body cut short (no last chunk)")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        if len(rest) < size + 2:
            raise Dropped("chunked body cut short")
        out += rest[:size]
        data = rest[size + 2 :]


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------


def check_error_shape(reply: Reply, req: Request) -> None:
    assert reply.headers.get("content-type", "").startswith("application/json"), (
        f"{reply.status} without a JSON body for {req!r}: {reply.body[:300]!r}"
    )
    data = json.loads(reply.body)
    error = data.get("error") if isinstance(data, dict) else None
    dialect = dialect_of(req.path.partition("?")[0])
    if dialect is Dialect.OLLAMA:  # Ollama's clients read {"error": "message"}
        assert isinstance(error, str) and error, f"not Ollama-shaped: {data!r} for {req!r}"
        assert "code" in data, f"no code: {data!r} for {req!r}"
        return
    if dialect is Dialect.ANTHROPIC:
        assert data.get("type") == "error", f"not Anthropic-shaped: {data!r} for {req!r}"
        assert isinstance(error, dict) and isinstance(error.get("message"), str), data
        assert isinstance(error.get("type"), str), f"no type: {data!r} for {req!r}"
        return
    assert isinstance(error, dict), f"not OpenAI-shaped: {data!r} for {req!r}"
    assert isinstance(error.get("message"), str), f"no message: {data!r} for {req!r}"
    assert isinstance(error.get("type"), str), f"no type: {data!r} for {req!r}"
    assert "code" in error, f"no code: {data!r} for {req!r}"
    assert error["code"] is None or isinstance(error["code"], str), f"{data!r} for {req!r}"


def check_success(reply: Reply, req: Request) -> None:
    """A 200 must be a whole answer: JSON (of the route's kind), a stream with its ending
    (``[DONE]``; Anthropic's ``message_stop``; a Response's completed, incomplete or failed
    event), NDJSON (Ollama's generation: a last line with ``"done": true``), or audio."""
    content_type = reply.headers.get("content-type", "")
    path = req.path.partition("?")[0]
    if content_type.startswith("application/json"):
        check_json_answer(req.method, path, json.loads(reply.body), req)
    elif content_type.startswith("text/event-stream") and path.startswith("/v1/messages"):
        check_anthropic_stream(sse_events(reply.body, req), req)
    elif content_type.startswith("text/event-stream") and path == "/v1/responses":
        check_responses_stream(sse_events(reply.body, req), req)
    elif content_type.startswith("text/event-stream"):
        events = [line for line in reply.body.split(b"\n") if line.startswith(b"data: ")]
        assert events and events[-1] == b"data: [DONE]", f"stream not ended: {reply.body[-300:]!r}"
        for event in events[:-1]:
            assert b'"error"' not in event, f"an error event in a 200 stream for {req!r}: {event!r}"
            json.loads(event[6:])
    elif content_type.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in reply.body.splitlines() if line.strip()]
        assert lines, f"empty NDJSON answer for {req!r}"
        assert lines[-1].get("status") != "error", f"{lines[-1]!r} for {req!r}"
        if path in ("/api/chat", "/api/generate"):
            assert all("error" not in line for line in lines), f"an error line for {req!r}"
            assert lines[-1].get("done") is True, f"no last done line for {req!r}: {lines[-1]!r}"
            assert all(line.get("done") is False for line in lines[:-1]), f"{lines!r} for {req!r}"
    else:
        assert content_type.startswith("audio/"), f"200 with {content_type!r} for {req!r}"
        assert reply.body, f"empty audio for {req!r}"


def check_json_answer(method: str, path: str, data: Any, req: Request) -> None:
    """A JSON 200 is the answer its route promises (the dialects build theirs themselves)."""
    assert isinstance(data, dict), f"{data!r} for {req!r}"
    if path == "/v1/messages":
        assert data.get("type") == "message", f"{data!r} for {req!r}"
        assert isinstance(data.get("content"), list) and isinstance(data.get("stop_reason"), str)
    elif path == "/v1/messages/count_tokens":
        assert isinstance(data.get("input_tokens"), int), f"{data!r} for {req!r}"
        assert data["input_tokens"] > 0, f"{data!r} for {req!r}"
    elif path == "/v1/responses":
        assert data.get("object") == "response", f"{data!r} for {req!r}"
        assert data.get("status") in ("completed", "incomplete"), f"{data!r} for {req!r}"
        RECENT_RESPONSES.append(data["id"])
    elif path.startswith("/v1/responses/"):
        assert data.get("object") == ("response" if method == "GET" else "response.deleted")
    elif path in ("/api/chat", "/api/generate"):
        assert data.get("done") is True, f"{data!r} for {req!r}"
    elif path == "/api/embed":
        assert isinstance(data.get("embeddings"), list), f"{data!r} for {req!r}"
    elif path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        assert isinstance(data.get("results"), list), f"{data!r} for {req!r}"


def sse_events(body: bytes, req: Request) -> list[tuple[str, dict[str, Any]]]:
    """A dialect's named server-sent events: (``event:`` name, ``data:`` object), each
    event's name its data's ``type``."""
    events: list[tuple[str, dict[str, Any]]] = []
    for block in body.split(b"\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        name, data = fields.get(b"event", b"").decode(), json.loads(fields[b"data"])
        assert isinstance(data, dict) and data.get("type") == name, f"{block!r} for {req!r}"
        events.append((name, data))
    return events


def check_anthropic_stream(events: list[tuple[str, dict[str, Any]]], req: Request) -> None:
    names = [name for name, _ in events]
    assert names[:1] == ["message_start"], f"{names!r} for {req!r}"
    assert names[-2:] == ["message_delta", "message_stop"], f"stream not ended: {names!r}"
    assert "error" not in names, f"an error event in a 200 stream for {req!r}: {events!r}"


#: The events that end a Response's stream (a failed one is followed by an ``error`` event).
RESPONSE_ENDINGS = ("response.completed", "response.incomplete", "response.failed")


def check_responses_stream(events: list[tuple[str, dict[str, Any]]], req: Request) -> None:
    names = [name for name, _ in events]
    numbers = [data.get("sequence_number") for _, data in events]
    assert numbers == list(range(len(events))), f"{numbers!r} for {req!r}"
    assert names[:2] == ["response.created", "response.in_progress"], f"{names!r} for {req!r}"
    ending = names[-2] if names[-1] == "error" else names[-1]
    assert ending in RESPONSE_ENDINGS and names.count(ending) == 1, f"not ended: {names!r}"
    assert names.count("error") <= (ending == "response.failed"), f"{names!r} for {req!r}"
    last = next(data for name, data in events if name == ending)["response"]
    if last.get("store") and ending != "response.failed":
        RECENT_RESPONSES.append(last["id"])


def allowed_5xx(reply: Reply, req: Request) -> bool:
    """The one 5xx that is not the server's fault: pulling while the hub is unreachable."""
    if req.path.startswith("/api/pull") and reply.status == 503:
        return error_code(json.loads(reply.body)) == "hub_offline"
    return False


#: The ids of the Responses the server answered (and stored), latest last: a request naming
#: :data:`LAST_RESPONSE` (as ``previous_response_id``, or in a URL) gets the latest one.
RECENT_RESPONSES: list[str] = []
LAST_RESPONSE = "resp_LAST_OF_THE_FUZZ"


def with_last_response(req: Request) -> Request:
    if LAST_RESPONSE not in req.path and LAST_RESPONSE.encode() not in req.body:
        return req
    last = RECENT_RESPONSES[-1] if RECENT_RESPONSES else "resp_none_yet"
    return dataclasses.replace(
        req,
        path=req.path.replace(LAST_RESPONSE, last),
        body=req.body.replace(LAST_RESPONSE.encode(), last.encode()),
    )


async def send_checked(run: Running, req: Request) -> Reply:
    req = with_last_response(req)
    try:
        reply = await raw_request(run, req)
    except TimeoutError:
        pytest.fail(f"no answer within {REQUEST_TIMEOUT}s for {req!r}")
    except (Dropped, OSError) as exc:
        pytest.fail(f"connection dropped ({exc}) for {req!r}")
    if reply.status >= 400:
        check_error_shape(reply, req)
    assert reply.status < 500 or allowed_5xx(reply, req), (
        f"{reply.status} for {req!r}: {reply.body[:1000]!r}"
    )
    if req.refuse:
        assert 400 <= reply.status < 500, f"accepted ({reply.status}) {req!r}: {reply.body[:300]!r}"
    if reply.status == 200:
        check_success(reply, req)
        if b'"keep_alive"' in req.body:  # when each loaded model unloads is shown here
            await check_state_shown(run, ["/api/ps", "/api/models"], req)
    return reply


#: What shows the state requests leave behind (loaded models, keep_alive, counters).
STATE_ROUTES = ["/api/ps", "/api/tags", "/v1/models", "/api/models", "/api/stats", "/metrics"]


async def check_state_shown(run: Running, routes: Sequence[str], after: Request) -> None:
    """The routes that show the server's state answer 200 ``after`` a request changed it."""
    for route in routes:
        reply = await raw_request(run, Request("GET", route, content_type=None))
        assert reply.status == 200, f"GET {route}: {reply.status} after {after!r}: {reply.body!r}"


async def check_still_serving(run: Running, caplog: pytest.LogCaptureFixture) -> None:
    async with run.http.get("/health") as r:
        assert r.status == 200, await r.text()
    await check_state_shown(run, STATE_ROUTES, Request("GET", "(the whole run)"))
    status, data = await run.chat("t", max_tokens=3)
    assert status == 200, data
    assert data["choices"][0]["message"]["content"]
    errors = []
    for record in caplog.records:
        if record.levelno < logging.ERROR or not record.name.startswith("mlx_serve"):
            continue
        trace = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
        errors.append(f"{record.name}: {record.getMessage()}\n{trace}")
    assert not errors, "the server logged errors:\n" + "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# Strategies: JSON values and request bodies
# ---------------------------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)
#: Ints a float cannot hold, up to what ``json.dumps`` still writes (4300 digits).
HUGE_INTS = st.integers(min_value=2**63 - 1, max_value=10**4000) | st.integers(
    min_value=-(10**4000), max_value=-(2**63)
)
COUNTS = st.integers(1, 64) | st.integers() | HUGE_INTS | st.floats() | JSON_VALUES
NUMBERS = st.floats() | st.integers(-3, 3) | HUGE_INTS | JSON_VALUES
#: Durations that keep models loaded (0 and short ones would make every example restart a
#: worker), and everything a duration is not.
KEEP_ALIVES = (
    st.sampled_from(["5m", "1h", "1h30m", -1, "-1", "-1s", 3600, 1e308, "900"])
    | st.sampled_from(["", " ", "forever", "1x", "1e5", "5 m", "NaN", "inf", "--1", "1h-", "m"])
    | st.sampled_from(["9" * 400, "9" * 400 + "d", 10**400, -(10**400), 1e309])
    | st.booleans()
    | st.lists(SCALARS, max_size=2)
    | st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
    | st.text(max_size=8).filter(lambda s: not s.strip().lstrip("+-").replace(".", "").isdigit())
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
IMAGE_URLS = (
    st.sampled_from(
        [
            "data:image/png;base64," + base64.b64encode(PNG).decode(),
            "data:image/png;base64,",
            "data:image/png,abc",
            "data:image/png;base64,!!!!",
            "data:image/png;base64,\u00e9\u00e9\u00e9\u00e9",
            "data:text/plain;base64,aGVsbG8=",
            "data:image/",
            "http://example.com/x.png",
            "HTTPS://example.com/x.png",
            "file:///etc/passwd",
            "/etc/passwd",
            "~/.ssh/id_rsa",
        ]
    )
    | st.builds(
        lambda b: "data:image/png;base64," + base64.b64encode(b).decode(), st.binary(max_size=40)
    )
    | st.text(max_size=20)
)
PART_TYPES = ["text", "image_url", "image", "input_image", "video_url", "input_audio", "audio"]
CONTENT_PARTS = (
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=12)})
    | st.builds(
        lambda kind, key, url, wrap: {"type": kind, key: {"url": url} if wrap else url},
        st.sampled_from(PART_TYPES) | st.text(max_size=5),
        st.sampled_from(["image_url", "image", "input_image", "url"]),
        IMAGE_URLS | JSON_VALUES,
        st.booleans(),
    )
    | JSON_VALUES
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"]) | JSON_VALUES},
    optional={
        "content": st.text(max_size=20) | st.lists(CONTENT_PARTS, max_size=3) | JSON_VALUES,
        "name": JSON_VALUES,
    },
)
MESSAGES = st.lists(MESSAGE, min_size=1, max_size=3) | JSON_VALUES
INPUTS = (
    st.text(max_size=20)
    | st.lists(st.text(max_size=8), max_size=3)
    | st.lists(st.integers(), max_size=4)
    | st.lists(st.lists(st.integers(), max_size=3), max_size=3)
    | st.lists(st.text(max_size=4) | st.integers() | st.lists(SCALARS, max_size=2), max_size=3)
    | JSON_VALUES
)
MODEL_FIELD = (
    st.sampled_from(NAMES)
    | st.sampled_from(["", " ", "T", " t", "t ", "fake/t", "../t", "t\x00", "tee\n", "*", "t/"])
    | st.text(max_size=12)
    | JSON_VALUES
)

#: The fields the endpoints know, each with right and wrong values.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": MODEL_FIELD,
    "messages": MESSAGES,
    "prompt": st.text(max_size=20) | st.lists(st.text(max_size=5) | st.integers()) | JSON_VALUES,
    "max_tokens": COUNTS,
    "max_completion_tokens": COUNTS,
    "n": COUNTS,
    "temperature": NUMBERS,
    "top_p": NUMBERS,
    "stream": st.booleans() | JSON_VALUES,
    "keep_alive": KEEP_ALIVES,
    "input": INPUTS,
    "voice": st.text(max_size=8) | JSON_VALUES,
    "speed": NUMBERS,
    "response_format": st.sampled_from(["wav", "flac", "pcm", "mp3", "json", "PCM", ""])
    | JSON_VALUES,
    "encoding_format": st.sampled_from(["float", "base64"]) | JSON_VALUES,
    "dimensions": COUNTS,
    "stream_format": st.sampled_from(["audio", "sse"]) | JSON_VALUES,
    "adapters": JSON_VALUES,
    "draft_model": JSON_VALUES,
    "stop": JSON_VALUES,
}

JSON_ENDPOINTS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/audio/speech",
]


def valid_core(endpoint: str) -> st.SearchStrategy[dict[str, Any]]:
    """A body the endpoint accepts, to be mutated: examples near the valid ones matter most."""
    if endpoint == "/v1/chat/completions":
        return st.fixed_dictionaries(
            {
                "model": st.sampled_from([*TEXT_NAMES, "v"]),
                "messages": st.just([{"role": "user", "content": "hi"}]),
            },
            optional={"max_tokens": st.integers(1, 8)},
        )
    if endpoint == "/v1/completions":
        return st.fixed_dictionaries(
            {"model": st.sampled_from(TEXT_NAMES), "prompt": st.text(max_size=10)},
            optional={"max_tokens": st.integers(1, 8)},
        )
    if endpoint == "/v1/embeddings":
        return st.fixed_dictionaries({"model": st.just("e"), "input": st.just("hello")})
    return st.fixed_dictionaries({"model": st.just("s"), "input": st.just("hello")})


@st.composite
def json_bodies(draw: st.DrawFn, endpoint: str) -> Any:
    """Any JSON value; mostly an object, often a valid body with some fields changed."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "fields", "any"]))
    if kind == "any":
        return draw(JSON_VALUES)
    base = draw(valid_core(endpoint)) if kind == "mutated" else {}
    changed = draw(st.fixed_dictionaries({}, optional=FIELDS))
    extra = draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2))
    return {**base, **extra, **changed}


@st.composite
def json_requests(draw: st.DrawFn) -> Request:
    endpoint = draw(st.sampled_from(JSON_ENDPOINTS))
    body = draw(json_bodies(endpoint))
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    return Request("POST", endpoint, raw)


# ---------------------------------------------------------------------------------------------
# Strategies: bodies that are not (valid) JSON text
# ---------------------------------------------------------------------------------------------

LONE_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
SURROGATE_TEXT = st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=4), LONE_SURROGATES, st.text(max_size=4)
)
INVALID_UTF8 = st.sampled_from(
    [
        b"\xff",
        b"\xfe",
        b"\x80",
        b"\xc0\xaf",
        b"\xe2\x82",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
        b"\xf4\x90\x80\x80",
        b"\xf8\x88\x80\x80\x80",
        b"\xc3",
    ]
)
MARK = "\u2603MARK\u2603"


def _core_body(endpoint: str) -> dict[str, Any]:
    if endpoint == "/v1/chat/completions":
        return {"model": "t", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    if endpoint == "/v1/completions":
        return {"model": "t", "prompt": "hi", "max_tokens": 2}
    if endpoint == "/v1/embeddings":
        return {"model": "e", "input": "hi"}
    if endpoint == "/v1/audio/speech":
        return {"model": "s", "input": "hi"}
    if endpoint == "/api/pull":
        return {"model": "org/repo"}
    if endpoint.startswith("/v1/messages"):
        return {"model": "t", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    if endpoint == "/v1/responses":
        return {"model": "t", "input": "hi", "max_output_tokens": 2}
    if endpoint == "/api/chat":
        return {"model": "t", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    if endpoint == "/api/generate":
        return {"model": "t", "prompt": "hi", "options": {"num_predict": 2}}
    if endpoint == "/api/embed":
        return {"model": "e", "input": ["hi"]}
    if endpoint == "/v1/rerank":
        return {"model": "r", "query": "hi", "documents": ["a", "b"]}
    return {"keep_alive": "1h"}


#: Where a bad string or value goes in a body.
SPOTS = ["content", "model", "input", "prompt", "role", "key", "value", "keep_alive"]


def _place(body: dict[str, Any], spot: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    if spot == "content" and "messages" in body:
        body["messages"][0]["content"] = value
    elif spot == "role" and "messages" in body:
        body["messages"][0]["role"] = value
    elif spot == "key" and isinstance(value, str):
        body[value] = 1
    elif spot in ("model", "input", "prompt", "keep_alive"):
        body[spot] = value
    else:
        body["extra"] = value
    return body


@st.composite
def raw_bodies(draw: st.DrawFn, endpoint: str) -> tuple[bytes, bool]:
    """(body, must be refused) for ``endpoint``."""
    core = _core_body(endpoint)
    kind = draw(
        st.sampled_from(
            [
                "binary",
                "literal",
                "truncated",
                "surrogate",
                "surrogate_bytes",
                "bad_utf8",
                "deep",
                "number",
                "encoding",
            ]
        )
    )
    if kind == "binary":
        return draw(st.binary(max_size=200)), False  # b"{}" is JSON: refusal not required
    if kind == "literal":
        literal = draw(
            st.sampled_from(
                [
                    b"",
                    b" ",
                    b"\r\n",
                    b"null",
                    b"[]",
                    b'"x"',
                    b"1",
                    b"true",
                    b"{",
                    b"}",
                    b"{}",
                    b"\xef\xbb\xbf{}",
                    b'{"model": "t",}',
                    b"{'model': 't'}",
                    b"NaN",
                    b"[1,]",
                    b'{"model": "t"} {"model": "t"}',
                    b'{"model": "t"}garbage',
                    b"\x00",
                    b'{"model": "t", "model": 5}',
                    b'{"a":1e400}',
                    b'{"\\u0000": 1}',
                ]
            )
        )
        return literal, False
    text = json.dumps(core).encode()
    if kind == "truncated":
        cut = draw(st.integers(1, len(text) - 1))  # nothing at all is {} to /api/models
        return text[:cut], True
    spot = draw(st.sampled_from(SPOTS))
    if kind in ("surrogate", "surrogate_bytes"):
        body = _place(core, spot, draw(SURROGATE_TEXT))
        if kind == "surrogate":
            return json.dumps(body, ensure_ascii=True).encode(), True
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"), True
    if kind == "bad_utf8":
        body = _place(core, spot, MARK)
        raw = json.dumps(body, ensure_ascii=False).encode()
        return raw.replace(MARK.encode(), draw(INVALID_UTF8)), True
    if kind == "deep":
        depth = draw(st.integers(1, 1200) | st.integers(900, 1000) | st.sampled_from([10**5]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        nested = opener * depth + b"1" + closer * depth
        if draw(st.booleans()):
            return nested, opener == b"["  # not an object
        spot = draw(st.sampled_from(["content", "extra", "input", "keep_alive", "model"]))
        body = _place(core, spot, MARK)
        return json.dumps(body).encode().replace(json.dumps(MARK).encode(), nested), False
    if kind == "number":
        token = draw(
            st.sampled_from(
                [
                    b"1e999",
                    b"-1e999",
                    b"1e-999",
                    b"NaN",
                    b"Infinity",
                    b"-Infinity",
                    b"-0",
                    b"0e0",
                    b"1.0" + b"0" * 5000,
                    b"0." + b"0" * 5000 + b"1",
                    b"9" * 4300,
                    b"9" * 4301,
                    b"-" + b"9" * 5000,
                ]
            )
            | st.integers(1, 6000).map(lambda n: b"9" * n)
        )
        spot = draw(
            st.sampled_from(
                [
                    "max_tokens",
                    "temperature",
                    "keep_alive",
                    "top_p",
                    "n",
                    "dimensions",
                    "speed",
                    "input",
                    "prompt",
                    "force",
                    "top_n",
                    "top_k",
                    "max_output_tokens",
                    "options",
                ]
            )
        )
        body = {**core, spot: MARK}
        return json.dumps(body).encode().replace(json.dumps(MARK).encode(), token), False
    encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]))
    return json.dumps(core, ensure_ascii=False).encode(encoding), False


RAW_ENDPOINTS = [
    *JSON_ENDPOINTS,
    "/api/models/t/load",
    "/api/models/v/unload",
    "/api/pull",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/v1/rerank",
]
CONTENT_TYPES = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/json; charset=\xff",
        b"APPLICATION/JSON",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"",
        None,
    ]
)


@st.composite
def raw_requests(draw: st.DrawFn) -> Request:
    endpoint = draw(st.sampled_from(RAW_ENDPOINTS))
    body, refuse = draw(raw_bodies(endpoint))
    content_type = b"application/json" if draw(st.booleans()) else draw(CONTENT_TYPES)
    return Request("POST", endpoint, body, content_type, refuse=refuse)


# ---------------------------------------------------------------------------------------------
# Strategies: multipart forms
# ---------------------------------------------------------------------------------------------

#: Bytes allowed in a header value (no CR, LF or other controls: those are HTTP-level errors
#: that aiohttp answers before the app sees the request).
HEADER_BYTES = st.binary(max_size=24).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c != 0x7F)
)
TOKEN_BOUNDARIES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?",
    min_size=1,
    max_size=70,
).map(str.encode)
BOUNDARIES = (
    TOKEN_BOUNDARIES
    | HEADER_BYTES
    | st.sampled_from([b"", b"-", b"--", b'"', b"a b", b"\xff\xfe", b"\xc3\xa9", b"x" * 200])
)
FORM_NAMES = st.sampled_from(
    [
        "model",
        "file",
        "keep_alive",
        "language",
        "response_format",
        "temperature",
        "prompt",
        "timestamp_granularities[]",
        "timestamp_granularities",
        "",
    ]
) | st.text(max_size=8)
FIELD_VALUES = (
    st.sampled_from(NAMES).map(str.encode)
    | st.sampled_from([b"json", b"text", b"srt", b"vtt", b"verbose_json", b"xml", b"word"])
    | st.sampled_from([b"0", b"0.5", b"1", b"-1", b"nan", b"1e999", b"5m", b"-1", b"forever"])
    | st.binary(max_size=40)
)


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: bytes | None
    value: bytes
    raw_disposition: bytes | None = None

    def head(self) -> list[bytes]:
        lines = []
        if self.raw_disposition is not None:
            lines.append(b"Content-Disposition: " + self.raw_disposition)
        elif self.name is not None:
            disp = b'form-data; name="' + self.name.encode("utf-8", "surrogatepass") + b'"'
            if self.filename is not None:
                disp += b'; filename="' + self.filename.encode("utf-8", "surrogatepass") + b'"'
            lines.append(b"Content-Disposition: " + disp)
        if self.content_type is not None:
            lines.append(b"Content-Type: " + self.content_type)
        return lines


PARTS = st.builds(
    Part,
    name=FORM_NAMES | st.none(),
    filename=st.none() | st.sampled_from(["a.wav", "", "../../etc/passwd", 'a"b']) | st.text(),
    content_type=st.none()
    | st.sampled_from([b"audio/wav", b"text/plain; charset=bogus", b"multipart/mixed"])
    | HEADER_BYTES,
    value=FIELD_VALUES,
    raw_disposition=st.none()
    | st.sampled_from(
        [
            b"form-data",
            b"form-data; name=model",
            b"form-data; name*=utf-8''model",
            b"form-data; name=\"model\"; filename*=UTF-8''a.wav",
            b"attachment",
            b'; name="file"',
            b'form-data; name="file"; filename',
        ]
    )
    | HEADER_BYTES,
)
#: A form the stt worker accepts (model first or not), to be spoiled in a few ways.
VALID_PARTS = st.builds(
    lambda model, audio, extras, model_first: (
        [model, audio, *extras] if model_first else [audio, *extras, model]
    ),
    st.builds(Part, st.just("model"), st.none(), st.none(), st.sampled_from([b"w", b"w\r\n"])),
    st.builds(Part, st.just("file"), st.just("a.wav"), st.just(b"audio/wav"), st.binary()),
    st.lists(PARTS, max_size=2),
    st.booleans(),
)


@st.composite
def multipart_requests(draw: st.DrawFn) -> Request:
    """Half well-formed forms (most of them valid), half anything."""
    if draw(st.booleans()):
        boundary = draw(TOKEN_BOUNDARIES)
        parts: list[Part] = draw(VALID_PARTS)
        body = b""
        for part in parts:
            body += b"--" + boundary + b"\r\n" + b"\r\n".join(part.head()) + b"\r\n\r\n"
            body += part.value + b"\r\n"
        body += b"--" + boundary + b"--\r\n"
        quoted = draw(st.booleans())
        content_type: bytes | None = b"multipart/form-data; boundary=" + (
            b'"' + boundary + b'"' if quoted else boundary
        )
        endpoint = draw(st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/translations"]))
        return Request("POST", endpoint, body, content_type)
    boundary = draw(BOUNDARIES)
    parts = draw(VALID_PARTS | st.lists(PARTS, max_size=5))
    newline = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    delimiter = boundary if draw(st.integers(0, 9)) else draw(BOUNDARIES)
    body = draw(st.sampled_from([b"", b"", b"preamble\r\n", b"\r\n"]))
    for part in parts:
        body += b"--" + delimiter + newline + newline.join(part.head()) + newline + newline
        body += part.value + newline
    closing = draw(st.sampled_from(["closed", "closed", "open", "no_newline", "epilogue"]))
    if closing != "open":
        body += b"--" + delimiter + b"--"
    if closing == "epilogue":
        body += b"\r\n--" + delimiter + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nt'
    elif closing == "closed":
        body += newline
    body += b"x" * draw(st.sampled_from([0, 0, 0, 0, 70_000]))  # over max_upload_body
    content_type = draw(
        st.sampled_from(
            [
                b"multipart/form-data; boundary=" + boundary,
                b"multipart/form-data; boundary=" + boundary,
                b'multipart/form-data; boundary="' + boundary + b'"',
                b"MULTIPART/FORM-DATA; BOUNDARY=" + boundary,
                b"multipart/form-data; charset=utf-8; boundary=" + boundary + b"; x=y",
                b"multipart/form-data;boundary=" + boundary,
                b"multipart/form-data",
                b"multipart/form-data; boundary=",
                b"multipart/form-data;",
                b"multipart/mixed; boundary=" + boundary,
                b"application/json",
                b"text/plain",
                b"",
                None,
            ]
        )
        | HEADER_BYTES
    )
    endpoint = draw(st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/translations"]))
    return Request("POST", endpoint, body, content_type)


# ---------------------------------------------------------------------------------------------
# Strategies: management calls and model ids in URLs
# ---------------------------------------------------------------------------------------------

URL_NAMES = (
    st.sampled_from(NAMES)
    | st.sampled_from(
        [
            "../x",
            "a/../../etc",
            "/etc/passwd",
            "~root",
            "..",
            ".",
            "t\x00",
            "\\t",
            "T",
            "t ",
            "%2e%2e",
            "t/..",
            "org/t:latest/",
            "tee/",
            "t%00",
            "t?x",
            "t#x",
            " ",
        ]
    )
    | st.text(max_size=16)
)


def url_path(prefix: str, name: str, suffix: str, safe: str) -> str:
    # Every byte a request line may carry is sent percent-encoded, so the name arrives as is.
    return prefix + quote(name.encode("utf-8", "surrogatepass"), safe=safe) + suffix


REPO_IDS = (
    st.from_regex(
        r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}/[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True
    )
    | st.sampled_from(
        [
            "../../etc/passwd",
            "a/b",
            "a--b/c",
            "a/b/c",
            "/abs",
            "gpt2",
            "a/..",
            "a/.b",
            "a/b\n",
            "org/" + "x" * 200,
            "\u00e9/b",
            "a/b ",
            "",
        ]
    )
    | st.text(max_size=20)
    | JSON_VALUES
)
REVISIONS = (
    st.sampled_from(["main", "refs/pr/1", "../../x", "a b", "", "a" * 300, "x.lock", "@{1}", "/"])
    | st.text(max_size=10)
    | JSON_VALUES
)
MANAGEMENT_BODIES = (
    st.fixed_dictionaries(
        {}, optional={"keep_alive": KEEP_ALIVES, "force": JSON_VALUES | st.booleans()}
    )
    | JSON_VALUES
)


@st.composite
def management_requests(draw: st.DrawFn) -> Request:
    content_type = (
        b"application/json"
        if draw(st.integers(0, 5))
        else draw(st.sampled_from([b"text/plain", b"application/jsonx", b"", None]))
    )
    if draw(st.integers(0, 2)) == 0:
        pull = draw(
            st.fixed_dictionaries(
                {}, optional={"model": REPO_IDS, "name": REPO_IDS, "revision": REVISIONS}
            )
            | JSON_VALUES
        )
        query = draw(st.sampled_from(["", "", "?stream=true", "?insecure=1"]))
        return Request("POST", "/api/pull" + query, json.dumps(pull).encode(), content_type)
    op = draw(st.sampled_from(["load", "unload"]))
    name = draw(URL_NAMES)
    path = url_path("/api/models/", name, "/" + op, draw(st.sampled_from(["", "/:@"])))
    query = draw(
        st.sampled_from(
            [
                "",
                "",
                "",
                "?stream=true",
                "?force=true",
                "?stream=1&force=yes",
                "?stream=%ff",
                "?stream=true&stream=false",
            ]
        )
    )
    body = b"" if draw(st.integers(0, 3)) == 0 else json.dumps(draw(MANAGEMENT_BODIES)).encode()
    return Request("POST", path + query, body, content_type)


#: Routes and methods beside the fuzzed ones (no DELETE of model files, no /api/reload).
OTHER_ROUTES = [
    *JSON_ENDPOINTS,
    "/v1/audio/transcriptions",
    "/v1/models",
    "/api/models",
    "/api/pull",
    "/api/models/t/load",
    "/health",
    "/v1/nope",
    "/v1/models/",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/responses/resp_x",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/show",
    "/api/delete",
    "/api/tags",
    "/api/version",
    "/rerank",
    "/v2/rerank",
]


@st.composite
def model_id_requests(draw: st.DrawFn) -> Request:
    """``GET /v1/models/{id}`` (and ``/api/models/{name}``); now and then another method or
    route, for the router's own 404/405 answers."""
    name = draw(URL_NAMES)
    safe = draw(st.sampled_from(["", "/:@"]))
    choice = draw(st.integers(0, 9))
    if choice < 7:
        return Request("GET", url_path("/v1/models/", name, "", safe), content_type=None)
    if choice < 9:
        return Request("GET", url_path("/api/models/", name, "", safe), content_type=None)
    method = draw(st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]))
    return Request(method, draw(st.sampled_from(OTHER_ROUTES)), content_type=None)


def chunked_sometimes(requests: st.SearchStrategy[Request]) -> st.SearchStrategy[Request]:
    """Now and then the same body with ``Transfer-Encoding: chunked`` (no Content-Length)."""
    sizes = st.sampled_from([None, None, None, None, None, None, 1, 7, 4096])
    return st.builds(lambda req, size: dataclasses.replace(req, chunk=size), requests, sizes)


# ---------------------------------------------------------------------------------------------
# Strategies: the dialects (Anthropic Messages, OpenAI Responses, Ollama), rerank, and tools
# ---------------------------------------------------------------------------------------------

#: Any JSON value, with the empty and unhashable ones (a list or object where a string is
#: looked up in a table) and the other edge values at a higher rate.
WRONG: st.SearchStrategy[Any] = JSON_VALUES | st.sampled_from(
    [None, [], {}, [[]], [{}], {"": {}}, "", 0, -1, True, 1.5]
)


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn as often as its weight says. (``st.one_of`` draws
    its branches equally, the same strategy given twice included.)"""
    picks = [index for index, (weight, _) in enumerate(options) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda index: options[index][1])


def often(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` three times in four, else ``rare``: for a field of the body, which must
    be wrong often, yet get past the first check often enough to reach the deeper ones."""
    return weighted((3, common), (1, rare))


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` seven times in eight: for what the items of a structure hold (with a few
    such parts, one of them is often wrong)."""
    return weighted((7, common), (1, rare))


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True one time in ``n``. (``st.integers`` favours its bounds: not for odds.)"""
    return st.sampled_from([False] * (n - 1) + [True])


def chance(draw: st.DrawFn, n: int) -> bool:
    """``draw(one_in(n))``, typed on its own (after ``x and``, the checker would take the type
    ``draw`` returns from ``x``)."""
    return draw(one_in(n))


@st.composite
def objects(
    draw: st.DrawFn,
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]] | None = None,
) -> dict[str, Any]:
    """An object with its ``required`` keys (one of them left out one time in sixteen) and
    some of its ``optional`` ones."""
    obj: dict[str, Any] = draw(st.fixed_dictionaries(required, optional=optional or {}))
    if required and chance(draw, 16):
        del obj[draw(st.sampled_from(sorted(required)))]
    return obj


def items(element: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[Any]:
    """A list of ``element``: not empty five times in six, else empty or not a list."""
    return weighted(
        (10, st.lists(element, min_size=1, max_size=max_size)), (1, st.just([])), (1, WRONG)
    )


@st.composite
def mutated_bodies(
    draw: st.DrawFn,
    core: st.SearchStrategy[dict[str, Any]],
    fields: dict[str, st.SearchStrategy[Any]],
    focus: Sequence[str] = (),
) -> Any:
    """A valid ``core`` body with one field changed (most examples: the one wrong field is
    then what the server must name; half of the time one of the ``focus`` fields, which hold
    the nested structures), or a few, or one taken away; now and then only fields, or any
    JSON at all."""
    kind = draw(st.sampled_from(["one"] * 8 + ["focus"] * 8 + ["some"] * 4 + ["fields", "any"]))
    if kind == "any":
        return draw(WRONG)
    body: dict[str, Any] = draw(core) if kind != "fields" else {}
    names = sorted(fields)
    if kind == "one" or (kind == "focus" and not focus):
        chosen = [draw(st.sampled_from(names))]
    elif kind == "focus":
        chosen = [draw(st.sampled_from(focus))]
    else:
        chosen = draw(st.lists(st.sampled_from(names), max_size=4, unique=True))
    for name in chosen:
        body[name] = draw(fields[name])
    if body and chance(draw, 15):
        del body[draw(st.sampled_from(sorted(body)))]
    if draw(one_in(5)):
        body.update(draw(st.dictionaries(st.text(max_size=8), WRONG, max_size=2)))
    return body


def json_request(method: str, path: str, body: Any, ascii_only: bool = True) -> Request:
    return Request(method, path, json.dumps(body, ensure_ascii=ascii_only).encode())


TEXTS = st.text(max_size=12)
#: Tool-call ids: plausible ones, empty, long, odd characters, and not strings at all.
IDS = mostly(
    st.sampled_from(["toolu_01", "call_1", "fc_1"]),
    st.sampled_from(["", " ", "x" * 300, "\u00e9", "a\nb", "call_1\x00"]) | st.text(max_size=8)
    | WRONG,
)  # fmt: skip
TOOL_NAMES = mostly(
    st.sampled_from(["get_weather", "search"]),
    st.sampled_from(["", "a b", "x" * 200, "\u00fcn\u00efcode", "get_weather\n"])
    | st.text(max_size=8) | WRONG,
)  # fmt: skip
ARGUMENT_OBJECTS = st.dictionaries(st.text(max_size=6), WRONG, max_size=3)
#: A call's arguments as JSON text: an object, or text that is not one.
ARGUMENT_STRINGS = mostly(
    ARGUMENT_OBJECTS.map(json.dumps),
    st.sampled_from(["{}", "", " ", "not json", "[1, 2]", "1", "null", '{"a":', '"x"', "{}{}"])
    | st.text(max_size=10),
)
SCHEMAS = mostly(
    st.just({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    | st.just({"type": "object"}),
    st.dictionaries(st.sampled_from(["type", "properties", "required", "$ref"]), WRONG) | WRONG,
)
#: Base64 image data (no ``data:`` prefix): a PNG, other bytes, bad base64, data URLs.
B64_IMAGES = (
    st.sampled_from(
        [
            base64.b64encode(PNG).decode(),
            base64.b64encode(PNG).decode()[:12] + "!!!!",
            base64.b64encode(PNG).decode() + "!!!!",
            base64.b64encode(b"GIF89a" + bytes(8)).decode(),
            base64.b64encode(b"RIFF\x00\x00\x00\x00WEBPVP8 ").decode(),
            "",
            "!!!!",
            "====",
            "AAAA",
            "\u00e9\u00e9\u00e9\u00e9",
            "iVBORw0KGgo",
            "data:image/png;base64," + base64.b64encode(PNG).decode(),
            "data:text/plain;base64,aGVsbG8=",
            "http://example.com/x.png",
        ]
    )
    | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
    | st.text(max_size=16)
)
#: Wrong values where a name (a role, a type) is expected: near misses, other types, and a
#: list or an object, which cannot be looked up in a table of names.
NOT_NAMES = st.sampled_from(
    ["", "Text", "TEXT", "text ", "image_url", "document", None, 0, True]
) | st.sampled_from([[], {}, ["text"], {"type": "text"}])
#: Unknown or unsupported types of content blocks, items and parts.
ODD_TYPES = NOT_NAMES | st.text(max_size=6)

# -- Anthropic Messages

#: The models the dialects' generation routes take (``k`` calls the tools it is offered).
DIALECT_MODELS = [*TEXT_NAMES, "v", "v", "v", "k"]
PNG_BASE64 = base64.b64encode(PNG).decode()
HI = [{"role": "user", "content": "hi"}]
CLAUDE_MODELS = often(st.sampled_from([*DIALECT_MODELS, "c"]), MODEL_FIELD)
IMAGE_SOURCES = mostly(
    objects(
        {
            "type": mostly(st.just("base64"), st.sampled_from(["url", "file", "text"]) | WRONG),
            "media_type": mostly(
                st.sampled_from(["image/png", "image/jpeg", "image/webp"]),
                st.sampled_from(["text/plain", "", "image/", "IMAGE/PNG"]) | WRONG,
            ),
            "data": mostly(B64_IMAGES, WRONG),
        },
        {"url": IMAGE_URLS | WRONG, "file_id": WRONG},
    ),
    objects({"type": st.just("url"), "url": mostly(IMAGE_URLS, WRONG)}) | WRONG,
)
TEXT_BLOCKS = objects(
    {"type": st.just("text"), "text": mostly(TEXTS, WRONG)},
    {"cache_control": WRONG, "citations": WRONG},
)
IMAGE_BLOCKS = objects(
    {"type": st.just("image"), "source": IMAGE_SOURCES}, {"cache_control": WRONG}
)
TOOL_USE_BLOCKS = objects(
    {
        "type": st.just("tool_use"),
        "id": IDS,
        "name": TOOL_NAMES,
        "input": mostly(ARGUMENT_OBJECTS, WRONG | ARGUMENT_STRINGS),
    }
)
TOOL_RESULT_BLOCKS = objects(
    {"type": st.just("tool_result"), "tool_use_id": IDS},
    {
        "content": weighted((1, TEXTS), (3, items(mostly(TEXT_BLOCKS, IMAGE_BLOCKS | WRONG), 2))),
        "is_error": st.booleans() | WRONG,
    },
)
THINKING_BLOCKS = objects(
    {"type": st.sampled_from(["thinking", "redacted_thinking"])},
    {"thinking": TEXTS | WRONG, "signature": TEXTS, "data": TEXTS},
)
CLAUDE_BLOCKS = weighted(
    (2, TEXT_BLOCKS),
    (2, IMAGE_BLOCKS),
    (1, TOOL_USE_BLOCKS),
    (1, TOOL_RESULT_BLOCKS),
    (1, THINKING_BLOCKS),
    (
        1,
        objects(
            {"type": st.sampled_from(["document", "search_result", "server_tool_use"]) | ODD_TYPES},
            {"source": WRONG, "text": TEXTS},
        ),
    ),
    (1, WRONG),
)
CLAUDE_MESSAGE = objects(
    {
        "role": mostly(st.sampled_from(["user", "assistant"]), NOT_NAMES | st.just("system")),
        "content": weighted((1, TEXTS), (2, items(CLAUDE_BLOCKS))),
    }
)


#: The blocks each role sends, and now and then any other.
ROLE_BLOCKS = {
    "user": mostly(
        weighted((1, TEXT_BLOCKS), (2, IMAGE_BLOCKS), (1, TOOL_RESULT_BLOCKS)), CLAUDE_BLOCKS
    ),
    "assistant": mostly(st.one_of(TEXT_BLOCKS, TOOL_USE_BLOCKS, THINKING_BLOCKS), CLAUDE_BLOCKS),
}


@st.composite
def claude_conversation(draw: st.DrawFn) -> list[Any]:
    """Turns that alternate as they should, each with a list of its role's blocks."""
    turns = draw(st.integers(1, 3)) * 2 - 1
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(turns)]
    return [
        {"role": role, "content": draw(st.lists(ROLE_BLOCKS[role], min_size=1, max_size=3))}
        for role in roles
    ]


@st.composite
def claude_tool_round(draw: st.DrawFn) -> list[Any]:
    """A question, a ``tool_use`` and its ``tool_result`` (whose id may not match)."""
    call = draw(TOOL_USE_BLOCKS)
    result = draw(TOOL_RESULT_BLOCKS)
    if draw(st.booleans()):
        result["tool_use_id"] = call.get("id")
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, call]},
        {"role": "user", "content": [*draw(st.lists(CLAUDE_BLOCKS, max_size=1)), result]},
    ]


CLAUDE_TOOLS = items(
    mostly(
        objects(
            {"name": TOOL_NAMES},
            {
                "type": mostly(st.just("custom"), st.sampled_from(["web_search_20250305"]) | WRONG),
                "description": TEXTS | WRONG,
                "input_schema": SCHEMAS,
                "cache_control": WRONG,
            },
        ),
        WRONG,
    ),
    2,
)
ANTHROPIC_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": CLAUDE_MODELS,
    "messages": weighted(
        (3, claude_conversation()), (2, items(CLAUDE_MESSAGE)), (2, claude_tool_round())
    ),
    "max_tokens": COUNTS,
    "system": TEXTS | items(mostly(TEXT_BLOCKS, CLAUDE_BLOCKS), 2),
    "stop_sequences": items(TEXTS, 2),
    "temperature": NUMBERS,
    "top_p": NUMBERS,
    "top_k": COUNTS,
    "stream": st.booleans() | WRONG,
    "keep_alive": KEEP_ALIVES,
    "tools": CLAUDE_TOOLS,
    "tool_choice": often(
        objects(
            {"type": mostly(st.sampled_from(["auto", "any", "none", "tool"]), NOT_NAMES)},
            {"name": TOOL_NAMES, "disable_parallel_tool_use": st.booleans() | WRONG},
        ),
        WRONG,
    ),
    "metadata": WRONG,
    "thinking": objects(
        {"type": st.sampled_from(["enabled", "disabled"]) | WRONG}, {"budget_tokens": COUNTS}
    )
    | WRONG,
    "output_config": objects(
        {},
        {
            "format": objects(
                {"type": mostly(st.just("json_schema"), NOT_NAMES), "schema": SCHEMAS}
            )
            | WRONG,
            "effort": WRONG,
        },
    )
    | WRONG,
    "mcp_servers": WRONG,
    "container": WRONG,
    "service_tier": WRONG,
}
CLAUDE_FOCUS = ("messages",) * 4 + ("system", "tools", "tool_choice")
CLAUDE_IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64},
            },
        ],
    }
]
CLAUDE_CORE = st.fixed_dictionaries(
    {
        "model": st.sampled_from([*DIALECT_MODELS, "c"]),
        "max_tokens": st.integers(1, 8),
        "messages": st.sampled_from([HI, CLAUDE_IMAGE]),
        "stream": st.booleans(),
    },
    optional={"tools": st.just([{"name": "get_weather", "input_schema": {"type": "object"}}])},
)
COUNT_CORE = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["c", "c", "c", "t", "v"]),
        "messages": st.just([{"role": "user", "content": "hi"}]),
    }
)


@st.composite
def anthropic_requests(draw: st.DrawFn) -> Request:
    """Messages (streamed or not) and count_tokens (model ``c`` has a real template)."""
    if draw(st.booleans()):
        return draw(point_mutations("/v1/messages"))
    if not draw(one_in(4)):
        body = draw(mutated_bodies(CLAUDE_CORE, ANTHROPIC_FIELDS, CLAUDE_FOCUS))
        return json_request("POST", "/v1/messages", body, draw(st.booleans()))
    body = draw(mutated_bodies(COUNT_CORE, ANTHROPIC_FIELDS, CLAUDE_FOCUS))
    return json_request("POST", "/v1/messages/count_tokens", body, draw(st.booleans()))


# -- OpenAI Responses

#: Content parts of no type this API takes (or of no type at all).
ODD_PARTS = objects(
    {"type": st.sampled_from(["input_file", "input_audio"]) | ODD_TYPES},
    {"file_data": TEXTS, "file_id": TEXTS, "text": TEXTS},
)
RESPONSE_PARTS = st.one_of(
    objects(
        {
            "type": st.sampled_from(["input_text", "output_text", "text"]),
            "text": mostly(TEXTS, WRONG),
        },
        {"annotations": WRONG},
    ),
    objects({"type": st.just("refusal"), "refusal": mostly(TEXTS, WRONG)}),
    objects(
        {"type": st.just("input_image"), "image_url": mostly(IMAGE_URLS, WRONG)},
        {"file_id": TEXTS | WRONG, "detail": st.sampled_from(["auto", "low", "high"]) | WRONG},
    ),
    ODD_PARTS,
    WRONG,
)
FUNCTION_CALLS = objects(
    {
        "type": st.just("function_call"),
        "call_id": IDS,
        "name": TOOL_NAMES,
        "arguments": mostly(ARGUMENT_STRINGS, ARGUMENT_OBJECTS | WRONG),
    },
    {"id": IDS, "status": WRONG},
)
FUNCTION_OUTPUTS = objects(
    {
        "type": st.just("function_call_output"),
        "call_id": IDS,
        "output": weighted((2, TEXTS), (1, items(RESPONSE_PARTS, 2))),
    }
)
INPUT_MESSAGES = objects(
    {
        "role": mostly(
            st.sampled_from(["user", "assistant", "system", "developer"]),
            st.sampled_from(["tool", "User"]) | NOT_NAMES,
        ),
        "content": weighted((1, TEXTS), (2, items(RESPONSE_PARTS))),
    },
    {"type": mostly(st.just("message"), NOT_NAMES), "id": IDS},
)
#: Messages whose content is a list of parts, each the wrong part now and then.
PART_MESSAGES = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer"]),
        "content": st.lists(weighted((3, RESPONSE_PARTS), (1, ODD_PARTS)), min_size=1, max_size=3),
    }
)
INPUT_ITEMS = weighted(
    (4, INPUT_MESSAGES),
    (2, FUNCTION_CALLS),
    (2, FUNCTION_OUTPUTS),
    (1, objects({"type": st.just("reasoning")}, {"summary": WRONG, "id": IDS})),
    (
        1,
        objects(
            {
                "type": st.sampled_from(["item_reference", "web_search_call", "mcp_call"])
                | ODD_TYPES
            },
            {"id": IDS, "role": WRONG},
        ),
    ),
    (1, WRONG),
)


@st.composite
def responses_tool_round(draw: st.DrawFn) -> list[Any]:
    """A question, a ``function_call`` and its output (whose ``call_id`` may not match)."""
    call = draw(FUNCTION_CALLS)
    output = draw(FUNCTION_OUTPUTS)
    if draw(st.booleans()):
        output["call_id"] = call.get("call_id")
    return [{"role": "user", "content": "Weather in Paris?"}, call, output]


RESPONSES_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": often(st.sampled_from(DIALECT_MODELS), MODEL_FIELD),
    "input": weighted(
        (1, TEXTS),
        (3, items(INPUT_ITEMS)),
        (3, st.lists(PART_MESSAGES, min_size=1, max_size=2)),
        (2, responses_tool_round()),
    ),
    "instructions": often(TEXTS, WRONG),
    "max_output_tokens": COUNTS,
    "temperature": NUMBERS,
    "top_p": NUMBERS,
    "stream": st.booleans() | WRONG,
    "store": st.booleans() | WRONG,
    "previous_response_id": often(
        st.just(LAST_RESPONSE), st.sampled_from(["resp_nope", "", "x" * 300]) | WRONG
    ),
    "tools": items(
        mostly(
            objects(
                {
                    "type": mostly(
                        st.just("function"),
                        st.sampled_from(["web_search", "file_search", "mcp", "custom"]) | WRONG,
                    ),
                    "name": TOOL_NAMES,
                },
                {
                    "description": TEXTS | WRONG,
                    "parameters": SCHEMAS,
                    "strict": st.booleans() | WRONG,
                },
            ),
            WRONG,
        ),
        2,
    ),
    "tool_choice": often(
        st.sampled_from(["none", "auto", "required"])
        | objects({"type": st.just("function"), "name": TOOL_NAMES}),
        st.sampled_from(["any", ""])
        | objects({"type": st.sampled_from(["allowed_tools", "web_search"]) | WRONG})
        | WRONG,
    ),
    "text": often(
        objects(
            {},
            {
                "format": objects(
                    {
                        "type": mostly(
                            st.sampled_from(["text", "json_object", "json_schema"]),
                            st.just("xml") | WRONG,
                        )
                    },
                    {
                        "name": TOOL_NAMES,
                        "schema": SCHEMAS,
                        "strict": st.booleans() | WRONG,
                        "description": WRONG,
                    },
                )
                | WRONG,
                "verbosity": WRONG,
            },
        ),
        WRONG,
    ),
    "parallel_tool_calls": st.booleans() | WRONG,
    "background": st.booleans() | WRONG,
    "conversation": WRONG,
    "prompt": WRONG,
    "reasoning": WRONG,
    "include": WRONG,
    "truncation": WRONG,
    "metadata": WRONG,
    "user": WRONG,
    "keep_alive": KEEP_ALIVES,
    "top_k": COUNTS,
    "seed": COUNTS,
    "stop": WRONG,
}
RESPONSES_FOCUS = ("input",) * 4 + ("tools", "tool_choice", "text")
RESPONSES_IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64," + PNG_BASE64},
        ],
    }
]
RESPONSES_CORE = st.fixed_dictionaries(
    {
        "model": st.sampled_from(DIALECT_MODELS),
        "input": st.sampled_from(["hi", RESPONSES_IMAGE]),
        "stream": st.booleans(),
    },
    optional={
        "max_output_tokens": st.integers(1, 8),
        "previous_response_id": st.just(LAST_RESPONSE),
        "tools": st.just([{"type": "function", "name": "get_weather"}]),
    },
)
RESPONSE_IDS = often(st.just(LAST_RESPONSE), st.sampled_from(["resp_nope", "x" * 300]) | URL_NAMES)


@st.composite
def responses_requests(draw: st.DrawFn) -> Request:
    """Create (often continuing the latest Response), read and delete Responses."""
    choice = draw(st.sampled_from(range(10)))
    if choice < 4:
        return draw(point_mutations("/v1/responses"))
    if choice < 8:
        body = draw(mutated_bodies(RESPONSES_CORE, RESPONSES_FIELDS, RESPONSES_FOCUS))
        return json_request("POST", "/v1/responses", body, draw(st.booleans()))
    method = "GET" if choice == 8 else "DELETE"
    path = url_path("/v1/responses/", draw(RESPONSE_IDS), "", draw(st.sampled_from(["", "/:@"])))
    return Request(method, path, content_type=None)


# -- Ollama

OLLAMA_MODELS = often(
    st.sampled_from(["t", "t:latest", "tee", "org/t:latest", "org/t", "v", "c:latest", "k"]),
    st.sampled_from(["t:7b", "t:", ":latest", "e", "s", "r", "nope:latest", "t:latest:latest"])
    | MODEL_FIELD,
)
OLLAMA_IMAGES = items(mostly(B64_IMAGES, WRONG), 2)
OLLAMA_CALLS = items(
    mostly(
        objects(
            {
                "function": mostly(
                    objects(
                        {
                            "name": TOOL_NAMES,
                            "arguments": mostly(ARGUMENT_OBJECTS, ARGUMENT_STRINGS | WRONG),
                        },
                        {"index": WRONG},
                    ),
                    WRONG,
                )
            },
            {"id": IDS, "type": WRONG},
        ),
        WRONG,
    ),
    2,
)
OLLAMA_MESSAGE = objects(
    {
        "role": mostly(st.sampled_from(["user", "assistant", "system", "tool"]), NOT_NAMES),
        "content": mostly(TEXTS, WRONG | st.lists(CONTENT_PARTS, max_size=2)),
    },
    {
        "images": OLLAMA_IMAGES,
        "tool_calls": OLLAMA_CALLS,
        "tool_name": TOOL_NAMES,
        "thinking": TEXTS | WRONG,
    },
)
OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "num_predict": COUNTS | st.sampled_from([-1, -2, 0]),
    "temperature": NUMBERS,
    "top_p": NUMBERS,
    "top_k": COUNTS,
    "min_p": NUMBERS,
    "seed": COUNTS,
    "stop": items(TEXTS, 2) | TEXTS,
    "presence_penalty": NUMBERS,
    "frequency_penalty": NUMBERS,
    "repeat_penalty": NUMBERS,
    "repeat_last_n": COUNTS,
    "num_ctx": COUNTS,
    "mirostat": WRONG,
}
OLLAMA_OPTIONS = often(
    objects({}, OPTION_VALUES), st.dictionaries(st.text(max_size=6), WRONG, max_size=2) | WRONG
)
OLLAMA_TOOLS = items(
    mostly(
        objects(
            {
                "type": mostly(st.just("function"), NOT_NAMES),
                "function": mostly(
                    objects({"name": TOOL_NAMES}, {"description": TEXTS, "parameters": SCHEMAS}),
                    WRONG,
                ),
            }
        ),
        WRONG,
    ),
    2,
)
#: Valid durations too long for a date (``expires_at`` in ``/api/ps``), and the others.
OLLAMA_KEEP_ALIVES = often(KEEP_ALIVES, st.sampled_from([1e308, 2**62, "99999999h", "1e300"]))
OLLAMA_COMMON: dict[str, st.SearchStrategy[Any]] = {
    "model": OLLAMA_MODELS,
    "format": st.sampled_from(["json", "", "JSON", "yaml"]) | SCHEMAS,
    "options": OLLAMA_OPTIONS,
    "stream": st.booleans() | WRONG,
    "keep_alive": OLLAMA_KEEP_ALIVES,
    "think": WRONG,
}
OLLAMA_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/api/chat": {
        **OLLAMA_COMMON,
        "messages": items(OLLAMA_MESSAGE),
        "tools": OLLAMA_TOOLS,
    },
    "/api/generate": {
        **OLLAMA_COMMON,
        "prompt": often(TEXTS, WRONG),
        "system": often(TEXTS, WRONG),
        "images": OLLAMA_IMAGES,
        "raw": st.booleans() | WRONG,
        "suffix": TEXTS | WRONG,
        "template": TEXTS | WRONG,
        "context": WRONG,
    },
}
OLLAMA_FIELDS["/api/embed"] = OLLAMA_FIELDS["/api/embeddings"] = {
    "model": often(st.just("e"), OLLAMA_MODELS),
    "input": INPUTS,
    "prompt": often(TEXTS, WRONG),
    "truncate": WRONG,
    "dimensions": COUNTS,
    "options": OLLAMA_OPTIONS,
    "keep_alive": KEEP_ALIVES,
}
OLLAMA_FOCUS = {
    "/api/chat": ("messages",) * 4 + ("options", "format", "tools"),
    "/api/generate": ("prompt", "images", "images", "options", "format", "raw", "keep_alive"),
    "/api/embed": ("input",),
    "/api/embeddings": ("prompt",),
}
OLLAMA_CORES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/api/chat": st.fixed_dictionaries(
        {
            "model": st.sampled_from(["t", "t:latest", "v", "v", "org/t:latest", "k"]),
            "messages": st.sampled_from(
                [HI, [{"role": "user", "content": "What is this?", "images": [PNG_BASE64]}]]
            ),
            "stream": st.booleans(),
        },
        optional={
            "options": st.just({"num_predict": 3}),
            "tools": st.just([{"type": "function", "function": {"name": "get_weather"}}]),
        },
    ),
    "/api/generate": st.fixed_dictionaries(
        {"model": st.sampled_from(["t", "tee:latest", "v", "v"]), "prompt": st.just("hi")},
        optional={
            "stream": st.booleans(),
            "raw": st.booleans(),
            "system": st.just("Be brief."),
            "images": st.just([PNG_BASE64]),
        },
    ),
    "/api/embed": st.fixed_dictionaries({"model": st.just("e"), "input": st.just(["a", "b"])}),
    "/api/embeddings": st.fixed_dictionaries({"model": st.just("e"), "prompt": st.just("a")}),
}
#: ``/api/show`` and ``/api/delete`` bodies: a model by either key. Never ``"local": true``,
#: which would delete model ``c``'s directory (the session's tiny model).
MODEL_INFO_BODIES = often(
    objects({}, {"model": OLLAMA_MODELS, "name": OLLAMA_MODELS, "verbose": WRONG}), WRONG
)


@st.composite
def ollama_requests(draw: st.DrawFn) -> Request:
    """Chat and generate (streamed by default), embeddings, show, delete, and the GETs
    (``/api/ps`` the most: what it shows depends on what the other requests did)."""
    choice = draw(st.sampled_from(range(22)))
    if choice < 8:
        return draw(point_mutations("/api/"))
    if choice < 16:
        path = draw(st.sampled_from(["/api/chat"] * 3 + ["/api/generate"] * 2 + ["/api/embed"]))
        if path == "/api/embed" and draw(st.booleans()):
            path = "/api/embeddings"
        body = draw(mutated_bodies(OLLAMA_CORES[path], OLLAMA_FIELDS[path], OLLAMA_FOCUS[path]))
        return json_request("POST", path, body, draw(st.booleans()))
    if choice < 18:
        method, path = ("POST", "/api/show") if choice == 16 else ("DELETE", "/api/delete")
        body = draw(MODEL_INFO_BODIES)
        if isinstance(body, dict):
            body.pop("local", None)
        return json_request(method, path, body)
    if choice < 20:
        return Request("GET", "/api/ps", content_type=None)
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "DELETE"]))
    path = draw(st.sampled_from(["/api/tags", "/api/ps", "/api/version"]))
    return Request(method, path, content_type=None)


# -- Rerank

RERANK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": often(st.sampled_from(["r", "rerank-v3.5"]), MODEL_FIELD),
    "query": often(TEXTS, WRONG),
    "documents": items(
        mostly(
            TEXTS,
            objects(
                {"text": mostly(TEXTS, WRONG)},
                {"title": WRONG, "image": WRONG, "image_url": IMAGE_URLS, "video": WRONG},
            )
            | WRONG,
        ),
        10,
    ),
    "top_n": COUNTS,
    "return_documents": st.booleans() | WRONG,
    "instruction": TEXTS | WRONG,
    "rank_fields": items(st.sampled_from(["text", "title"]) | WRONG, 2),
    "max_chunks_per_doc": COUNTS,
    "max_tokens_per_doc": COUNTS,
    "keep_alive": KEEP_ALIVES,
}
RERANK_CORE = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["r", "rerank-v3.5"]),
        "query": st.just("What is the capital of France?"),
        "documents": st.just(["Paris is.", {"text": "Berlin is not."}, ""]),
    },
    optional={"top_n": st.integers(1, 4), "return_documents": st.booleans()},
)


@st.composite
def rerank_requests(draw: st.DrawFn) -> Request:
    if draw(st.booleans()):
        return draw(point_mutations("/v1/rerank"))
    path = draw(st.sampled_from(["/v1/rerank", "/v1/rerank", "/rerank", "/v2/rerank"]))
    body = draw(mutated_bodies(RERANK_CORE, RERANK_FIELDS, ("documents", "rank_fields")))
    return json_request("POST", path, body, draw(st.booleans()))


# -- Tools and structured output on chat completions

OPENAI_FUNCTIONS = mostly(
    objects({"name": TOOL_NAMES}, {"description": TEXTS | WRONG, "parameters": SCHEMAS}), WRONG
)
OPENAI_TOOL_CALLS = items(
    mostly(
        objects(
            {
                "id": IDS,
                "type": mostly(st.just("function"), NOT_NAMES),
                "function": mostly(
                    objects(
                        {
                            "name": TOOL_NAMES,
                            "arguments": mostly(ARGUMENT_STRINGS, ARGUMENT_OBJECTS | WRONG),
                        }
                    ),
                    WRONG,
                ),
            },
            {"index": WRONG},
        ),
        WRONG,
    ),
    2,
)
TOOL_MESSAGES = st.one_of(
    MESSAGE,
    objects(
        {"role": st.just("assistant"), "tool_calls": OPENAI_TOOL_CALLS},
        {"content": st.none() | TEXTS | WRONG},
    ),
    objects(
        {"role": st.just("tool"), "content": mostly(TEXTS, WRONG), "tool_call_id": IDS},
        {"name": TOOL_NAMES},
    ),
)
TOOL_CHAT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.lists(TOOL_MESSAGES, min_size=1, max_size=3),
    "tools": items(
        mostly(
            objects(
                {"type": mostly(st.just("function"), NOT_NAMES), "function": OPENAI_FUNCTIONS},
                {"strict": st.booleans() | WRONG},
            ),
            WRONG,
        ),
        2,
    ),
    "tool_choice": often(
        st.sampled_from(["none", "auto", "required"])
        | objects({"type": st.just("function"), "function": objects({"name": TOOL_NAMES})}),
        st.sampled_from(["any", ""])
        | objects({"type": WRONG, "function": objects({"name": TOOL_NAMES}) | WRONG})
        | WRONG,
    ),
    "response_format": often(
        objects(
            {"type": mostly(st.sampled_from(["text", "json_object", "json_schema"]), NOT_NAMES)},
            {
                "json_schema": mostly(
                    objects(
                        {"name": TOOL_NAMES, "schema": SCHEMAS}, {"strict": st.booleans() | WRONG}
                    ),
                    WRONG,
                )
            },
        ),
        WRONG,
    ),
    "parallel_tool_calls": st.booleans() | WRONG,
    "stream": st.booleans(),
}
TOOL_CHAT_CORE = st.fixed_dictionaries(
    {
        "model": st.sampled_from(DIALECT_MODELS),
        "messages": st.just([{"role": "user", "content": "Weather in Paris?"}]),
        "tools": st.just([{"type": "function", "function": {"name": "get_weather"}}]),
    },
    optional={"max_tokens": st.integers(1, 8)},
)
TOOL_CHAT_FOCUS = ("messages", "messages", "tools", "tool_choice", "response_format")


@st.composite
def tool_chat_requests(draw: st.DrawFn) -> Request:
    if draw(st.booleans()):
        return draw(point_mutations("/v1/chat/completions"))
    body = draw(mutated_bodies(TOOL_CHAT_CORE, TOOL_CHAT_FIELDS, TOOL_CHAT_FOCUS))
    return json_request("POST", "/v1/chat/completions", body, draw(st.booleans()))


# -- Point mutations of rich valid requests

#: What a point mutation puts in place of a value: the wrong kinds of names, any JSON, numbers
#: no field takes, and nothing.
REPLACEMENTS = weighted(
    (2, NOT_NAMES),
    (2, WRONG),
    (1, st.sampled_from([-1, 0, 2**63, -(2**63), 10**40, 1e308, -1e308, 0.5, "1e999", "-1"])),
    (1, TEXTS),
    (1, st.just(None)),
)
PNG_URL = "data:image/png;base64," + PNG_BASE64
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
#: Valid requests (each answered 200 as it is) that use every structure their dialect has:
#: the seeds of :func:`point_mutations`. ``LAST_RESPONSE`` becomes the latest Response's id.
SEEDS: list[tuple[str, dict[str, Any]]] = [
    (
        "/v1/messages",
        {
            "model": "v",
            "max_tokens": 4,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "source": {
                        "type": "base64", "media_type": "image/png", "data": PNG_BASE64}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Look it up.", "signature": "s"},
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
                     "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "text", "text": "Thanks."},
                ]},
            ],
            "tools": [{"name": "get_weather", "description": "Weather.",
                       "input_schema": WEATHER_SCHEMA}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stream": True,
            "metadata": {"user_id": "u"},
            "output_config": {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
            "keep_alive": "1h",
        },
    ),
    (
        "/v1/messages",
        {
            "model": "k",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "stream": False,
        },
    ),
    (
        "/v1/messages/count_tokens",
        {
            "model": "c",
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]},
            ],
            "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
            "tool_choice": {"type": "any"},
        },
    ),
    (
        "/v1/responses",
        {
            "model": "v",
            "instructions": "Be brief.",
            "input": [
                {"type": "message", "role": "developer", "content": "Answer in English."},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                 "arguments": '{"city": "Paris"}'},
                {"type": "function_call_output", "call_id": "call_1",
                 "output": [{"type": "input_text", "text": "Sunny"}]},
                {"role": "assistant", "content": [
                    {"type": "output_text", "text": "Sunny.", "annotations": []},
                    {"type": "refusal", "refusal": "No more."},
                ]},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA,
                       "strict": False}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER_SCHEMA}},
            "max_output_tokens": 4,
            "temperature": 0.5,
            "parallel_tool_calls": True,
            "store": True,
            "stream": True,
            "metadata": {"k": "v"},
            "keep_alive": "1h",
        },
    ),
    (
        "/v1/responses",
        {
            "model": "k",
            "previous_response_id": LAST_RESPONSE,
            "input": "And tomorrow?",
            "tools": [{"type": "function", "name": "get_weather"}],
            "tool_choice": "required",
            "text": {"format": {"type": "json_object"}},
            "stream": False,
        },
    ),
    (
        "/api/chat",
        {
            "model": "v",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather here?", "images": [PNG_BASE64]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_name": "get_weather", "content": "Sunny"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": WEATHER_SCHEMA}}],
            "format": WEATHER_SCHEMA,
            "options": {"num_predict": 4, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                        "min_p": 0.1, "seed": 1, "stop": ["END"], "presence_penalty": 0.1,
                        "frequency_penalty": 0.1, "repeat_penalty": 1.1, "repeat_last_n": 16,
                        "num_ctx": 2048},
            "stream": True,
            "keep_alive": "1h",
        },
    ),
    (
        "/api/chat",
        {
            "model": "k:latest",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            "stream": False,
        },
    ),
    (
        "/api/generate",
        {
            "model": "v",
            "prompt": "What is this?",
            "system": "Be brief.",
            "images": [PNG_BASE64],
            "format": "json",
            "options": {"num_predict": 4, "stop": "END"},
            "raw": False,
            "stream": True,
            "keep_alive": "1h",
        },
    ),
    (
        "/api/generate",
        {"model": "t", "prompt": "Once", "raw": True, "options": {"num_predict": 3},
         "stream": False, "keep_alive": 2**62},
    ),
    ("/api/embed", {"model": "e", "input": ["a", "b"], "dimensions": 2, "truncate": True,
                    "keep_alive": "1h"}),
    # Valid durations past what a date holds: /api/ps shows when each model unloads.
    ("/api/embeddings", {"model": "e", "prompt": "a", "options": {}, "keep_alive": 1e308}),
    (
        "/v1/rerank",
        {
            "model": "r",
            "query": "What is the capital of France?",
            "documents": ["Paris is.", {"text": "Berlin is not.", "title": "t"}],
            "top_n": 2,
            "return_documents": True,
            "rank_fields": ["text"],
            "max_chunks_per_doc": 1,
            "max_tokens_per_doc": 64,
            "keep_alive": "1h",
        },
    ),
    (
        "/v1/chat/completions",
        {
            "model": "k",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {
                        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": WEATHER_SCHEMA}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "w", "schema": WEATHER_SCHEMA}},
            "parallel_tool_calls": False,
            "max_tokens": 4,
            "stream": True,
        },
    ),
]  # fmt: skip


def json_paths(value: Any, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where every value inside ``value`` is (not ``value`` itself)."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    out: list[tuple[str | int, ...]] = []
    for key, child in children:
        out += [(*at, key), *json_paths(child, (*at, key))]
    return out


@st.composite
def point_mutations(draw: st.DrawFn, prefix: str) -> Request:
    """A seed of a route starting with ``prefix``, with one or two of its values (at any depth)
    replaced by a wrong one, taken away, or emptied; its ``stream`` flipped now and then."""
    path, seed = draw(st.sampled_from([seed for seed in SEEDS if seed[0].startswith(prefix)]))
    body = json.loads(json.dumps(seed))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):
        *parents, key = draw(st.sampled_from(json_paths(body)))
        parent = body
        for step in parents:
            parent = parent[step]
        action = draw(st.sampled_from(["replace"] * 6 + ["delete", "empty"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "delete":
            parent.pop(key)
        else:
            empty = st.sampled_from(["", [], {}])
            # A copy: strategies hand out the same list or dict every time they draw it, and
            # a second round would mutate it inside them (then the next draws differ, which
            # hypothesis reports as a flaky strategy).
            parent[key] = copy.deepcopy(draw(REPLACEMENTS if action == "replace" else empty))
        if not json_paths(body):
            break
    if "stream" in body and draw(one_in(4)):
        body["stream"] = not body["stream"]
    return json_request("POST", path, body, draw(st.booleans()))


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def fuzz(
    strategy: st.SearchStrategy[Request] | st.SearchStrategy[list[Request]],
    run: Running,
    examples: int,
) -> Callable[[], None]:
    """Send ``examples`` requests drawn from ``strategy``, one at a time (a list: all of them
    at once), checking each.

    Hypothesis runs in this (worker) thread and hands each request to the server's event loop,
    so one server serves the whole run and the checks after it see the state it left.
    """
    loop = asyncio.get_running_loop()
    server_limit = sys.getrecursionlimit()

    @settings(FUZZ, max_examples=examples)
    @given(strategy)
    def one(req: Request | list[Request]) -> None:
        # Hypothesis raises the (process-wide) recursion limit while a test runs; the server
        # must parse with its own, or it accepts JSON nested deeper than it would in
        # production (and deeper than the workers, in other processes, can parse).
        hypothesis_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(server_limit)
        try:
            batch = req if isinstance(req, list) else [req]
            asyncio.run_coroutine_threadsafe(send_all(run, batch), loop).result()
        finally:
            sys.setrecursionlimit(hypothesis_limit)

    return one


async def send_all(run: Running, batch: list[Request]) -> None:
    await asyncio.gather(*(send_checked(run, req) for req in batch))


async def fuzz_run(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    strategy: st.SearchStrategy[Request] | st.SearchStrategy[list[Request]],
    examples: int,
    *,
    tiny: Path | None = None,
    first: Sequence[Request] = (),
) -> Running:
    """Fuzz a new server (with model ``c`` when given ``tiny``); the ``first`` requests, sent
    before, must get a 200."""
    caplog.set_level(logging.INFO, logger="mlx_serve")
    RECENT_RESPONSES.clear()
    run = await fuzz_server(start_server, tiny)
    for req in first:
        reply = await send_checked(run, req)
        assert reply.status == 200, f"{req!r}: {reply.body[:500]!r}"
    await asyncio.to_thread(fuzz(strategy, run, examples))
    await check_still_serving(run, caplog)
    return run


async def test_json_endpoints(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """Chat, completions, embeddings and speech: random JSON, valid bodies with wrong fields."""
    await fuzz_run(start_server, caplog, chunked_sometimes(json_requests()), 500)


async def test_raw_json_bodies(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """Invalid JSON, invalid UTF-8, lone surrogates, deep nesting, huge numbers, encodings,
    on every endpoint that reads JSON (each dialect answers in its own shape)."""
    await fuzz_run(start_server, caplog, chunked_sometimes(raw_requests()), 600)


async def test_multipart_uploads(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Transcriptions and translations: random parts, names, filenames, boundaries."""
    await fuzz_run(start_server, caplog, chunked_sometimes(multipart_requests()), 400)


async def test_management_calls(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load, unload and pull with random names, queries and bodies; never a real download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    await fuzz_run(start_server, caplog, management_requests(), 200)


async def test_model_ids(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """GET /v1/models/{id} and /api/models/{name}: 200 for a configured name or alias, else
    an OpenAI-shaped 4xx; other methods on the API's routes: 404/405 in the same shape."""
    await fuzz_run(start_server, caplog, model_id_requests(), 200)


def _not_forced(req: Request) -> bool:
    """A forced unload cuts streams on purpose (with an SSE error): not in concurrent runs."""
    return "unload" not in req.path or (b"force" not in req.body and "force" not in req.path)


async def test_concurrent_mix(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of every kind of request at once, loads and unloads among them: each still
    gets its own whole answer (a graceful unload never cuts a stream)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    anything = st.one_of(
        json_requests(),
        json_requests(),
        raw_requests().filter(_not_forced),
        multipart_requests(),
        management_requests().filter(_not_forced),
        model_id_requests(),
    )
    await fuzz_run(start_server, caplog, st.lists(anything, min_size=2, max_size=6), 80)


async def test_anthropic_messages(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tiny_models: dict[str, Path]
) -> None:
    """/v1/messages, streamed or not, and count_tokens (a real chat template for ``c``):
    content blocks, tool_use/tool_result, images, tools, system, sampling fields."""
    await fuzz_run(start_server, caplog, anthropic_requests(), 500, tiny=tiny_models["a"])


async def test_openai_responses(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """/v1/responses, streamed or not, often continuing the latest stored Response; GET and
    DELETE of stored and unknown ids: input items, content parts, tools, text.format."""
    await fuzz_run(start_server, caplog, responses_requests(), 500)


async def test_ollama_api(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tiny_models: dict[str, Path]
) -> None:
    """Ollama's chat and generate (NDJSON by default), embed, embeddings, show, delete, tags,
    ps and version: messages, images, tool calls, options, format, keep_alive, raw."""
    await fuzz_run(start_server, caplog, ollama_requests(), 500, tiny=tiny_models["a"])


async def test_rerank(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """/v1/rerank, /rerank and /v2/rerank, through the rerank worker's own checks."""
    await fuzz_run(start_server, caplog, rerank_requests(), 250)


async def test_chat_tools(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """Chat completions with tools, tool_choice, response_format and tool-call turns."""
    await fuzz_run(start_server, caplog, tool_chat_requests(), 300)


async def test_dialects_concurrent(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tiny_models: dict[str, Path]
) -> None:
    """Batches of every dialect's requests at once (streams among them). First, each seed of
    the point mutations alone: a 200 as it is, so a mutation changes one thing in a request
    that gets past every check."""
    anything = st.one_of(
        anthropic_requests(),
        responses_requests(),
        ollama_requests(),
        rerank_requests(),
        tool_chat_requests(),
        json_requests(),
    )
    strategy = st.lists(anything, min_size=2, max_size=6)
    seeds = [json_request("POST", path, body) for path, body in SEEDS]
    await fuzz_run(start_server, caplog, strategy, 60, tiny=tiny_models["a"], first=seeds)


_FORM = (
    b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nw\r\n'
    b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\nRIFF\r\n"
)


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(
            Request(
                "POST",
                "/v1/audio/transcriptions",
                _FORM + b"--x--\r\n",
                b"multipart/form-data; boundary=\x80",
            ),
            id="boundary-not-utf8",
        ),
        pytest.param(
            Request(
                "POST",
                "/v1/audio/transcriptions",
                _FORM + b'--x\r\nContent-Disposition: form-data; name="\x1f"\r\n\r\nt\r\n--x--\r\n',
                b"multipart/form-data; boundary=x",
            ),
            id="control-char-in-part-header",
        ),
        pytest.param(
            Request(
                "POST",
                "/v1/audio/speech",
                b'{"model": "s", "input": "hello", "speed": 1' + b"0" * 400 + b"}",
            ),
            id="tts-speed-beyond-float",
        ),
        pytest.param(
            json_request(
                "POST",
                "/v1/rerank",
                {"model": "r", "query": "q", "documents": ["a"], "rank_fields": [[]]},
            ),
            id="rerank-rank-fields-unhashable",
        ),
        pytest.param(
            json_request(
                "POST",
                "/v1/messages",
                {"model": "t", "max_tokens": 1, "messages": HI, "tool_choice": {"type": []}},
            ),
            id="anthropic-tool-choice-type-unhashable",
        ),
        pytest.param(
            json_request("POST", "/v1/responses", {"model": "t", "input": [{"role": []}]}),
            id="responses-role-unhashable",
        ),
        pytest.param(
            json_request(
                "POST",
                "/v1/responses",
                {"model": "t", "input": [{"role": "user", "content": [{"type": {}}]}]},
            ),
            id="responses-part-type-unhashable",
        ),
    ],
)
async def test_found_bug(start_server: StartServer, req: Request) -> None:
    """Minimal reproducers of the bugs the fuzz found (a 500, a 502, a 502, and four 500s in
    the dialects: a list or object where a string is looked up in a table): each a 400 now."""
    run = await fuzz_server(start_server)
    reply = await raw_request(run, req)
    assert reply.status == 400, f"{reply.status}: {reply.body!r}"
    check_error_shape(reply, req)


async def test_found_bug_ollama_ps_after_a_long_keep_alive(start_server: StartServer) -> None:
    """A model kept alive for 1e308 s (a valid duration) made ``GET /api/ps`` a 500: its
    ``expires_at`` was past what a date can hold. It is the "never" date now."""
    run = await fuzz_server(start_server)
    load = json_request("POST", "/api/generate", {"model": "t", "keep_alive": 1e308})
    reply = await raw_request(run, load)
    assert reply.status == 200, reply.body
    reply = await raw_request(run, Request("GET", "/api/ps", content_type=None))
    assert reply.status == 200, reply.body
    (model,) = json.loads(reply.body)["models"]
    assert model["expires_at"].startswith("9999-12-31"), model


# ---------------------------------------------------------------------------------------------
# The fake embedding / tts / stt worker: ``python -m tests.integration.test_fuzz --model ...``
# ---------------------------------------------------------------------------------------------


def _fake_model_server(argv: list[str] | None = None) -> None:
    """An embedding/tts/stt worker without a model: requests go through the real workers'
    checks (embeddings: ``parse_request`` and ``compute``, around a fake embedder; speech:
    ``parse_speech_request``; transcriptions: ``read_form`` and ``parse_form``, the language
    name unchecked), answers are canned (no audio is synthesized or decoded)."""
    import numpy as np
    from aiohttp import web

    from mlx_serve.errors import ApiError, error_middleware
    from mlx_serve.workers import embedding_server, rerank_server, stt_server, tts_server

    class _FakeEmbedder(embedding_server.Embedder):
        """Token ids and unit vectors without a model: ``compute`` runs for real around them."""

        def tokenize(self, items: Sequence[str | list[int]]) -> list[list[int]]:
            return [
                [*self.prefix, *(item[:8] if isinstance(item, list) else [7]), *self.suffix]
                for item in items
            ]

        def embed(self, ids: list[list[int]]) -> Any:
            return np.full((len(ids), self.dimensions), 0.5, dtype=np.float32)

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    embedding_args = argparse.Namespace(
        model=args.model, max_items=2048, max_item_chars=200_000, max_total_chars=8_000_000
    )
    embedder = _FakeEmbedder(
        model=None,
        tokenizer=None,
        max_length=16,
        dimensions=4,
        vocab_size=1000,
        prefix=[101],
        suffix=[102],
        batch_size=32,
        pass_attention_mask=False,
    )
    # A cross-encoder (it refuses an 'instruction', as the real one does) without a model:
    # the worker's own parse_request and compute run around its scores.
    reranker = rerank_server.Reranker(
        model=None,
        tokenizer=None,
        kind="sequence_classifier",
        max_length=16,
        batch_size=4,
        scorer=lambda query, documents, _: (
            [1 / (2 + len(document)) for document in documents],
            len(query) + sum(map(len, documents)),
        ),
    )
    rerank_args = argparse.Namespace(model=args.model, max_documents=8)
    # The real one imports mlx_whisper's tokenizer (3 s) to check a language name.
    stt_server._language_code = lambda value: value

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": args.model, "pid": os.getpid()})

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
        req = embedding_server.parse_request(body, embedding_args, default_model=args.model)
        payload = embedding_server.compute(embedder, req)  # the real checks and rendering
        return web.Response(body=payload, content_type="application/json")

    async def rerank(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
        req = rerank_server.parse_request(body, rerank_args, default_model=args.model)
        payload = rerank_server.compute(reranker, req)  # the real ranking and rendering
        return web.Response(body=payload, content_type="application/json")

    async def speech(request: web.Request) -> web.Response:
        body = await tts_server._json_body(request)
        tts_server.parse_speech_request(body, max_chars=tts_server.DEFAULT_MAX_INPUT_CHARS)
        return web.Response(body=b"RIFF\x24\x00\x00\x00WAVEfmt ", content_type="audio/wav")

    async def transcribe(request: web.Request) -> web.Response:
        fields, audio = await stt_server.read_form(request, max_file_bytes=25 * 2**20)
        stt_server.parse_form(fields, audio, task="transcribe")
        return web.json_response({"text": "fake"})

    app = web.Application(middlewares=[error_middleware], client_max_size=2**30)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/rerank", rerank)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_post("/v1/audio/translations", transcribe)
    print(f"fuzz fake worker pid {os.getpid()} for {args.model}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    _fake_model_server(sys.argv[1:])
