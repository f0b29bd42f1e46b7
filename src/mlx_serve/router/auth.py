"""Optional API-key authentication for every route except ``GET /health``.

The key comes from ``server.api_key`` in models.yaml, else ``$MLX_API_KEY``. Clients send it
the OpenAI way (``Authorization: Bearer KEY``, what the openai SDK and LiteLLM do) or as
``X-Api-Key``. Comparison is constant-time. A failure is a 401 in OpenAI's shape and a
``auth.failed`` event (without the key that was sent).
"""

from __future__ import annotations

import hmac
import os

from aiohttp import web

from mlx_serve.errors import ApiError, Handler
from mlx_serve.router.keys import SUPERVISOR
from mlx_serve.supervisor.events import AuthFailed

#: Routes anyone may call: liveness checks by service managers and load balancers, and the
#: dashboard page itself (static HTML with no data: it asks for the key, then calls the API).
OPEN_PATHS = frozenset({"/health", "/", "/dashboard"})


def resolve_api_key(configured: str | None) -> str | None:
    """The key in force: the config's, else ``$MLX_API_KEY``, else none."""
    return configured or os.environ.get("MLX_API_KEY") or None


def _presented(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-Api-Key") or None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the key in force *now*: a config reload may set, change or remove it."""
    supervisor = request.app[SUPERVISOR]
    api_key = resolve_api_key(supervisor.config.server.api_key)
    if api_key is None or (request.path in OPEN_PATHS and request.method in ("GET", "HEAD")):
        return await handler(request)
    presented = _presented(request)
    if presented is None or not hmac.compare_digest(presented.encode(), api_key.encode()):
        supervisor.events.emit(
            AuthFailed(
                path=request.path,
                remote=request.remote,
                reason="missing" if presented is None else "wrong key",
            )
        )
        raise ApiError(
            401,
            "a valid API key is required: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)
