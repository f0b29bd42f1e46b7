"""Errors shared by the router and the worker servers, in the shape of the client's dialect.

Handlers raise :class:`ApiError`; the middleware renders it in the shape the route's clients
parse: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` by default, Anthropic's
``{"type": "error", "error": {"type", "message"}}`` under ``/v1/messages``, Ollama's
``{"error": "message"}`` on Ollama's routes. Anything else that escapes a handler is a bug in
mlx-serve: it is logged with its traceback and the client gets a 500 with a one-line message,
never the traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from aiohttp import web

log = logging.getLogger("mlx_serve.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dialect(StrEnum):
    """The API family a route belongs to, which decides the shape of its errors."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


#: Ollama's own routes (``/api/pull`` is shared: our pull already speaks Ollama's NDJSON).
OLLAMA_PATHS = frozenset({
    "/api/tags", "/api/ps", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
    "/api/show", "/api/delete", "/api/version", "/api/pull", "/api/copy", "/api/create",
    "/api/push",
})  # fmt: skip


def dialect_of(path: str) -> Dialect:
    """Which error shape the clients of ``path`` understand."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return Dialect.ANTHROPIC
    if path in OLLAMA_PATHS:
        return Dialect.OLLAMA
    return Dialect.OPENAI


#: Anthropic's error ``type`` for each status (its documented list).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    503: "overloaded_error", 529: "overloaded_error",
}  # fmt: skip


class ApiError(Exception):
    """An error to send to the client as OpenAI-shaped JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        #: The configured model the request was for, when it was known before the error (a
        #: 400 for a model's own limits): the request is counted under it. Never sent.
        self.model = model

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        kind = _ANTHROPIC_TYPES.get(self.status)
        if kind is None:
            kind = "invalid_request_error" if self.status < 500 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def body_for(self, dialect: Dialect) -> dict[str, Any]:
        if dialect is Dialect.ANTHROPIC:
            return self.anthropic_body()
        if dialect is Dialect.OLLAMA:
            # Ollama's clients read "error"; our code rides along for everything else.
            return {"error": self.message, "code": self.code}
        return self.body()

    def response(self, dialect: Dialect = Dialect.OPENAI) -> web.Response:
        return web.json_response(self.body_for(dialect), status=self.status, headers=self.headers)

    def sse_event(self) -> bytes:
        """The same error as one server-sent event, for streams that already started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def outcome_code(status: int, code: str | None = None) -> str:
    """The label a request's outcome is counted under: its error code, else the status's
    name (``not_implemented`` for a bare 501), ``ok`` below 400."""
    if code:
        return code
    if status < 400:
        return "ok"
    if status == 499:
        return "client_closed"
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


#: The error a request was answered with, for the router's outcome counting (see
#: :func:`error_middleware`).
API_ERROR = web.RequestKey("mlx_serve_api_error", ApiError)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render what a handler raised in the route's dialect; the error is also left on the
    request (``request[API_ERROR]``) for a middleware further out that counts outcomes."""
    try:
        return await handler(request)
    except ApiError as exc:
        request[API_ERROR] = exc
        return exc.response(dialect_of(request.path))
    except web.HTTPException as exc:
        # aiohttp's own 404/405/413 for unknown routes and methods: same JSON shape.
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status
        )
        message = exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        error = ApiError(exc.status, message, code=code, headers=_keep_allow(exc))
        request[API_ERROR] = error
        return error.response(dialect_of(request.path))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        error = ApiError(500, "internal error in mlx-serve (see its log)", code="internal_error")
        request[API_ERROR] = error
        return error.response(dialect_of(request.path))


def _keep_allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
