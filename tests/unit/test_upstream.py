"""The router's worker client frames every body our workers send, however the bytes are cut.

A scripted asyncio server stands in for the worker so each framing (``Content-Length``,
chunked, until-close) and each way of failing can be sent byte by byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mlx_serve.router import upstream
from mlx_serve.router.upstream import UpstreamError
from tests.conftest import eventually

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(script: Script) -> AsyncIterator[int]:
    """A server running ``script`` per connection; on exit, every connection is closed."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await script(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def body_of(port: int) -> tuple[int, dict[str, str], bytes]:
    response = await upstream.post("127.0.0.1", port, "/x", b'{"a": 1}', "application/json")
    try:
        return response.status, response.headers, await response.read()
    finally:
        response.close()


CHUNKED = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
async def test_chunked_body_cut_anywhere(size: int) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for piece in pieces(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED, size
        ):
            writer.write(piece)
            await writer.drain()
        await reader.read()  # the client closes once the body is complete
        writer.close()

    async with serving(script) as port:
        status, headers, body = await body_of(port)
    assert (status, body) == (200, b"hello, world")
    assert headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("size", [1, 5, 1000])
async def test_content_length_body_and_until_close_body(size: int) -> None:
    async def with_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request.startswith(b"POST /x HTTP/1.1\r\n") and request.endswith(b'{"a": 1}')
        for piece in pieces(b"HTTP/1.1 404 Nope\r\nContent-Length: 9\r\n\r\nnot found", size):
            writer.write(piece)
            await writer.drain()
        await reader.read()
        writer.close()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # mlx_lm's way: HTTP/1.0, no length, close = the end
        for piece in pieces(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", size):
            writer.write(piece)
        writer.write(b"data: 1\n\ndata: [DONE]\n\n")
        await writer.drain()
        writer.close()

    for script, expected in ((with_length, (404, b"not found")), (until_close, (200, None))):
        async with serving(script) as port:
            status, _, body = await body_of(port)
        assert status == expected[0]
        assert body == (expected[1] or b"data: 1\n\ndata: [DONE]\n\n")


async def read_request_only(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def test_refused_and_closed_before_answering_are_safe_to_retry() -> None:
    async with serving(read_request_only) as port:
        pass  # closed: nothing listens on the port any more
    with pytest.raises(UpstreamError) as refused:
        await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")
    assert refused.value.before_response

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with serving(hang_up) as port:
        with pytest.raises(UpstreamError) as closed:
            await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")
    assert closed.value.before_response


async def test_a_body_cut_short_is_an_error_not_a_short_answer() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async def cut_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        await writer.drain()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-nope\r\n\r\n")
        await writer.drain()
        writer.close()

    for script in (cut, cut_chunked):
        async with serving(script) as port:
            response = await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")
            with pytest.raises(UpstreamError) as exc:
                await response.read()
        assert not exc.value.before_response
    async with serving(garbage) as port:
        with pytest.raises(UpstreamError, match="not HTTP"):
            await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")


#: A body far larger than what the client buffers before it stops reading.
FLOOD_BYTES = 64 * upstream.HIGH_WATER


async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer with FLOOD_BYTES of body as fast as the client takes them."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % FLOOD_BYTES)
    for _ in range(FLOOD_BYTES // 65536):
        writer.write(b"x" * 65536)
        await writer.drain()
    await reader.read()


async def test_a_slow_reader_pauses_the_worker_instead_of_buffering_everything() -> None:
    total = FLOOD_BYTES
    async with serving(flood) as port:
        response = await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")
        # Nobody reads: the client stops reading from the socket once HIGH_WATER bytes wait.
        await eventually(lambda: response.paused, what="reading paused")
        assert response.buffered < upstream.HIGH_WATER + 1024 * 1024
        assert len(await response.read()) == total
        response.close()


async def test_the_next_request_goes_out_on_a_connection_opened_when_the_last_ended() -> None:
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError):
            await read_request(reader)
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nok")  # HTTP/1.0: the close ends the body

    async with serving(answer) as port:
        pool = upstream.Preopened()
        try:
            for n in range(1, 4):
                response = await upstream.post(
                    "127.0.0.1", port, "/x", b"{}", "application/json", preopened=pool
                )
                assert await response.read() == b"ok"
                response.close()
                # Once the response is over, the next request's connection is opened.
                await eventually(lambda: pool.ready("127.0.0.1", port), what="an idle connection")
                assert connections == n + 1
        finally:
            await pool.close()
        assert not pool.ready("127.0.0.1", port)


async def test_an_idle_connection_the_worker_closed_is_not_used() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # like a worker that stops, or times out idle connections

    async with serving(hang_up) as port:
        pool = upstream.Preopened()
        try:
            pool.open("127.0.0.1", port)
            await eventually(lambda: pool.opened("127.0.0.1", port), what="the connection")
            await eventually(lambda: not pool.ready("127.0.0.1", port), what="the worker's close")
            assert pool.take("127.0.0.1", port) is None
        finally:
            await pool.close()


async def test_a_gathering_response_wakes_for_enough_bytes_its_deadline_or_the_close() -> None:
    parts = [b"efg", b"hijklmn", b"opq", b"rs"]
    go = [asyncio.Event() for _ in parts]
    written = [asyncio.Event() for _ in parts]

    async def in_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nabcd")  # HTTP/1.0: the close ends the body
        for part, wait, done in zip(parts, go, written, strict=True):
            await wait.wait()
            writer.write(part)
            await writer.drain()
            done.set()
        # returning closes the connection

    async def unread(step: int) -> None:
        """On loopback the bytes are in this side's socket once the server's drain is done:
        a socket the kernel reported would be read within an iteration or two."""
        go[step].set()
        await written[step].wait()
        for _ in range(5):
            await asyncio.sleep(0)
        assert response.buffered == 0

    async with serving(in_parts) as port:
        response = await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")
        try:
            async with asyncio.timeout(30):
                assert await response.readany() == b"abcd"
                # Fewer bytes than asked for wait in the kernel; enough wake the reader.
                response.gather(10, 3600)
                assert response.gathering
                await unread(0)
                go[1].set()
                assert await response.readany() == b"efghijklmn"
                # The deadline gives the reader what waits, however little.
                response.gather(100, 0.05)
                await unread(2)
                assert await response.readany() == b"opq"
                assert not response.gathering
                # The worker's close wakes the reader at once, long before the deadline.
                response.gather(100, 3600)
                go[3].set()
                assert await response.read() == b"rs"
        finally:
            response.close()
        # Gathering on a finished response does nothing.
        response.gather(100, 3600)
        assert not response.gathering


async def test_a_mark_within_a_quarter_of_the_asked_one_is_kept() -> None:
    """A fast stream asks for a step after every write; event sizes vary a little, and the
    socket's mark changes only when the step does (one setsockopt per stream, not per read)."""

    async def headers_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nab")
        await writer.drain()
        await reader.read()  # until the router closes

    async with serving(headers_then_wait) as port:
        response = await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")
        try:
            assert await response.readany() == b"ab"
            sock = response._transport.get_extra_info("socket")  # type: ignore[union-attr]

            def mark() -> int:
                return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))

            response.gather(1000, 3600)
            assert mark() == 1000
            response.gather(1200, 3600)  # within a quarter: kept
            assert mark() == 1000
            response.gather(1300, 3600)  # beyond it: changed
            assert mark() == 1300
            response.gather(1300, 0.001)
            await eventually(lambda: not response.gathering, what="the deadline")
            assert mark() == 1
            response.gather(1300, 3600)  # after a deadline, set again
            assert mark() == 1300
        finally:
            response.close()


async def test_a_gather_deadline_does_not_resume_a_response_paused_for_its_buffer() -> None:
    total = FLOOD_BYTES
    async with serving(flood) as port:
        response = await upstream.post("127.0.0.1", port, "/x", b"{}", "application/json")
        try:
            await eventually(lambda: response.paused, what="reading paused")
            response.gather(1024, 0.001)
            await eventually(lambda: not response.gathering, what="the deadline")
            for _ in range(5):  # a resumed transport would read within an iteration or two
                await asyncio.sleep(0)
            # Still too much waiting: reading stays paused until the router takes it.
            assert response.paused and response.buffered <= upstream.HIGH_WATER + 1024 * 1024
            assert len(await response.read()) == total
        finally:
            response.close()
