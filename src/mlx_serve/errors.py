"""OpenAI-shaped errors shared by the router and the worker servers: ``{"error": {...}}``.

Handlers raise :class:`ApiError`; the middleware renders it. Anything else that escapes a
handler is a bug in mlx-serve: it is logged with its traceback and the client gets a 500 with
a one-line message, never the traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

log = logging.getLogger("mlx_serve.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)

    def sse_event(self) -> bytes:
        """The same error as one server-sent event, for streams that already started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
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
        return ApiError(exc.status, message, code=code, headers=_keep_allow(exc)).response()
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return ApiError(
            500, "internal error in mlx-serve (see its log)", code="internal_error"
        ).response()


def _keep_allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
