"""Forwarding one request to a worker: retries before the first byte, SSE relayed as it comes.

Invariants:
- A request whose upstream connection failed before any response byte is retried (mlx_lm's
  server drops connections under a burst); once a byte came back, it never is.
- A stream is relayed event by event, never buffered whole (a fast one is read in steps of a
  few milliseconds, never its first token); the model name the worker reports (its path) is
  replaced by the name the client asked for.
- A stream that breaks after it started ends with an SSE ``error`` event, not a silent cut.
- If the client goes away, the handler is cancelled and the upstream response is closed, which
  makes the worker stop generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from mlx_serve.errors import ApiError, outcome_code
from mlx_serve.router import upstream as worker_http
from mlx_serve.router.keys import UPSTREAMS
from mlx_serve.router.upstream import Preopened, UpstreamError, UpstreamResponse
from mlx_serve.supervisor.events import RequestFinished

if TYPE_CHECKING:
    from mlx_serve.supervisor import Lease

#: Attempts to reach a worker before giving up with 502 (only before any byte came back).
CONNECT_ATTEMPTS = 5
RETRY_BACKOFF = 0.05
#: A token of a fast stream waits at most this long in the router's socket before it is
#: relayed (see _relay_stream); a stream slower than two tokens per PACE_MAX_S is relayed
#: token by token.
PACE_MAX_S = 0.02
#: One wake-up of the router relays at most this many tokens of a fast stream.
PACE_TOKENS = 16
#: Tokens relayed one by one first, to learn the stream's pace and event size.
PACE_AFTER = 3
#: After [DONE] (the client's stream is already complete), how long the worker may take to
#: close its side before the connection is dropped.
DRAIN_AFTER_DONE = 5.0


#: Set on a request whose outcome a :class:`Trace` reports (its ``request`` event), so the
#: router's outcome middleware does not count it a second time.
TRACED = web.RequestKey("mlx_serve_traced", bool)

#: What a failure the relay records without an :class:`ApiError` (mid-stream, mid-body) is
#: counted as.
_RELAY_CODES = {502: "worker_died"}


@dataclass
class Trace:
    """Timings of one proxied request, reported as a ``request`` event when it ends.

    Three moments: ``arrived`` (the request was checked and asked for a worker), ``started``
    (the worker was ready and the request admitted to it: :meth:`admit`; until then the
    arrival) and the first token/byte (``ttft_s`` after ``started``). The wait before
    admission is reported in two parts: ``load_s``, waiting for the model itself (a cold
    start, a swap, a restart), and ``queued_s``, waiting behind other requests. So a cold
    start shows up as load time, not as a slow first token or a low token rate.
    """

    model: str
    endpoint: str
    stream: bool
    arrived: float = field(default_factory=time.perf_counter)
    started: float = field(init=False)
    queued_s: float = 0.0
    load_s: float = 0.0
    ttft_s: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    status: int = 0
    code: str | None = None
    retries: int = 0
    chunks: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.started = self.arrived

    def admit(self, *, load_s: float = 0.0) -> None:
        """The request was admitted to a ready worker now; ``load_s`` of its wait was for
        the model to become ready (see :func:`load_wait`), the rest was queueing."""
        now = time.perf_counter()
        waited = max(0.0, now - self.arrived)
        self.load_s = min(max(0.0, load_s), waited)
        self.queued_s = waited - self.load_s
        self.started = now

    def fail(self, error: ApiError) -> None:
        self.status, self.code, self.error = error.status, error.code, error.message

    def event(self, model: str) -> RequestFinished:
        """The ``request`` event of this request, for configured model ``model``."""
        return RequestFinished(model=model, **self.summary())

    def summary(self) -> dict[str, Any]:
        now = time.perf_counter()
        # A usage block wins; without one, each streamed chunk is about one token.
        tokens = (
            self.completion_tokens if self.completion_tokens is not None else self.chunks or None
        )
        tps = None
        if tokens and self.ttft_s is not None:
            if self.stream:
                # Decode speed: the tokens after the first, over the time from the first to
                # the last.
                generating = now - self.started - self.ttft_s
                if tokens > 1 and generating > 0:
                    tps = (tokens - 1) / generating
            elif self.ttft_s > 0:
                # Not streamed: the first byte is the whole answer, so the rate is over the
                # worker's time (prompt included), from admission to the answer.
                tps = tokens / self.ttft_s
        code = None
        if self.status >= 400:
            code = outcome_code(self.status, self.code or _RELAY_CODES.get(self.status))
        return {
            "endpoint": self.endpoint,
            "stream": self.stream,
            "status": self.status,
            "code": code,
            "queued_s": round(self.queued_s, 4),
            "load_s": round(self.load_s, 4),
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 4),
            "latency_s": round(now - self.arrived, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": tokens,
            "tokens_per_s": None if tps is None else round(tps, 2),
            "retries": self.retries,
            "error": self.error,
        }


def load_wait(lease: Lease, asked_at: float) -> float:
    """How much of a request's wait for ``lease`` (since ``asked_at``, on the supervisor's
    clock) went to its model becoming ready: a cold start, a swap, a restart after a crash.
    Zero when the worker was ready already when the request asked for it."""
    return max(0.0, lease.ready_since - asked_at)


class _ModelRenamer:
    """Replaces the worker's model id with the client's in JSON text, byte-wise and cheaply."""

    def __init__(self, upstream: str, client: str) -> None:
        self._old = json.dumps(upstream).encode()
        self._new = json.dumps(client).encode()

    def __call__(self, data: bytes) -> bytes:
        return data.replace(self._old, self._new) if self._old != self._new else data


async def open_upstream(
    lease: Lease, upstream: Upstream, trace: Trace, preopened: Preopened | None = None
) -> UpstreamResponse:
    last: Exception | None = None
    where = urlsplit(lease.base_url)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    for attempt in range(CONNECT_ATTEMPTS):
        if attempt:
            trace.retries += 1
            await asyncio.sleep(RETRY_BACKOFF * 2 ** (attempt - 1))
        if not lease.alive:
            break
        try:
            return await worker_http.post(
                host,
                port,
                upstream.path,
                upstream.payload,
                upstream.content_type,
                preopened=preopened,
            )
        except UpstreamError as exc:
            if not exc.before_response:
                raise ApiError(
                    502,
                    f"model {trace.model!r}: the worker failed before answering ({exc})",
                    code="worker_died",
                ) from exc
            # No response byte came back: the request never started on the worker.
            last = exc
    reason = lease.why_gone or (str(last) if last else "connection failed")
    raise ApiError(
        502,
        f"model {trace.model!r}: the worker could not be reached ({reason})",
        code="worker_unreachable",
    )


def upstream_error(status: int, body: bytes, model: str) -> ApiError:
    """A worker's own error, in OpenAI shape; its 4xx stay 4xx, its 5xx become 502.

    A 404 is the exception: the router always names the worker's own model, so a 404 means
    the worker is broken (mlx_lm answers "generation thread died" that way), not the client.
    """
    message = body.decode("utf-8", errors="replace").strip()[:2000]
    code: str | None = None
    try:
        data = json.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message", message))
            code = err.get("code") if isinstance(err.get("code"), str) else None
        elif isinstance(err, str):
            message = err
    except ValueError:
        pass
    if 400 <= status < 500 and status != 404:
        return ApiError(status, message or f"the worker rejected the request ({status})", code=code)
    return ApiError(
        502,
        f"model {model!r}: the worker failed ({status}): {message}",
        code=code or "worker_error",
    )


@dataclass(frozen=True)
class Upstream:
    """What to send to the worker: a path, the body bytes and their content type."""

    path: str
    payload: bytes
    content_type: str = "application/json"


async def forward(
    request: web.Request,
    *,
    lease: Lease,
    upstream: Upstream,
    trace: Trace,
) -> web.StreamResponse:
    """Send ``upstream`` to the worker behind ``lease`` and relay its answer to ``request``.

    JSON answers get the client's model name back; SSE streams are relayed event by event;
    anything else (audio, subtitles, plain text) is passed through chunk by chunk untouched.
    """
    rename = _ModelRenamer(lease.upstream_model, trace.model)
    response = await open_upstream(lease, upstream, trace, request.app.get(UPSTREAMS))
    try:
        if response.status >= 400:
            try:
                body = await response.read()
            except UpstreamError as exc:
                raise died(lease, trace, exc) from exc
            raise upstream_error(response.status, body, trace.model)
        content_type = response.headers.get("content-type", "")
        if trace.stream and "text/event-stream" in content_type:
            return await _relay_stream(request, response, lease, rename, trace)
        if content_type.startswith("application/json"):
            try:
                data = await response.read()
            except UpstreamError as exc:
                raise died(lease, trace, exc) from exc
            trace.ttft_s = time.perf_counter() - trace.started
            read_usage(data, trace)
            trace.status = response.status
            return web.Response(
                body=rename(data), status=response.status, content_type="application/json"
            )
        return await _relay_body(request, response, lease, trace)
    finally:
        # Closing (not releasing) an unfinished response drops the connection, which is how
        # the worker learns that nobody is listening any more.
        response.close()


def died(lease: Lease, trace: Trace, exc: BaseException) -> ApiError:
    return ApiError(
        502,
        f"model {trace.model!r}: the worker failed mid-request ({_why(lease, exc)})",
        code="worker_died",
    )


async def _relay_body(
    request: web.Request, response: UpstreamResponse, lease: Lease, trace: Trace
) -> web.StreamResponse:
    """Pass a non-JSON body (audio, text) through as it arrives."""
    headers = {
        name: response.headers[name.lower()]
        for name in ("Content-Type", "Content-Disposition", "Content-Length")
        if name.lower() in response.headers
    }
    try:
        first = await response.readany()
    except UpstreamError as exc:
        raise died(lease, trace, exc) from exc
    trace.ttft_s = time.perf_counter() - trace.started
    resp = web.StreamResponse(status=response.status, headers=headers)
    await resp.prepare(request)
    trace.status = response.status
    try:
        chunk = first
        while chunk:
            await resp.write(chunk)
            chunk = await response.readany()
    except UpstreamError as exc:
        # Mid-body there is no way to signal an error in audio bytes: drop the connection so
        # the client sees a truncated response instead of a short but "complete" one.
        trace.status, trace.error = 502, f"the worker failed mid-body ({exc})"
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


async def _relay_stream(
    request: web.Request,
    upstream: UpstreamResponse,
    lease: Lease,
    rename: _ModelRenamer,
    trace: Trace,
) -> web.StreamResponse:
    resp = _HeadersWithFirstChunk(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    await resp.prepare(request)
    trace.status = 200
    # The hot path: one read and one write per wake-up. Events are forwarded as soon as they
    # are whole (the rename must not straddle a read boundary); token counting and the
    # [DONE] check are byte searches, never a JSON parse (only a chunk carrying "usage" is
    # parsed, once per stream). The headers leave with the first event and the chunked
    # terminator with [DONE], one send() less at each end.
    # A fast stream is read in steps: after a write, the kernel is asked to wake the router
    # for this worker's socket only once about as many tokens wait as the stream makes in
    # PACE_MAX_S (at most PACE_TOKENS), or the worker closes, or PACE_MAX_S has passed
    # (UpstreamResponse.gather: the socket's low-water mark). On a small machine the router's
    # CPU per wake-up (a recv(), a send() that wakes the client, the loop around them) is
    # taken from generation: a tiny model's ~1,000 tokens/s reached the client at
    # x0.91-0.95 of direct when relayed token by token (a plain aiohttp relay measured the
    # same), x0.95-1.01 in steps of 10 ms / 8 tokens, paired x0.99-1.01 in steps of 20 ms /
    # 16 tokens where 10 ms / 8 measured x0.96-0.99 in the same four runs, with 0.030-0.041
    # s of router CPU per 1000 tokens (bench/README.md). 20 ms is a screen refresh or two:
    # no reader sees the steps. The first tokens are never held, nor the end of a stream
    # (the worker's close or its last events wake the router), and a stream slower than two
    # tokens per PACE_MAX_S (a 7B model on a laptop) is never paced: there a step would
    # only delay. Tried before and dropped: writing several events at once after a timer
    # (it saved sends, not wake-ups) and pausing reads for a few token intervals (the pause
    # also held back each stream's end, 2-3 ms of 120).
    buffer = b""  # the start of an event not yet whole
    read = upstream.readany
    received = 0  # body bytes: their mean per token sizes a step
    try:
        while chunk := await read():
            received += len(chunk)
            if buffer:
                chunk = buffer + chunk
                buffer = b""
            if not chunk.endswith(b"\n\n"):
                cut = chunk.rfind(b"\n\n")
                if cut < 0:
                    buffer = chunk
                    continue
                chunk, buffer = chunk[: cut + 2], chunk[cut + 2 :]
            if trace.ttft_s is None and b"data:" in chunk:  # not mlx_lm's ": keepalive"
                trace.ttft_s = time.perf_counter() - trace.started
            _count_stream_tokens(chunk, trace)
            if _ends_stream(chunk):
                await _to_client(resp, rename(chunk), last=True)
                with contextlib.suppress(UpstreamError, TimeoutError):
                    async with asyncio.timeout(DRAIN_AFTER_DONE):
                        await upstream.read()  # let the worker finish and close its side
                return resp
            await _to_client(resp, rename(chunk))
            pace(upstream, trace, received)
        if buffer:
            _count_stream_tokens(buffer, trace)
            if _ends_stream(buffer):
                await _to_client(resp, rename(buffer), last=True)
                return resp
            await _to_client(resp, rename(buffer))
        raise UpstreamError("the stream ended without [DONE]", before_response=False)
    except _ClientGone:
        # The client left: nothing more to write. The caller closes the upstream response,
        # which stops the worker's generation.
        trace.status, trace.error = 499, "client closed the request"
        return resp
    except UpstreamError as exc:
        error = ApiError(
            502,
            f"model {trace.model!r}: the worker failed mid-stream ({_why(lease, exc)})",
            code="worker_died",
        )
        trace.error = error.message
        trace.status = 502
        try:
            await _to_client(resp, error.sse_event())
        except _ClientGone:
            return resp
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


def pace(upstream: UpstreamResponse, trace: Trace, received: int) -> None:
    """After a stream's events were written to the client: let the next ones gather in the
    kernel if the stream is fast (see ``_relay_stream``). ``received`` is the body's bytes so
    far.

    Shared with the dialects' reader (``router.calls``), so a stream translated to Anthropic,
    Responses or Ollama events costs the router as few wake-ups as one relayed as it is.
    """
    if trace.ttft_s is None or trace.chunks < PACE_AFTER:
        return
    # Tokens so far over the time since the first: the stream's mean interval.
    gap = (time.perf_counter() - trace.started - trace.ttft_s) / (trace.chunks - 1)
    tokens = min(PACE_TOKENS, PACE_MAX_S / gap) if gap > 0 else PACE_TOKENS
    if tokens < 2:
        return
    # Wake at the last of those tokens (event sizes vary a little).
    upstream.gather(int(received / trace.chunks * (int(tokens) - 0.5)), PACE_MAX_S)


class _ClientGone(Exception):
    """Writing to the client failed: it disconnected (not the worker's fault)."""


async def _to_client(resp: web.StreamResponse, data: bytes, *, last: bool = False) -> None:
    try:
        if last:
            await resp.write_eof(data)
        else:
            await resp.write(data)
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one too
        raise _ClientGone from exc


class _HeadersWithFirstChunk(web.StreamResponse):
    """A stream whose headers are sent with its first body bytes, in one send(), as
    ``web.Response`` does, instead of on their own at ``prepare()``."""

    _send_headers_immediately = False


def _ends_stream(events: bytes) -> bool:
    """The ``data: [DONE]`` sentinel line, not any text that happens to contain [DONE] (a
    JSON string cannot hold a raw newline, so a line that starts so is the sentinel)."""
    return events.startswith(b"data: [DONE]") or b"\ndata: [DONE]" in events


def _count_stream_tokens(events: bytes, trace: Trace) -> None:
    """Count streamed chunks (about one token each); a usage block, when sent, wins."""
    trace.chunks += events.startswith(b"data: {") + events.count(b"\ndata: {")
    if b'"usage"' in events:
        for line in events.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage"' in line:
                read_usage(line[6:], trace)


def read_usage(data: bytes, trace: Trace) -> None:
    try:
        usage = json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            trace.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            trace.prompt_tokens = usage["prompt_tokens"]


def _why(lease: Lease, exc: BaseException) -> str:
    return lease.why_gone or str(exc) or type(exc).__name__
