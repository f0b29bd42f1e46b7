"""The OpenAI-compatible endpoints: validate, pick the model, lease a worker, forward.

What they share with the other dialects (reading the body, resolving the model, the checks,
the lease) is in :mod:`.request_body` and :mod:`.prepare`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mlx_serve.errors import ApiError
from mlx_serve.router.keys import SUPERVISOR
from mlx_serve.router.multipart import MultipartError, form_fields
from mlx_serve.router.prepare import (
    JSON_CHECKS,
    pop_keep_alive,
    prepare,
    resolve_model,
    resolve_or_404,
    traced_lease,
)
from mlx_serve.router.proxy import Trace, Upstream, forward
from mlx_serve.router.request_body import read_body, read_json_object
from mlx_serve.supervisor import Supervisor, WorkerView

#: Other paths of an endpoint, as clients spell it: vLLM's, Jina's and Infinity's clients
#: (and litellm's ``hosted_vllm``/``infinity`` providers) post to ``/rerank``, Cohere's v2
#: client (litellm's ``cohere`` provider given a bare ``api_base``) to ``/v2/rerank``.
ENDPOINT_ALIASES: dict[str, str] = {"/rerank": "/v1/rerank", "/v2/rerank": "/v1/rerank"}


async def _serve(
    request: web.Request,
    *,
    name: str,
    requested: str,
    keep_alive: float | None,
    upstream: Upstream,
    stream: bool,
) -> web.StreamResponse:
    """Lease the model's worker (waiting for a swap if needed) and forward one request."""
    trace = Trace(model=requested, endpoint=upstream.path, stream=stream)
    async with traced_lease(request, name, keep_alive, trace) as lease:
        return await forward(request, lease=lease, upstream=upstream, trace=trace)


async def proxy_json(request: web.Request, endpoint: str) -> web.StreamResponse:
    """A JSON endpoint: validate, merge the model's defaults, forward with the worker's id."""
    supervisor = request.app[SUPERVISOR]
    prepared = prepare(supervisor, await read_json_object(request), endpoint)
    worker = supervisor.workers[prepared.name]
    return await _serve(
        request,
        name=prepared.name,
        requested=prepared.requested,
        keep_alive=prepared.keep_alive,
        upstream=Upstream(endpoint, prepared.payload(worker.upstream_model)),
        stream=bool(prepared.body.get("stream")),
    )


async def proxy_form(request: web.Request, endpoint: str) -> web.StreamResponse:
    """A multipart endpoint (audio uploads): route on its ``model`` field, forward it as is."""
    supervisor = request.app[SUPERVISOR]
    content_type = request.headers.get("Content-Type", "")
    limit = supervisor.config.server.max_upload_body
    raw = await read_body(request, limit, "max_upload_body")
    try:
        fields = form_fields(content_type, raw, frozenset({"model", "keep_alive"}))
    except MultipartError as exc:
        raise ApiError(
            400,
            f"send the audio as multipart/form-data with a 'file' part: {exc}",
            code="invalid_form",
        ) from exc
    form: dict[str, Any] = dict(fields)
    name = resolve_model(supervisor, form, endpoint)
    try:
        keep_alive = pop_keep_alive(form)
    except ApiError as exc:
        exc.model = name
        raise
    return await _serve(
        request,
        name=name,
        requested=form["model"],
        keep_alive=keep_alive,
        upstream=Upstream(endpoint, raw, content_type),
        stream=False,
    )


def _route(
    proxy: Callable[[web.Request, str], Awaitable[web.StreamResponse]], endpoint: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await proxy(request, endpoint)

    return handler


def model_entry(supervisor: Supervisor, view: WorkerView) -> dict[str, Any]:
    footprint = view.footprint
    entry: dict[str, Any] = {
        "id": view.name,
        "object": "model",
        "created": int(supervisor.started_at),
        "owned_by": "mlx-serve",
        "type": view.model.type.value,
        "status": view.status,
        "aliases": list(view.model.aliases),
        "pinned": view.model.pin,
        "memory": {
            "estimate_bytes": footprint.estimate.total_bytes if footprint.estimate else None,
            "measured_bytes": footprint.measured_bytes,
            "planned_bytes": footprint.planned_bytes,
        },
    }
    if view.error:
        entry["error"] = view.error
    if view.pull is not None:  # server.auto_pull is downloading it
        entry["pull"] = view.pull
    return entry


async def list_models(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    data = [model_entry(supervisor, view) for view in supervisor.views()]
    # Spare processes hold no model: never entries of "data", but visible next to it.
    return web.json_response(
        {"object": "list", "data": data, "spares": supervisor.spares.to_json()}
    )


async def get_model(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    name = resolve_or_404(supervisor, request.match_info["model"])
    return web.json_response(model_entry(supervisor, supervisor.view(name)))


async def health(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    return web.json_response({"status": "ok", "loaded": supervisor.loaded()})


def add_routes(app: web.Application) -> None:
    for endpoint in JSON_CHECKS:
        app.router.add_post(endpoint, _route(proxy_json, endpoint))
    for alias, endpoint in ENDPOINT_ALIASES.items():
        app.router.add_post(alias, _route(proxy_json, endpoint))
    for endpoint in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        app.router.add_post(endpoint, _route(proxy_form, endpoint))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
