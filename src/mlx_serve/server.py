"""Running the supervisor and the router together until a signal says stop.

Signal handlers only record the signal; the main coroutine acts on it (uvicorn's pattern). The
first SIGINT/SIGTERM starts a graceful stop: no new connections, in-flight requests get
``drain_timeout`` to finish, then every worker group is stopped. A second signal skips the
wait for requests; workers are still stopped, so none is orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from mlx_serve.config import Config, ModelType
from mlx_serve.observability.event_log import EventLogFile
from mlx_serve.router.app import make_app
from mlx_serve.supervisor import Supervisor
from mlx_serve.supervisor.config_watcher import watch_config
from mlx_serve.supervisor.events import Event
from mlx_serve.supervisor.reload import reload_from_file
from mlx_serve.workers.base import WorkerDriver

log = logging.getLogger("mlx_serve")

#: Events worth a line in the server's own log.
_LOGGED = {
    "model.loaded", "model.unloaded", "swap", "worker.crashed", "worker.kill", "config.reload",
    "memory.low", "model.evicted", "model.refused",
}  # fmt: skip


@dataclass
class ServerHandle:
    """What :func:`serve` reports once it listens (used by the CLI, the demo and tests)."""

    url: str
    supervisor: Supervisor
    stop: Callable[[], None]


def _log_event(event: Event) -> None:
    if event.kind in _LOGGED or (
        event.kind == "worker.state" and event.data.get("new") == "failed"
    ):
        details = " ".join(f"{k}={v}" for k, v in event.data.items() if k != "log_tail")
        log.info("%s %s %s", event.kind, event.model or "", details)


def _start_reloading(supervisor: Supervisor, requested: asyncio.Event) -> list[asyncio.Task[None]]:
    """SIGHUP (``requested``) and edits of models.yaml both reload it."""
    path = supervisor.config.source
    if path is None:
        return []

    async def on_sighup() -> None:
        while True:
            await requested.wait()
            requested.clear()
            await reload_from_file(supervisor, path, trigger="sighup")

    async def on_edit() -> None:
        await watch_config(path, lambda: reload_from_file(supervisor, path, trigger="file"))

    tasks = [asyncio.create_task(on_sighup())]
    if supervisor.config.server.watch_config:
        tasks.append(asyncio.create_task(on_edit()))
    return tasks


async def serve(
    config: Config,
    *,
    data_dir: Path,
    host: str | None = None,
    port: int | None = None,
    drain_timeout: float = 30.0,
    on_ready: Callable[[ServerHandle], None] | None = None,
    handle_signals: bool = True,
    drivers: Mapping[ModelType, WorkerDriver] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``handle.stop()``), then stop every worker."""
    host = host or config.server.host
    port = config.server.port if port is None else port
    supervisor = Supervisor(config, data_dir=data_dir, drivers=drivers)
    supervisor.events.add_listener(_log_event)
    event_log = EventLogFile(data_dir / "events.jsonl")
    supervisor.events.add_listener(event_log)
    runner = web.AppRunner(
        make_app(supervisor),
        handler_cancellation=True,  # a client that leaves cancels its handler (and its queue slot)
        access_log=None,
        shutdown_timeout=drain_timeout,
    )
    stop_requested = asyncio.Event()
    signals_seen = 0
    draining = False  # True while in-flight requests get their grace period
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        log.info("received %s, stopping%s", signal.Signals(signum).name,
                 " now" if signals_seen > 1 else "")  # fmt: skip
        stop_requested.set()
        if signals_seen > 1 and draining:
            # Second signal: stop waiting for requests. Only that wait is cut short: once the
            # workers are being stopped, their SIGTERM -> grace -> SIGKILL runs to the end.
            main_task.cancel()

    current = asyncio.current_task()
    assert current is not None
    main_task: asyncio.Task[object] = current
    reload_requested = asyncio.Event()
    if handle_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    await runner.setup()
    try:
        await supervisor.start()
        site = web.TCPSite(runner, host, port)
        await site.start()
        url = f"http://{host}:{port}"
        log.info("mlx-serve listening on %s (%d models configured)", url, len(config.models))
        for notice in config.notices:
            log.warning("%s", notice)
        background = _start_reloading(supervisor, reload_requested)
        if on_ready is not None:
            on_ready(ServerHandle(url, supervisor, stop_requested.set))
        await stop_requested.wait()
        for task in background:
            task.cancel()
        await supervisor.scheduler.close()  # waiters get 503 instead of a dropped connection
        draining = True
        await runner.cleanup()  # stop listening; let in-flight requests finish
    finally:
        draining = False
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(supervisor.shutdown())
        with contextlib.suppress(Exception):
            await runner.cleanup()
        supervisor.events.remove_listener(event_log)
        event_log.close()
        if handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        log.info("mlx-serve stopped")
