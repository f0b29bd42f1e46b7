"""The skeleton of mlx-serve's own worker servers (embedding, tts, stt).

Each of those is a small aiohttp app in its own process, started by the supervisor like any
worker. The model is loaded (and warmed up) *before* the server listens, so for these workers
``GET /health`` answering 200 does mean the model answered: readiness, not just liveness.
Heavy imports (mlx-audio and mlx-whisper pull in torch) are timed apart from the load, and
both times are reported on ``/health`` so the supervisor puts them in the load event.

Inference is blocking and not thread-safe, so it runs on one dedicated thread: requests are
served one at a time while the event loop stays free to answer ``/health`` and to notice
clients that went away.

Started without ``--model``, a worker is a *spare*: it does its imports, listens, answers
``GET /spare`` with 200, and waits for ``POST /load {"model": PATH}``. Until that load has
finished ``/health`` answers 503 (so readiness still means "the model answered"); a load that
fails ends the process with its traceback in the log, exactly like a cold start that fails.
That lets the supervisor keep one pre-imported process per kind and skip the imports on a swap.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiohttp import web

from mlx_serve.errors import ApiError, error_middleware

T = TypeVar("T")
R = TypeVar("R")

#: Request body limit of the worker servers (audio uploads are the largest).
MAX_BODY_BYTES = 1024 * 1024 * 1024  # the router enforces the configured limits


class ModelServer(Generic[T]):
    """A loaded model plus the single thread that runs its inference."""

    def __init__(self, model: T, path: Path, args: argparse.Namespace, timings: dict[str, float]):
        self.model = model
        self.path = path
        self.args = args
        self.timings = timings
        self.loaded = True  # False while a spare waits for (or is doing) its load
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @classmethod
    def spare(cls, args: argparse.Namespace, timings: dict[str, float]) -> ModelServer[Any]:
        """A server with its imports done and no model yet."""
        server: ModelServer[Any] = cls(None, Path(), args, timings)  # type: ignore[arg-type]
        server.loaded = False
        return server

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """Run blocking ``fn(*args)`` on the inference thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


MODEL_SERVER: web.AppKey[ModelServer[Any]] = web.AppKey("model_server", ModelServer)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a 400 ``invalid_json`` (every worker endpoint's first step)."""
    try:
        return await request.json()
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc


def peak_rss_bytes() -> int:
    """This process's peak resident set size since it exec'd.

    On Linux this is ``VmHWM``: ``ru_maxrss`` survives ``execve`` and would report the peak of
    the supervisor that forked us. macOS has no /proc; there ``ru_maxrss`` is in bytes.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # noqa: PTH123
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def mlx_memory() -> dict[str, int]:
    """MLX's own allocator counters (Metal memory on Apple silicon, which RSS under-reports
    because it is wired GPU memory): active, peak and cached bytes."""
    try:
        import mlx.core as mx  # noqa: PLC0415 - already imported by every model library

        return {
            "mlx_active_bytes": int(mx.get_active_memory()),
            "mlx_peak_bytes": int(mx.get_peak_memory()),
            "mlx_cache_bytes": int(mx.get_cache_memory()),
        }
    except (ImportError, AttributeError, RuntimeError):
        return {}


def serve_model(
    description: str,
    *,
    imports: Callable[[], None],
    load: Callable[[Path, argparse.Namespace], T],
    add_routes: Callable[[web.Application], None],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    spare_imports: Callable[[], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    """Parse ``--model/--host/--port``, import, load, then serve until SIGTERM.

    ``imports`` does the heavy imports (timed as ``import_s``); ``load`` loads and warms up
    the model (timed as ``load_s``); ``add_routes`` adds the endpoint, whose handlers get the
    :class:`ModelServer` from ``request.app[MODEL_SERVER]``. A spare also runs
    ``spare_imports``: modules most models of the kind import when they load, which a spare
    can import ahead (it does not know its model yet, and nobody waits for it), but a cold
    start of one model that may not need them should not pay for.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--model", default=None, help="model directory or HF repo id (none: start as a spare)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    imports()
    if args.model is None and spare_imports is not None:
        spare_imports()
    imported = time.perf_counter()
    import_s = round(imported - started, 3)
    if args.model is not None:
        model = load(Path(args.model).expanduser(), args)
        timings = {"import_s": import_s, "load_s": round(time.perf_counter() - imported, 3)}
        print(f"mlx-serve worker: loaded {args.model} {timings}", flush=True)
        server: ModelServer[Any] = ModelServer(model, Path(args.model), args, timings)
    else:
        print(f"mlx-serve worker: spare, imports took {import_s}s", flush=True)
        server = ModelServer.spare(args, {"import_s": import_s})
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[MODEL_SERVER] = server
    loading: list[asyncio.Task[None]] = []

    async def health(_: web.Request) -> web.Response:
        if not server.loaded:
            status = "loading" if loading else "spare"
            return web.json_response({"status": status, "pid": os.getpid()}, status=503)
        return web.json_response(
            {
                "status": "ok",
                "model": args.model,
                "pid": os.getpid(),
                "peak_rss_bytes": peak_rss_bytes(),
                **mlx_memory(),
                **server.timings,
            }
        )

    async def spare_status(_: web.Request) -> web.Response:
        if server.loaded or loading:
            raise ApiError(409, "this worker is no longer a spare", code="not_a_spare")
        return web.json_response({"status": "spare", "pid": os.getpid(), **server.timings})

    async def load_now(request: web.Request) -> web.Response:
        """Turn this spare into a worker for the model the body names."""
        if server.loaded or loading:
            raise ApiError(409, "this worker already has a model", code="not_a_spare")
        body = await request.json()
        path = body.get("model") if isinstance(body, dict) else None
        if not isinstance(path, str) or not path:
            raise ApiError(400, "'model' must name a model directory or repo id")
        loading.append(asyncio.create_task(_adopt(path)))
        return web.json_response({"status": "loading", "model": path}, status=202)

    async def _adopt(path: str) -> None:
        args.model = path
        begun = time.perf_counter()
        try:
            model = await server.run(lambda: load(Path(path).expanduser(), args))
        except BaseException:
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # a failed load ends the process, as a failed cold start does
        server.model, server.path = model, Path(path)
        server.timings["load_s"] = round(time.perf_counter() - begun, 3)
        server.loaded = True
        print(f"mlx-serve worker: loaded {path} {server.timings} (was a spare)", flush=True)

    @web.middleware
    async def needs_model(request: web.Request, handler: Any) -> web.StreamResponse:
        if not server.loaded and request.path not in ("/health", "/spare", "/load"):
            raise ApiError(503, "this worker has no model loaded yet", code="no_model")
        response: web.StreamResponse = await handler(request)
        return response

    async def on_cleanup(_: web.Application) -> None:
        server.shutdown()

    app.middlewares.append(needs_model)
    app.router.add_get("/health", health)
    app.router.add_get("/spare", spare_status)
    app.router.add_post("/load", load_now)
    app.on_cleanup.append(on_cleanup)
    add_routes(app)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    # The server has shut down cleanly; skip the interpreter's own teardown. It takes 0.3-0.5 s
    # (every swap waits for it), and MLX, having run work on the executor's threads, aborts
    # in it now and then ("terminate called without an active exception", exit -6).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
