"""Property-based fuzzing (hypothesis) of every JSON and multipart endpoint of the real router.

One real server per test, with fast fake workers behind every model type, so a request that
is valid enough to reach a model gets a real answer (200), never a "could not start" 503:

- text and vision models: :mod:`mlx_serve.testing.fake_worker` (:class:`FakeWorkerDriver`);
- embedding, tts and stt models: this module run as a worker (:func:`_fake_model_server`,
  at the bottom). It checks requests with the real workers' own code
  (``embedding_server.parse_request`` and ``compute`` around a fake model,
  ``tts_server.parse_speech_request``, ``stt_server.read_form``/``parse_form``) and answers
  with canned output, so the fuzz also covers what the router forwards and a worker chokes on.

Invariants, for every request: an answer arrives (no dropped connection, no hang); no 5xx
(except ``/api/pull``'s 503 ``hub_offline``: the tests run with ``HF_HUB_OFFLINE=1``); every
error is JSON in its route's dialect: OpenAI's ``{"error": {"message": str, "type": str,
"code": str | None}}``, Ollama's ``{"error": str}`` on Ollama's routes (``/api/pull``);
a body that cannot be a request (not JSON, not UTF-8, a lone surrogate) is a 4xx, never
forwarded; a 200 is a whole answer (a stream ends with ``[DONE]``). After each run:
``GET /health`` answers, a valid chat completion gets 200, and the router logged no error
(the error middleware logs every unhandled exception).

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

pytestmark = pytest.mark.slow

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
}

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
NAMES = ["t", "tee", "org/t:latest", "v", "e", "s", "w"]
TEXT_NAMES = ["t", "tee", "org/t:latest"]

FUZZ = settings(
    max_examples=100,
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


async def fuzz_server(start_server: StartServer) -> Running:
    return await start_server(MODELS, drivers=DRIVERS, **SERVER)


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
    """A 200 must be a whole answer: JSON, a stream ending in [DONE], NDJSON, or audio."""
    content_type = reply.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        json.loads(reply.body)
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
    else:
        assert content_type.startswith("audio/"), f"200 with {content_type!r} for {req!r}"
        assert reply.body, f"empty audio for {req!r}"


def allowed_5xx(reply: Reply, req: Request) -> bool:
    """The one 5xx that is not the server's fault: pulling while the hub is unreachable."""
    if req.path.startswith("/api/pull") and reply.status == 503:
        return error_code(json.loads(reply.body)) == "hub_offline"
    return False


async def send_checked(run: Running, req: Request) -> Reply:
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
    return reply


async def check_still_serving(run: Running, caplog: pytest.LogCaptureFixture) -> None:
    async with run.http.get("/health") as r:
        assert r.status == 200, await r.text()
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
                ]
            )
        )
        body = {**core, spot: MARK}
        return json.dumps(body).encode().replace(json.dumps(MARK).encode(), token), False
    encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]))
    return json.dumps(core, ensure_ascii=False).encode(encoding), False


RAW_ENDPOINTS = [*JSON_ENDPOINTS, "/api/models/t/load", "/api/models/v/unload", "/api/pull"]
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
        content_type = b"multipart/form-data; boundary=" + (
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
        body = draw(
            st.fixed_dictionaries(
                {}, optional={"model": REPO_IDS, "name": REPO_IDS, "revision": REVISIONS}
            )
            | JSON_VALUES
        )
        query = draw(st.sampled_from(["", "", "?stream=true", "?insecure=1"]))
        return Request("POST", "/api/pull" + query, json.dumps(body).encode(), content_type)
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
) -> Running:
    caplog.set_level(logging.INFO, logger="mlx_serve")
    run = await fuzz_server(start_server)
    await asyncio.to_thread(fuzz(strategy, run, examples))
    await check_still_serving(run, caplog)
    return run


async def test_json_endpoints(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """Chat, completions, embeddings and speech: random JSON, valid bodies with wrong fields."""
    await fuzz_run(start_server, caplog, chunked_sometimes(json_requests()), 500)


async def test_raw_json_bodies(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """Invalid JSON, invalid UTF-8, lone surrogates, deep nesting, huge numbers, encodings."""
    await fuzz_run(start_server, caplog, chunked_sometimes(raw_requests()), 400)


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
    ],
)
async def test_found_bug(start_server: StartServer, req: Request) -> None:
    """Minimal reproducers of the bugs the fuzz found (a 500, a 502, a 502): each a 400 now."""
    run = await fuzz_server(start_server)
    reply = await raw_request(run, req)
    assert reply.status == 400, f"{reply.status}: {reply.body!r}"
    check_error_shape(reply, req)


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
    from mlx_serve.workers import embedding_server, stt_server, tts_server

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
    # The real one imports mlx_whisper's tokenizer (3 s) to check a language name.
    stt_server._language_code = lambda value: value  # type: ignore[assignment]

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
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_post("/v1/audio/translations", transcribe)
    print(f"fuzz fake worker pid {os.getpid()} for {args.model}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    _fake_model_server(sys.argv[1:])
