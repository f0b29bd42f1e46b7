"""The router's client for its own workers: one HTTP/1.1 request per connection, read as it comes.

Why not aiohttp's client: every request pays its per-request work before the first token, and
``mlx_lm server`` speaks HTTP/1.0 and closes each connection, so nothing can be reused (the
next request's connection is opened ahead instead: :class:`Preopened`).
Measured on the 2-core box (``bench/results/hotpath.md``): aiohttp's client costs ~1.1 ms of
event-loop CPU per streamed request, this one ~0.5 ms; with 8 requests arriving at once that
work runs one request after another before anyone's first token. The scope is deliberately
small: the peers are our own workers on 127.0.0.1 (``mlx_lm``, ``mlx_vlm``'s uvicorn, our
aiohttp workers), the request is always a POST with a known body, and the answer is framed by
``Content-Length``, ``Transfer-Encoding: chunked`` or the connection's close.

The body is handed over from ``data_received`` to the reader without a task switch per piece,
and reading is paused while more than :data:`HIGH_WATER` bytes wait (a slow client must not
make the router buffer a whole audio file).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Callable
from typing import cast

#: Pause reading from the worker while this many body bytes wait for the router to take them.
HIGH_WATER = 256 * 1024
#: Header block larger than this is not from one of our workers.
MAX_HEAD = 64 * 1024


class UpstreamError(Exception):
    """The worker's connection failed; ``before_response`` says whether any byte had come back."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class UpstreamResponse(asyncio.Protocol):
    """One request's connection: parses the status line and headers, then frames the body."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_done: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False  # reading paused: more than HIGH_WATER bytes wait
        self._lowat = 1  # the socket's SO_RCVLOWAT: see gather()
        self._release: asyncio.TimerHandle | None = None  # gather()'s deadline
        self._eof = False
        self._error: UpstreamError | None = None
        self._got_bytes = False
        # Body framing: remaining Content-Length, chunked state, or None = until close.
        self._length: int | None = None
        self._chunked = False
        self._chunk_left = 0  # bytes of the current chunk still to come
        self._chunk_buf = b""  # a chunk-size line (or its CRLF) cut by a read boundary
        self._trailer = False
        #: Called once when the response is over (body ended, failed or closed).
        self.on_done: Callable[[], None] | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        """Response headers, names lower-cased (our workers send no repeated header we need)."""

    # -- the protocol side (called by the event loop) --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport: no isinstance).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if not self._head_done.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    self._fail("the worker's response header is too large")
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            if not self._parse_head(head):
                return
            self._head_done.set_result(None)
            if not data:
                if self._length == 0:
                    self._finish()
                return
        if self._chunked:
            self._dechunk(data)
        elif self._length is not None:
            take = data[: self._length]
            self._length -= len(take)
            self._push(take)
            if self._length == 0:
                self._finish()
        else:
            self._push(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the EOF means

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._eof or self._error is not None:
            self._wake()
            return
        if not self._head_done.done():
            self._fail(
                f"the worker closed the connection before answering ({exc or 'EOF'})",
                before=not self._got_bytes,
            )
        elif self._chunked or self._length is not None:
            self._fail(f"the worker's response ended early ({exc or 'connection closed'})")
        elif exc is not None:
            self._fail(f"the worker's connection broke ({exc})")
        else:
            self._finish()  # no framing: the close is the end of the body

    # -- the reader side ---------------------------------------------------------------------

    @property
    def fresh(self) -> bool:
        """Connected, and nothing sent or received on it yet: a request can go out on it."""
        return (
            self._transport is not None
            and not self._transport.is_closing()
            and not self._got_bytes
            and self._error is None
            and not self._eof
        )

    @property
    def paused(self) -> bool:
        """Reading from the worker is paused until the router takes what is buffered."""
        return self._paused

    @property
    def gathering(self) -> bool:
        """A :meth:`gather` is in force: its deadline has not passed, the body not ended."""
        return self._release is not None

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet taken."""
        return self._buffered

    async def head(self) -> None:
        """Wait for the status line and headers."""
        await self._head_done

    async def readany(self) -> bytes:
        """The body bytes that have arrived (waiting for some); ``b""`` at the body's end."""
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._pieces.popleft() if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()
        return data

    def gather(self, nbytes: int, within: float) -> None:
        """Have the kernel wake the router for this response only once ``nbytes`` wait or the
        worker closes its side, and ``within`` seconds from now at the latest.

        Why: each wake-up of the router costs CPU that, on a small machine, generation needs
        (see ``proxy._relay_stream``); this lets one wake-up carry several of a fast stream's
        events. It is the socket's low-water mark (``SO_RCVLOWAT``), which ``epoll`` and
        ``kqueue`` honour, so no timer fires while the stream keeps its pace, and unlike a
        paused read it gives way at once to the worker's close: the end of a stream (``mlx_lm``
        closes after each response) is never held back. The deadline lowers the mark back to
        one byte, and the kernel then reports at once whatever waits. Where the option cannot
        be set, nothing changes: every event is read as it comes. A mark in force within a
        quarter of ``nbytes`` is kept (event sizes vary a little: one setsockopt per stream).
        """
        if self._transport is None or self._eof or self._error is not None:
            return
        if self._release is not None:
            self._release.cancel()
            self._release = None
        keep = self._lowat > 1 and abs(nbytes - self._lowat) <= self._lowat / 4
        if not keep and not self._set_lowat(nbytes):
            return
        self._release = asyncio.get_running_loop().call_later(within, self._deadline)

    def _deadline(self) -> None:
        self._release = None
        if self._set_lowat(1) and self._transport is not None and not self._paused:
            # Linux reports the socket readable when its mark is lowered; re-registering it
            # with the selector makes any kernel (kqueue) look again.
            self._transport.pause_reading()
            self._transport.resume_reading()

    def _set_lowat(self, nbytes: int) -> bool:
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        if sock is None:
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, nbytes))
        except OSError:
            return False
        self._lowat = max(1, nbytes)
        return True

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection (a worker that is still generating notices and stops)."""
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if not self._eof and self._error is None:
            self._error = UpstreamError("closed by the router", before_response=False)
        self._wake()

    # -- internals -----------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            self._fail(f"the worker answered something that is not HTTP: {lines[0][:80]!r}")
            return False
        self.status = int(parts[1])
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif (length := self.headers.get("content-length", "")).isdigit():
            self._length = int(length)
        return True

    def _dechunk(self, data: bytes) -> None:
        out = []
        pos = 0
        if self._chunk_buf:
            data = self._chunk_buf + data
            self._chunk_buf = b""
        while pos < len(data):
            if self._chunk_left > 0:
                take = data[pos : pos + self._chunk_left]
                out.append(take)
                self._chunk_left -= len(take)
                pos += len(take)
                if self._chunk_left == 0:
                    self._chunk_left = -2  # the CRLF after the chunk's data
                continue
            if self._chunk_left == -2:
                if len(data) - pos < 2:
                    self._chunk_buf = data[pos:]
                    break
                pos += 2
                self._chunk_left = 0
                continue
            end = data.find(b"\r\n", pos)
            if end < 0:
                self._chunk_buf = data[pos:]
                if len(self._chunk_buf) > MAX_HEAD:
                    self._fail("the worker sent a malformed chunk")
                break
            line = data[pos:end]
            pos = end + 2
            if self._trailer:
                if not line:  # the blank line after the trailers ends the body
                    if out:
                        self._push(b"".join(out))
                    self._finish()
                    return
                continue
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._fail(f"the worker sent a malformed chunk size {line[:20]!r}")
                return
            if size == 0:
                self._trailer = True
            else:
                self._chunk_left = size
        if out:
            self._push(b"".join(out))

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._eof = True
        if self._transport is not None:
            self._transport.close()
        self._wake()

    def _fail(self, message: str, *, before: bool = False) -> None:
        self._error = UpstreamError(message, before_response=before)
        if not self._head_done.done():
            self._head_done.set_exception(self._error)
            self._head_done.exception()  # retrieved: no "never retrieved" warning if unused
        if self._transport is not None:
            self._transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._release is not None and (self._eof or self._error is not None):
            self._release.cancel()  # over: nothing left to gather
            self._release = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if (self._eof or self._error is not None) and self.on_done is not None:
            done, self.on_done = self.on_done, None
            done()


async def post(
    host: str,
    port: int,
    path: str,
    body: bytes,
    content_type: str,
    *,
    connect_timeout: float = 10.0,
    preopened: Preopened | None = None,
) -> UpstreamResponse:
    """POST ``body`` to ``http://host:port/path``; returns once the response headers are in.

    Raises :class:`UpstreamError` with ``before_response=True`` when the request surely never
    reached the worker's handler (refused, reset or closed before any byte came back), which is
    when a retry is safe.
    """
    ready = preopened.take(host, port) if preopened is not None else None
    if ready is not None:
        transport, protocol = ready
    else:
        try:
            async with asyncio.timeout(connect_timeout):
                transport, protocol = await asyncio.get_running_loop().create_connection(
                    UpstreamResponse, host, port
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                f"cannot connect to {host}:{port} ({exc or type(exc).__name__})",
                before_response=True,
            ) from exc
    if preopened is not None:
        # Once this response is over, open the next request's connection.
        protocol.on_done = lambda: preopened.open(host, port)
    transport.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
        + body
    )
    try:
        await protocol.head()
    except BaseException:
        protocol.close()
        raise
    return protocol


#: Idle connections held per worker address: as many as requests that may arrive together.
#: One is not enough: in a burst, the request that got it would reach ``mlx_lm`` a
#: handshake ahead of the rest, which then miss its batch and wait for the whole of it.
PREOPENED_PER_WORKER = 8


class Preopened:
    """Idle connections to each worker, opened when requests to it end, for the next ones.

    Why: ``mlx_lm server`` closes every connection (HTTP/1.0), so each request would start
    with a TCP handshake and the loop iterations around it before its body can go out, all
    on the first token's path. Opening the next connection while nothing is in flight takes
    that off. A connection the worker closed meanwhile is dropped (not ``fresh``) when it is
    taken; one that closes just as a request goes out fails before any response byte, which
    :func:`post`'s callers retry. Each response that ends opens one (up to
    :data:`PREOPENED_PER_WORKER` per address), so a worker gets as many as it served at once;
    none once :meth:`close` ran.
    """

    def __init__(self, per_worker: int = PREOPENED_PER_WORKER) -> None:
        self._per_worker = per_worker
        self._idle: dict[tuple[str, int], list[tuple[asyncio.Transport, UpstreamResponse]]] = {}
        self._opening: dict[tuple[str, int], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def take(self, host: str, port: int) -> tuple[asyncio.Transport, UpstreamResponse] | None:
        """An idle connection to ``host:port``, if one is open and unused."""
        held = self._idle.get((host, port))
        while held:
            transport, protocol = held.pop()
            if protocol.fresh:
                return transport, protocol
            transport.abort()
        return None

    def opened(self, host: str, port: int) -> bool:
        """An idle connection to ``host:port`` is held (usable or not)."""
        return bool(self._idle.get((host, port)))

    def ready(self, host: str, port: int) -> bool:
        """An idle connection to ``host:port`` is held and still usable."""
        return any(protocol.fresh for _, protocol in self._idle.get((host, port), ()))

    def open(self, host: str, port: int) -> None:
        """Open one more connection to ``host:port`` in the background, unless enough are."""
        key = (host, port)
        for other, held in list(self._idle.items()):
            for pair in [pair for pair in held if not pair[1].fresh]:
                pair[0].abort()  # its worker closed it (stopped, or swapped out)
                held.remove(pair)
            if not held:
                del self._idle[other]
        count = len(self._idle.get(key, ())) + self._opening.get(key, 0)
        if self._closed or count >= self._per_worker:
            return
        self._opening[key] = self._opening.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._open(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, key: tuple[str, int]) -> None:
        try:
            transport, protocol = await asyncio.get_running_loop().create_connection(
                UpstreamResponse, *key
            )
        except OSError:
            return  # the worker is gone: the next request connects (and fails) on its own
        finally:
            self._opening[key] -= 1
            if not self._opening[key]:
                del self._opening[key]
        if self._closed:
            transport.abort()
        else:
            self._idle.setdefault(key, []).append((transport, protocol))

    async def close(self) -> None:
        """Drop every idle connection and stop opening new ones (the router is stopping)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for held in self._idle.values():
            for transport, _ in held:
                transport.abort()
        self._idle.clear()
