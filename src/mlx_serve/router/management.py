"""The management API under ``/api/``: models, load/unload, show, delete, pull, events, stats,
and ``/metrics``. Conventions follow Ollama where it has one (NDJSON progress for pulls,
``keep_alive``), and every error is OpenAI-shaped JSON like the rest of the server."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from mlx_serve import __version__
from mlx_serve.config import parse_duration
from mlx_serve.config.distributed import DistributedConfig
from mlx_serve.errors import ApiError
from mlx_serve.event_filter import event_matches
from mlx_serve.observability.history import DEFAULT_INTERVAL, DEFAULT_RETENTION, MemoryHistory
from mlx_serve.observability.memory import (
    own_rss_bytes,
    system_memory,
    tree_rss_bytes,
    watch_history,
)
from mlx_serve.observability.prometheus import CONTENT_TYPE
from mlx_serve.router.keys import METRICS, STATS, SUPERVISOR
from mlx_serve.router.prepare import lifecycle_error, pop_keep_alive, resolve_or_404
from mlx_serve.router.query import query_flag
from mlx_serve.router.request_body import read_json_object
from mlx_serve.supervisor import (
    QueueFull,
    ShuttingDown,
    Supervisor,
    WorkerStartError,
    WorkerView,
)
from mlx_serve.supervisor.events import ModelDeleted, ModelPull, WorkerStateChanged
from mlx_serve.supervisor.reload import reload_from_file

#: Seconds between SSE keep-alive comments on the event stream.
PING_INTERVAL = 15.0

#: The dashboard's memory history (``/api/stats?history=10m``): a sample every
#: ``HISTORY_INTERVAL`` seconds, kept ``HISTORY_RETENTION`` seconds (read by ``add_routes``).
HISTORY_INTERVAL = DEFAULT_INTERVAL
HISTORY_RETENTION = DEFAULT_RETENTION
HISTORY = web.AppKey("memory_history", MemoryHistory)


def _configured(request: web.Request) -> str:
    """The configured model the URL names; 400 for names that look like paths, else 404."""
    supervisor = request.app[SUPERVISOR]
    raw = request.match_info["name"]
    if raw.startswith(("/", "\\", "~")) or ".." in re.split(r"[/\\]", raw) or "\x00" in raw:
        raise ApiError(400, f"invalid model name {raw!r}", code="invalid_model_name")
    return resolve_or_404(supervisor, raw)


def model_status(request: web.Request, view: WorkerView) -> dict[str, Any]:
    """Everything the API and dashboard show about one configured model."""
    expires_in = view.unloads_in_s
    return {
        "name": view.name,
        "type": view.model.type.value,
        "path": view.model.path,
        "aliases": list(view.model.aliases),
        "status": view.status,
        "error": view.error,
        "pid": view.pid,
        "port": view.port,
        "rss_bytes": tree_rss_bytes(view.pid) if view.resident else None,
        "loaded_at": view.loaded_at,
        "last_used": None if view.last_used_at is None else round(view.last_used_at, 3),
        "idle_timeout_s": view.idle_timeout_s,
        "expires_in_s": None if expires_in is None else round(expires_in, 1),
        "keep_alive_s": view.keep_alive_s,
        "requests": view.requests,
        "inflight": view.inflight,
        "waiting": view.waiting,
        "pinned": view.model.pin,
        "distributed": _distributed(view.model.distributed),
        "pull": view.pull,  # while server.auto_pull downloads its files, else None
        "memory": view.footprint.to_json(),
        "metrics": request.app[STATS].summary(view.name),
    }


def _distributed(dist: DistributedConfig | None) -> dict[str, Any] | None:
    """Where a sharded model's ranks run (None for a one-process model)."""
    if dist is None:
        return None
    return {
        "hosts": list(dist.hosts),
        "ranks": dist.ranks,
        "local_ranks": dist.local_ranks(),
        "backend": dist.backend.value,
        "mode": dist.mode.value,
    }


async def hub_imported() -> None:
    """Import :mod:`mlx_serve.hub` (huggingface_hub) in a thread, once: the import takes
    ~0.5 s, and on the event loop it would hold every stream in flight; afterwards the
    handlers' own ``from mlx_serve import hub`` finds it in ``sys.modules``."""
    if "mlx_serve.hub" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "mlx_serve.hub")


async def list_models(request: web.Request) -> web.Response:
    views = request.app[SUPERVISOR].views()
    return web.json_response({"models": [model_status(request, v) for v in views]})


async def show_model(request: web.Request) -> web.Response:
    await hub_imported()
    from mlx_serve import hub  # noqa: PLC0415 - imported by hub_imported(), in a thread

    name = _configured(request)
    worker = request.app[SUPERVISOR].workers[name]
    details = await asyncio.to_thread(hub.show, worker.model.path)
    config = worker.model.model_dump(mode="json")
    status = model_status(request, request.app[SUPERVISOR].view(name))
    return web.json_response({**status, "config": config, "details": details})


async def load_model(request: web.Request) -> web.StreamResponse:
    """Preload a model (as a request would, swapping if needed); ``?stream=true`` streams
    NDJSON progress: queued -> loading -> loaded (or error)."""
    name = _configured(request)
    supervisor = request.app[SUPERVISOR]
    body = await read_json_object(request) if request.can_read_body else {}
    keep_alive = pop_keep_alive(body)
    if not query_flag(request, "stream"):
        started = time.perf_counter()
        await _load(supervisor, name, keep_alive)
        return web.json_response(
            {
                "name": name,
                "status": "loaded",
                "duration_s": round(time.perf_counter() - started, 3),
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    with supervisor.events.subscribe() as queue:
        task = asyncio.create_task(_load(supervisor, name, keep_alive))
        await _ndjson(resp, {"status": "queued", "name": name})
        try:
            while not task.done():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    event = getter.result()
                    if event.model == name and isinstance(event, WorkerStateChanged):
                        await _ndjson(resp, {"status": event.status, "name": name})
                else:
                    getter.cancel()
            task.result()
            await _ndjson(resp, {"status": "success", "name": name})
        except ApiError as exc:
            await _ndjson(resp, {"status": "error", "error": exc.message, "code": exc.code})
        finally:
            task.cancel()
    await resp.write_eof()
    return resp


async def _load(supervisor: Supervisor, name: str, keep_alive: float | None) -> None:
    try:
        await supervisor.load(name, keep_alive=keep_alive)
    except (QueueFull, WorkerStartError, ShuttingDown) as exc:
        raise lifecycle_error(exc) from exc


async def unload_model(request: web.Request) -> web.Response:
    name = _configured(request)
    body = await read_json_object(request) if request.can_read_body else {}
    force = query_flag(request, "force") or body.get("force") is True
    started = time.perf_counter()
    await request.app[SUPERVISOR].unload(name, force=force)
    took = round(time.perf_counter() - started, 3)
    return web.json_response(
        {"name": name, "status": "unloaded", "forced": force, "duration_s": took}
    )


async def delete_files(request: web.Request) -> web.Response:
    """Delete a model's files: from the Hugging Face cache, or a local dir with ``?local=true``.
    Refused while the model is loaded."""
    name = _configured(request)
    local_ok = query_flag(request, "local")
    return web.json_response(await delete_model_files(request.app[SUPERVISOR], name, local_ok))


async def delete_model_files(supervisor: Supervisor, name: str, local_ok: bool) -> dict[str, Any]:
    """Delete configured model ``name``'s files (a local directory only when ``local_ok``);
    409 while it is loaded. Shared by ``DELETE /api/models/{name}/files`` and Ollama's
    ``DELETE /api/delete``."""
    await hub_imported()
    from mlx_serve import hub  # noqa: PLC0415 - imported by hub_imported(), in a thread

    worker = supervisor.workers[name]
    path = worker.model.path
    local = path.startswith("/")  # the config resolved every local path to an absolute one
    if local and not local_ok:
        raise ApiError(
            400,
            f"model {name!r} is a local directory ({path}); add ?local=true to delete it",
            code="local_model",
        )
    # Checked and claimed in one step: no request can start the model while its files go.
    if not worker.claim_files(f"its files are being deleted ({path})"):
        raise ApiError(409, f"model {name!r} is loaded; unload it first", code="model_loaded")
    try:
        if local:
            freed = await asyncio.to_thread(hub.delete_local, Path(path))
        else:
            freed = await asyncio.to_thread(hub.delete_cached, path)
    except hub.HubError as exc:
        raise _hub_error(exc) from exc
    finally:
        worker.release_files()
    supervisor.events.emit(ModelDeleted(model=name, path=path, freed_bytes=freed))
    return {"name": name, "deleted": path, "freed_bytes": freed}


def _hub_error(exc: Exception) -> ApiError:
    """A hub error as an API error; the hub module suggests the status (404, 409, 503...)."""
    status = getattr(exc, "http_status", 400)
    code = getattr(exc, "code", None) or type(exc).__name__
    return ApiError(status if isinstance(status, int) else 400, str(exc), code=code)


async def pull(request: web.Request) -> web.StreamResponse:
    """Download a hub repo into the HF cache, streaming NDJSON progress; a client that
    disconnects cancels the download (it resumes on the next pull). With ``"stream": false``
    (as Ollama clients send by default) one JSON object answers when it is done."""
    await hub_imported()
    from mlx_serve import hub  # noqa: PLC0415 - imported by hub_imported(), in a thread

    body = await read_json_object(request)
    repo = body.get("model") or body.get("name")
    revision = body.get("revision")
    if not isinstance(repo, str) or not repo:
        raise ApiError(400, "'model' is required: a Hugging Face repo id", param="model")
    if revision is not None and not isinstance(revision, str):
        raise ApiError(400, "'revision' must be a string", param="revision")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    supervisor = request.app[SUPERVISOR]
    # aclosing: when the client disconnects (this handler is cancelled) the generator is
    # closed at once, which kills the download process; the next pull resumes it.
    async with contextlib.aclosing(hub.pull(repo, revision)) as progress:
        try:
            first = await anext(progress)  # request errors (bad id, unknown repo) come first
        except hub.HubError as exc:
            raise _hub_error(exc) from exc
        if not stream:
            return await _pull_whole(supervisor, repo, revision, first, progress)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        supervisor.events.emit(ModelPull(repo=repo, status="started", extra={"revision": revision}))
        try:
            await _ndjson(resp, first)
            async for item in progress:
                await _ndjson(resp, item)
            supervisor.events.emit(ModelPull(repo=repo, status="success"))
        except hub.HubError as exc:
            await _ndjson(
                resp, {"status": "error", "error": str(exc), "code": getattr(exc, "code", None)}
            )
            supervisor.events.emit(ModelPull(repo=repo, status="error", extra={"error": str(exc)}))
    await resp.write_eof()
    return resp


async def _pull_whole(
    supervisor: Supervisor,
    repo: str,
    revision: str | None,
    last: dict[str, Any],
    progress: AsyncIterator[dict[str, Any]],
) -> web.Response:
    """A pull answered as one JSON object (its last progress line, ``"status": "success"``)."""
    await hub_imported()
    from mlx_serve import hub  # noqa: PLC0415 - imported by hub_imported(), in a thread

    supervisor.events.emit(ModelPull(repo=repo, status="started", extra={"revision": revision}))
    try:
        async for item in progress:
            last = item
    except hub.HubError as exc:
        supervisor.events.emit(ModelPull(repo=repo, status="error", extra={"error": str(exc)}))
        raise _hub_error(exc) from exc
    supervisor.events.emit(ModelPull(repo=repo, status="success"))
    return web.json_response(last)


async def _ndjson(resp: web.StreamResponse, item: dict[str, Any]) -> None:
    await resp.write(json.dumps(item).encode() + b"\n")


async def events(request: web.Request) -> web.StreamResponse:
    """Recent events (``?model=&type=&since=&limit=``), or a live SSE stream with
    ``?follow=true`` (after replaying the matching recent ones when ``since`` is given)."""
    supervisor = request.app[SUPERVISOR]
    q = request.query
    model, kind = q.get("model") or None, q.get("type") or None
    try:
        since = float(q["since"]) if q.get("since") else None
        limit = int(q.get("limit", "200"))
    except ValueError as exc:
        raise ApiError(400, "'since' must be a unix time and 'limit' an integer") from exc
    recent = supervisor.events.recent(model=model, kind=kind, since=since)
    recent = recent[len(recent) - max(limit, 0) :] if limit < len(recent) else recent
    if not query_flag(request, "follow"):
        return web.json_response({"events": [e.to_json() for e in recent]})
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    with supervisor.events.subscribe() as queue:
        await resp.prepare(request)
        if since is not None:
            for event in recent:
                await resp.write(_sse(event.to_json()))
        while True:
            try:
                async with asyncio.timeout(PING_INTERVAL):
                    event = await queue.get()
            except TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            if event_matches(event.kind, event.model, event.ts, want_model=model, want_kind=kind):
                await resp.write(_sse(event.to_json()))


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, default=str).encode() + b"\n\n"


def history_window(value: str) -> float:
    """Seconds of ``?history=`` (a duration: ``10m``, ``90s``, ``600``); 400 unless > 0."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ApiError(400, f"'history': {exc}", param="history", code="invalid_history") from exc
    if seconds <= 0:
        raise ApiError(
            400,
            f"'history' must be a positive duration such as 10m, got {value!r}",
            param="history",
            code="invalid_history",
        )
    return seconds


async def stats(request: web.Request) -> web.Response:
    """Everything the dashboard shows; with ``?history=10m`` also the memory samples of the
    last ten minutes (at most the retention), so its chart is filled on load."""
    raw_history = request.query.get("history")
    window = history_window(raw_history) if raw_history is not None else None
    supervisor = request.app[SUPERVISOR]
    mem = system_memory()
    models = [model_status(request, v) for v in supervisor.views()]
    source = supervisor.config.source
    body: dict[str, Any] = {
        "version": __version__,
        "uptime_s": round(supervisor.clock.wall() - supervisor.started_at, 1),
        "started_at": supervisor.started_at,
        "config_path": str(source) if source else None,
        "memory": {
            "system_total_bytes": mem.total_bytes,
            "system_available_bytes": mem.available_bytes,
            "workers_rss_bytes": sum(m["rss_bytes"] or 0 for m in models),
            "router_rss_bytes": own_rss_bytes(),
            **supervisor.memory_report(),
        },
        "queue": {"waiting": supervisor.scheduler.waiting()},
        # Every request's outcome by status and error code, with those that named no
        # configured model ("unknown": a 404 model_not_found, a 401...), which no model's
        # "metrics" can show.
        "requests": request.app[STATS].outcomes(),
        "models": models,
        "spares": supervisor.spares.to_json(),
        "events": [e.to_json() for e in supervisor.events.recent()[-50:]],
    }
    if window is not None:
        body["history"] = request.app[HISTORY].to_json(window, supervisor.clock.wall())
    return web.json_response(body)


async def _memory_history(app: web.Application) -> AsyncIterator[None]:
    """Sample memory for the history from startup to shutdown (see :func:`watch_history`)."""
    supervisor = app[SUPERVISOR]

    def resident() -> dict[str, int | None]:
        return {v.name: v.pid for v in supervisor.views() if v.resident}

    task = asyncio.create_task(watch_history(app[HISTORY], resident, supervisor.clock.wall))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def reload(request: web.Request) -> web.Response:
    """Re-read models.yaml now (as a file change or SIGHUP would) and say what changed."""
    supervisor = request.app[SUPERVISOR]
    path = supervisor.config.source
    if path is None:
        raise ApiError(400, "this server was not started from a config file", code="no_config_file")
    result = await reload_from_file(supervisor, path, trigger="api")
    return web.json_response(result, status=200 if result["status"] == "ok" else 422)


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[METRICS].render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


_DASHBOARD = Path(__file__).parent / "static" / "dashboard.html"


async def dashboard(_: web.Request) -> web.StreamResponse:
    if not _DASHBOARD.exists():
        raise ApiError(404, "the dashboard page is not installed", code="not_found")
    return web.FileResponse(_DASHBOARD, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app[HISTORY] = MemoryHistory(HISTORY_INTERVAL, HISTORY_RETENTION)
    app.cleanup_ctx.append(_memory_history)
    r = app.router
    r.add_get("/api/models", list_models)
    r.add_post("/api/models/{name:.+}/load", load_model)
    r.add_post("/api/models/{name:.+}/unload", unload_model)
    r.add_delete("/api/models/{name:.+}/files", delete_files)
    r.add_get("/api/models/{name:.+}", show_model)
    r.add_post("/api/pull", pull)
    r.add_post("/api/reload", reload)
    r.add_get("/api/events", events)
    r.add_get("/api/stats", stats)
    r.add_get("/metrics", metrics)
    r.add_get("/", dashboard)
    r.add_get("/dashboard", dashboard)
