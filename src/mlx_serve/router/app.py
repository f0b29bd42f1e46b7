"""``make_app()``: the aiohttp application in front of the supervisor. It owns no process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from mlx_serve.errors import API_ERROR, Handler, error_middleware, outcome_code
from mlx_serve.observability.prometheus import Metrics
from mlx_serve.observability.request_stats import RequestStats
from mlx_serve.router.auth import auth_middleware
from mlx_serve.router.dialects import add_routes as add_dialect_routes
from mlx_serve.router.keys import METRICS, STATS, SUPERVISOR, UPSTREAMS
from mlx_serve.router.management import add_routes as add_management_routes
from mlx_serve.router.openai_routes import ENDPOINT_ALIASES, add_routes
from mlx_serve.router.origin import add_cors_headers, origin_middleware
from mlx_serve.router.proxy import TRACED
from mlx_serve.router.upstream import Preopened
from mlx_serve.supervisor import Supervisor
from mlx_serve.supervisor.events import Event, RequestFinished
from mlx_serve.supervisor.memory_watch import watch_memory

#: aiohttp's own cap on a request body. The real limits are per kind of body
#: (``server.max_json_body`` / ``max_upload_body``), checked while reading; this only
#: bounds what a handler that reads a body some other way could take.
MAX_BODY_BYTES = 1024 * 1024 * 1024


def make_app(supervisor: Supervisor) -> web.Application:
    """The router for ``supervisor``. Starting and stopping the supervisor is the caller's."""
    # Inside the error middleware, so their 403/415/401 become JSON; origin checks first, so a
    # foreign page learns nothing, not even whether a key is needed. Outermost, the outcome
    # of every request that no worker saw is counted.
    middlewares: list[Middleware] = [
        outcome_middleware, error_middleware, origin_middleware, auth_middleware,
    ]  # fmt: skip
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(add_cors_headers)
    app[SUPERVISOR] = supervisor
    app[STATS] = RequestStats()
    app[METRICS] = Metrics(supervisor)
    app[UPSTREAMS] = Preopened()
    app.cleanup_ctx.append(_observability)
    app.on_cleanup.append(_close_upstreams)
    add_routes(app)
    add_dialect_routes(app)
    add_management_routes(app)
    return app


@web.middleware
async def outcome_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A ``request`` event for every request answered with an error before it reached a
    worker: a 404 for an unknown model, a 400 for a bad body, a 401 without the key, a 413,
    a 503 while shutting down... so the stats and ``/metrics`` count every outcome.

    Requests that reached the lease emit their own (richer) event: they are marked
    (``request[TRACED]``) and skipped here. Successful answers of the other routes (the
    model list, the dashboard's polling, the management API) are not requests to a model
    and are not counted at all.
    """
    arrived = time.perf_counter()
    response = await handler(request)
    if response.status >= 400 and not request.get(TRACED, False):
        _count_rejected(request, response.status, time.perf_counter() - arrived)
    return response


def _count_rejected(request: web.Request, status: int, elapsed: float) -> None:
    error = request.get(API_ERROR)
    resource = request.match_info.route.resource
    # The route's pattern, never the raw path: labels must not grow with what clients send.
    endpoint = resource.canonical if resource is not None else "unmatched"
    request.app[SUPERVISOR].events.emit(
        RequestFinished(
            model=error.model if error is not None else None,
            endpoint=ENDPOINT_ALIASES.get(endpoint, endpoint),
            stream=False,
            status=status,
            code=outcome_code(status, error.code if error is not None else None),
            latency_s=round(elapsed, 4),
            error=error.message if error is not None else None,
        )
    )


async def _observability(app: web.Application) -> AsyncIterator[None]:
    """Attach the in-memory event sinks (stats, metrics) and the memory watcher; detach them
    in reverse on shutdown. (The on-disk event log belongs to the server: it must outlive the
    router to record the final unloads.)"""
    supervisor = app[SUPERVISOR]
    sinks: list[Callable[[Event], None]] = [app[STATS], app[METRICS]]
    for sink in sinks:
        supervisor.events.add_listener(sink)
    watcher = asyncio.create_task(
        watch_memory(supervisor.events.emit, supervisor.config.server.memory_warning)
    )
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        for sink in reversed(sinks):
            supervisor.events.remove_listener(sink)


async def _close_upstreams(app: web.Application) -> None:
    await app[UPSTREAMS].close()
