"""Calling a model from inside the router, for the dialects that translate (Anthropic Messages,
OpenAI Responses, Ollama).

The OpenAI routes relay the worker's bytes untouched (:func:`mlx_serve.router.proxy.forward`).
A dialect cannot: it must read the worker's OpenAI answer and write its own. This module is the
one place that does the part every dialect shares, so each of them gets the same guarantees as
the OpenAI routes: the swap scheduler and ``keep_alive`` (through the supervisor's lease),
retries before the first byte, the worker's errors mapped to 4xx/502, a ``request`` event with
TTFT, tokens and status for the metrics, and the worker's connection dropped (which stops its
generation) when the client goes away.

Usage::

    prepared = prepare(supervisor, openai_body, "/v1/chat/completions")
    async with call_model(request, prepared) as reply:
        async for chunk in reply.events():  # or: data = await reply.json()
            ...
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from mlx_serve.errors import ApiError
from mlx_serve.router.keys import UPSTREAMS
from mlx_serve.router.prepare import Prepared, traced_lease
from mlx_serve.router.proxy import (
    Trace,
    Upstream,
    died,
    open_upstream,
    pace,
    read_usage,
    upstream_error,
)
from mlx_serve.router.upstream import UpstreamError, UpstreamResponse
from mlx_serve.supervisor import Lease


class Reply:
    """The worker's answer to one call: read it whole (:meth:`json`) or as events."""

    def __init__(
        self, response: UpstreamResponse, lease: Lease, trace: Trace, requested: str
    ) -> None:
        self._response = response
        self._lease = lease
        self._trace = trace
        self._requested = requested

    @property
    def trace(self) -> Trace:
        """The request's timings; a dialect may record its own error in it."""
        return self._trace

    async def json(self) -> dict[str, Any]:
        """The whole JSON answer, its ``model`` set to the name the client used."""
        try:
            raw = await self._response.read()
        except UpstreamError as exc:
            raise self._failed(exc) from exc
        self._trace.ttft_s = time.perf_counter() - self._trace.started
        read_usage(raw, self._trace)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise self._failed(exc) from exc
        if not isinstance(data, dict):
            raise self._failed(ValueError("the worker's answer is not a JSON object"))
        if "model" in data:
            data["model"] = self._requested
        return data

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The streamed chunks (each SSE ``data:`` object), until ``[DONE]``.

        Raises a 502 :class:`ApiError` (``worker_died``) when the stream breaks or ends without
        ``[DONE]``; by then the dialect has sent its headers and reports it in its own way.
        """
        trace = self._trace
        buffer = b""
        received = 0  # body bytes, for the pace of the reads (proxy.pace)
        while True:
            if received:
                # The events of the last read were all yielded, so the dialect has written
                # them: a fast stream's next ones may gather first, as on the OpenAI routes.
                pace(self._response, trace, received)
            try:
                chunk = await self._response.readany()
            except UpstreamError as exc:
                raise self._failed(exc) from exc
            if not chunk:
                raise self._failed(
                    UpstreamError("the stream ended without [DONE]", before_response=False)
                )
            received += len(chunk)
            buffer += chunk
            *whole, buffer = buffer.split(b"\n\n")
            for event in whole:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue  # comments (": keepalive") and other fields
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        item = json.loads(data)
                    except ValueError:
                        continue
                    if not isinstance(item, dict):
                        continue
                    if trace.ttft_s is None:
                        trace.ttft_s = time.perf_counter() - trace.started
                    trace.chunks += 1
                    if isinstance(item.get("usage"), dict):
                        read_usage(data, trace)
                    if isinstance(item.get("error"), dict | str):
                        raise self._worker_error(item)
                    if "model" in item:
                        item["model"] = self._requested
                    yield item

    def _failed(self, exc: BaseException) -> ApiError:
        error = died(self._lease, self._trace, exc)
        self._trace.fail(error)
        return error

    def _worker_error(self, item: dict[str, Any]) -> ApiError:
        error = upstream_error(500, json.dumps(item).encode(), self._trace.model)
        self._trace.fail(error)
        return error


@contextlib.asynccontextmanager
async def call_model(request: web.Request, prepared: Prepared) -> AsyncIterator[Reply]:
    """Lease ``prepared``'s model (waiting for a swap if needed), send it the request and
    hold the worker until the block ends. Lifecycle failures and the worker's own errors
    raise :class:`ApiError` before the block runs; the request event is emitted at the end,
    under the path the client called (so each dialect shows up in the metrics)."""
    trace = Trace(
        model=prepared.requested, endpoint=request.path, stream=bool(prepared.body.get("stream"))
    )
    async with traced_lease(request, prepared.name, prepared.keep_alive, trace) as lease:
        upstream = Upstream(prepared.endpoint, prepared.payload(lease.upstream_model))
        response = await open_upstream(lease, upstream, trace, request.app.get(UPSTREAMS))
        try:
            if response.status >= 400:
                try:
                    body = await response.read()
                except UpstreamError as exc:
                    raise died(lease, trace, exc) from exc
                raise upstream_error(response.status, body, trace.model)
            trace.status = response.status
            yield Reply(response, lease, trace, prepared.requested)
        finally:
            response.close()
