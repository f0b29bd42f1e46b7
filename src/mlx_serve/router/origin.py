"""Browser-origin protection: a local server is reachable from every web page its user opens.

Three checks, before authentication, on every request:

1. **Host** (DNS rebinding). A page on ``evil.example`` whose name is re-pointed at 127.0.0.1
   talks to this server as if it were its own origin, so its requests carry
   ``Host: evil.example:8095``. Only these names are accepted: IP literals (rebinding needs a
   DNS name), ``localhost`` and ``*.localhost``, this machine's hostname (and ``.local``), the
   configured ``server.host``, and ``server.allowed_hosts`` (``"*"`` turns the check off, for
   a server behind a proxy that rewrites Host). Requests without a Host (HTTP/1.0 tools) pass.
2. **Origin** (cross-site requests). Browsers send ``Origin`` on every cross-origin request and
   on same-origin POSTs. Accepted: the server's own origin (the dashboard), localhost origins
   on any port (local web UIs such as Open WebUI), and ``server.allowed_origins`` (``"*"``:
   any). Anything else gets a 403, and CORS headers are only ever sent to accepted origins, so
   a foreign page can neither change anything nor read an answer. Clients that are not
   browsers (curl, SDKs, LiteLLM) send no Origin and are not affected.
3. **Content type** on the management API: ``POST``/``DELETE`` under ``/api/`` must be
   ``application/json``. A browser can only send a cross-origin request without a preflight
   with a form or text body, so even a misconfigured origin list cannot make a page load,
   unload, pull or delete models with a "simple" request.

This is what Ollama does after its DNS-rebinding reports (its host allow-list and
``OLLAMA_ORIGINS``), plus the content-type rule.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp import web

from mlx_serve.errors import ApiError, Handler
from mlx_serve.router.keys import SUPERVISOR

__all__ = ["add_cors_headers", "origin_middleware"]

_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CORS_HEADERS = (
    "Authorization, Content-Type, X-Api-Key, OpenAI-Organization, OpenAI-Project, "
    "anthropic-version, anthropic-beta, anthropic-dangerous-direct-browser-access"
)
_CORS_METHODS = "GET, POST, DELETE, OPTIONS"


@lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    name = socket.gethostname().lower()
    short = name.split(".")[0]
    return frozenset({name, short, f"{short}.local"})


def _hostname(value: str) -> str:
    """``Host`` header -> lower-case name without the port (IPv6 brackets removed)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str, *, bound: str, extra: list[str]) -> bool:
    if "*" in extra:
        return True
    name = _hostname(host)
    return (
        _is_ip(name)
        or name in _LOCAL_NAMES
        or name.endswith(".localhost")
        or name in _own_names()
        or name == bound.lower()
        or name in {e.lower() for e in extra}
    )


def origin_allowed(origin: str, *, host: str | None, extra: list[str]) -> bool:
    if "*" in extra or origin.rstrip("/") in extra:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # "null" (sandboxed frames, file://) and anything stranger
    if host is not None and parts.netloc.lower() == host.strip().lower():
        return True  # the server's own pages (the dashboard)
    name = parts.hostname.lower()
    return name in ("localhost", "127.0.0.1", "::1") or name.endswith(".localhost")


#: Where the middleware leaves an accepted Origin for :func:`add_cors_headers`.
CORS_ORIGIN: web.RequestKey[str] = web.RequestKey("cors_origin", str)


def _cors(response: web.StreamResponse, origin: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Expose-Headers"] = "Retry-After"


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer to an accepted Origin, streams and errors
    included, carries the CORS headers (and no other answer does)."""
    origin = request.get(CORS_ORIGIN)
    if origin is not None:
        _cors(response, origin)


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    server = request.app[SUPERVISOR].config.server
    host = request.headers.get("Host")
    if host is not None and not host_allowed(host, bound=server.host, extra=server.allowed_hosts):
        raise ApiError(
            403,
            f"requests for host {host!r} are refused (DNS rebinding protection); "
            "add it to server.allowed_hosts if this server is meant to answer to that name",
            code="host_not_allowed",
        )
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, host=host, extra=server.allowed_origins):
        raise ApiError(
            403,
            f"cross-origin requests from {origin!r} are refused; add the origin to "
            "server.allowed_origins to let that web page use this server",
            code="origin_not_allowed",
        )
    if origin is not None:
        request[CORS_ORIGIN] = origin
    if request.method == "OPTIONS" and origin is not None:
        preflight = web.Response(status=204)
        preflight.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
        preflight.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", _CORS_HEADERS
        )
        preflight.headers["Access-Control-Max-Age"] = "600"
        return preflight
    if (
        request.method in _STATE_CHANGING
        and request.path.startswith("/api/")
        and request.content_type != "application/json"
    ):
        raise ApiError(
            415,
            f"{request.method} {request.path} needs 'Content-Type: application/json' "
            "(also with an empty body); this keeps web pages from calling it with a "
            "plain form",
            code="unsupported_media_type",
        )
    return await handler(request)
