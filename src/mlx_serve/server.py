"""Running the supervisor and the router together until a signal says stop.

Signal handlers only record the signal; the main coroutine acts on it (uvicorn's pattern). The
first SIGINT/SIGTERM starts a graceful stop: no new connections, in-flight requests get
``drain_timeout`` to finish, then every worker group is stopped. A second signal skips the
wait for requests; workers are still stopped, so none is orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from mlx_serve import event_loop
from mlx_serve.config import Config, ModelType
from mlx_serve.config.sizes import format_bytes
from mlx_serve.observability.event_log import EventLogFile
from mlx_serve.router.app import make_app
from mlx_serve.router.auth import resolve_api_key
from mlx_serve.supervisor import Supervisor
from mlx_serve.supervisor.config_watcher import watch_config
from mlx_serve.supervisor.events import Event, WorkerStateChanged
from mlx_serve.supervisor.reload import reload_from_file
from mlx_serve.workers.base import WorkerDriver

log = logging.getLogger("mlx_serve")


@dataclass
class ServerHandle:
    """What :func:`serve` reports once it listens (used by the CLI, the demo and tests)."""

    url: str
    supervisor: Supervisor
    stop: Callable[[], None]


#: Events worth a line in the server's own log, at the level each one deserves: what needs
#: the operator (a crash, a failed start, a rejected reload, a wrong API key) stands out from
#: the routine (loads, unloads, swaps). ``worker.state`` is logged when a start failed, and
#: ``config.reload`` at WARNING when the file was rejected.
_LEVELS: dict[str, int] = {
    "model.loaded": logging.INFO,
    "model.unloaded": logging.INFO,
    "swap": logging.INFO,
    "model.evicted": logging.INFO,
    "config.reload": logging.INFO,
    "memory.ok": logging.INFO,
    "memory.low": logging.WARNING,
    "model.refused": logging.WARNING,
    "worker.kill": logging.WARNING,
    "worker.unresponsive": logging.WARNING,
    "auth.failed": logging.WARNING,
    "model.missing_files": logging.WARNING,
    "model.pull": logging.INFO,
    "worker.crashed": logging.ERROR,
}
#: Details that only repeat what the line already says, or are too long for one line.
_UNLOGGED = frozenset({"log_tail", "old", "new", "old_status", "status", "trigger"})
#: A client failing authentication again and again gets one line per this many seconds.
AUTH_LOG_INTERVAL = 60.0


class EventLogger:
    """The listener that writes the events of :data:`_LEVELS` to the ``mlx_serve`` log.

    One line per event: its kind, its model and the details that say something (no
    ``error=None``, no empty lists); sizes in bytes are written as sizes (``1.2 GiB``).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._auth: dict[tuple[object, object], tuple[float, int]] = {}

    def __call__(self, event: Event) -> None:
        line = self.describe(event)
        if line is not None:
            log.log(line[0], "%s", line[1])

    def describe(self, event: Event) -> tuple[int, str] | None:
        """The level and text of ``event``'s log line; None if it gets none."""
        kind, data = event.kind, event.data
        if isinstance(event, WorkerStateChanged):
            if event.new != "failed" or event.old != "starting":
                return None  # a crash (already logged as worker.crashed) or routine
            return logging.ERROR, _line("model.failed", event.model, data)
        level = _LEVELS.get(kind)
        if level is None:
            return None
        if kind == "config.reload":
            return _reload_line(data)
        if kind == "worker.crashed":
            return level, _line(kind, event.model, data) + _signal_name(data.get("exit_code"))
        if kind == "model.pull":  # auto_pull's (and /api/pull's) start and end, no progress
            status = data.get("status")
            if status not in ("started", "success", "error", "cancelled"):
                return None
            level = logging.WARNING if status == "error" else logging.INFO
            return level, f"{_line(kind, event.model, data)} status={status}"
        if kind == "auth.failed":
            return self._auth_line(event)
        return level, _line(kind, event.model, data)

    def _auth_line(self, event: Event) -> tuple[int, str] | None:
        """The first failure of a client (address and reason) in each interval; the count
        of those not logged comes with the next line."""
        key = (event.data.get("remote"), event.data.get("reason"))
        now = self._clock()
        since, suppressed = self._auth.get(key, (-AUTH_LOG_INTERVAL, 0))
        if now - since < AUTH_LOG_INTERVAL:
            self._auth[key] = (since, suppressed + 1)
            return None
        if len(self._auth) > 1000:  # many clients: forget old ones rather than grow
            self._auth.clear()
        self._auth[key] = (now, 0)
        text = _line(event.kind, event.model, event.data)
        if suppressed:
            text += f" ({suppressed} more from this client not logged)"
        return logging.WARNING, text


def _line(kind: str, model: str | None, data: Mapping[str, Any]) -> str:
    parts = [kind, model or ""]
    for key, value in data.items():
        if key in _UNLOGGED or value is None or value in ("", [], {}):
            continue
        parts.append(f"{_key(key)}={_value(key, value)}")
    return " ".join(part for part in parts if part)


def _key(key: str) -> str:
    return key.removesuffix("_bytes") if key.endswith("_bytes") else key


def _value(key: str, value: object) -> str:
    if key.endswith("_bytes") and isinstance(value, int) and not isinstance(value, bool):
        return format_bytes(value)
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _signal_name(code: object) -> str:
    """`` (killed by SIGKILL)`` for a negative exit code (a process killed by a signal)."""
    if isinstance(code, int) and code < 0:
        try:
            return f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f" (killed by signal {-code})"
    return ""


def _reload_line(data: Mapping[str, Any]) -> tuple[int, str]:
    trigger = data.get("trigger")
    how = f" ({trigger})" if trigger else ""
    if data.get("status") != "ok":
        error = data.get("error") or "invalid config"
        return logging.WARNING, (
            f"config.reload{how} rejected, the running config stays in force:\n{error}"
        )
    changes = {
        key: data.get(key)
        for key in ("added", "removed", "restarted", "updated", "server_changed", "restart_needed")
    }
    text = _line(f"config.reload{how}", None, changes)
    if text == f"config.reload{how}":
        return logging.INFO, f"{text}: no changes"
    return (logging.WARNING if data.get("restart_needed") else logging.INFO), text


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


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to warn about when the server listens beyond this machine with no key, or None.

    Binding another interface is a deliberate choice (a LAN, a container), so it is allowed;
    but then every device that can reach the port may run, load, pull and delete models, and
    the browser-origin checks do not cover a client that is not a browser.
    """
    if api_key is not None:
        return None
    if host == "localhost":
        return None
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return None
    return (
        f"listening on {host} without an API key: anyone who can reach this machine's port "
        "can use, load, pull and delete its models; set server.api_key in models.yaml "
        "(or $MLX_API_KEY), or listen on 127.0.0.1"
    )


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
    supervisor.events.add_listener(EventLogger())
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
    first_signal: str | None = None  # logged once the listener is closed
    draining = False  # True while in-flight requests get their grace period
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        nonlocal signals_seen, first_signal
        signals_seen += 1
        if signals_seen == 1:
            # Not logged here: "stopping" is said once the port refuses new connections (the
            # main task closes it when it next runs; a client that reads the log and connects
            # must not be served, and in between the loop may still accept one).
            first_signal = signal.Signals(signum).name
        else:
            log.info("received %s, stopping now", signal.Signals(signum).name)
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
        log.info(
            "mlx-serve listening on %s (%d models configured, %s event loop)",
            url, len(config.models), event_loop.name(),
        )  # fmt: skip
        for notice in config.notices:
            log.warning("%s", notice)
        if (exposed := exposure_warning(host, resolve_api_key(config.server.api_key))) is not None:
            log.warning("%s", exposed)
        background = _start_reloading(supervisor, reload_requested)
        if on_ready is not None:
            on_ready(ServerHandle(url, supervisor, stop_requested.set))
        await stop_requested.wait()
        # No new connections from here on, before anything below awaits: the listener stays
        # open until runner.cleanup() otherwise, and a request accepted meanwhile was served.
        await site.stop()
        if first_signal is not None:
            log.info("received %s, stopping", first_signal)
        for task in background:
            task.cancel()
        await supervisor.scheduler.close()  # waiters get 503 instead of a dropped connection
        draining = True
        if signals_seen > 1:
            main_task.cancel()  # the second signal came before the drain began: no drain
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
