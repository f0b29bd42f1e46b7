"""The server's lifecycle: ``start`` (the server process itself, in the foreground or
detached), ``stop``, ``restart`` and ``reload``.

``start`` holds the data dir's instance lock (:mod:`mlx_serve.pidfile`) for the server's
lifetime and writes the runtime file (:mod:`mlx_serve.runtime_file`) once it listens. ``stop``
and ``restart`` find the server through that file (else the pid file) and signal it, so they
work while it is too busy to answer or its config is broken; ``reload`` asks it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.logging import RichHandler
from rich.text import Text

from mlx_serve import __version__, event_loop
from mlx_serve.cli import views
from mlx_serve.cli.client import ServerTooOld
from mlx_serve.cli.connect import api_errors, connect
from mlx_serve.cli.exit_codes import ExitCode
from mlx_serve.cli.options import ApiKeyOpt, ConfigOpt, JsonOpt, TimeoutOpt, UrlOpt
from mlx_serve.cli.output import err, fail, log_console, out, print_json
from mlx_serve.cli.settings import Settings, load_settings, url_for
from mlx_serve.config import CONFIG_ENV_VAR, ConfigError, find_config_path, load_config
from mlx_serve.paths import home_dir
from mlx_serve.pidfile import (
    AlreadyRunning,
    acquire_lock,
    lock_path,
    pid_path,
    remove_pid,
    running_pid,
    write_pid,
)
from mlx_serve.runtime_file import (
    RuntimeInfo,
    is_alive,
    pointer_path,
    read_runtime,
    remove_runtime,
    runtime_path,
    same_dir,
    write_runtime,
)

if TYPE_CHECKING:
    import psutil

__all__ = ["reload", "restart", "setup_logging", "start", "stop"]

#: How often ``stop`` checks whether the server has exited (it takes a second or more).
STOP_POLL_INTERVAL = 0.1

log = logging.getLogger("mlx_serve")


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if not sys.stderr.isatty():
        # A service log file: one plain line per record, never wrapped at 80 columns.
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=log_console, show_path=False, rich_tracebacks=False)],
    )


def start(
    config: ConfigOpt = None,
    host: Annotated[
        str | None, typer.Option(help="bind address (default from config: 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default from config: 8095)")] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="run in the background (see `mlx-serve stop`)")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="log debug detail too (worker starts, probes, requests)"
        ),
    ] = False,
) -> None:
    """Run the server (in the foreground unless --detach) until Ctrl-C / SIGTERM / `stop`."""
    path = find_config_path(config)
    if not path.exists():
        fail(f"no config at {path}; run `mlx-serve init` to write one", ExitCode.USAGE)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    data_dir = cfg.server.data_dir or home_dir()
    # One decision, before anything else: whoever holds the data dir's lock is the server. It
    # is held until this process exits; the OS drops it even on SIGKILL, so nothing is stale.
    try:
        lock = acquire_lock(data_dir)
    except AlreadyRunning as exc:
        fail(f"{exc}{_where(data_dir, exc.pid)}; `mlx-serve stop` first")
    except OSError as exc:
        fail(f"could not lock {lock_path(data_dir)}: {exc}")
    with lock:
        if running_pid(data_dir) is None:
            # Left by a server that was killed: nobody else holds the lock, nobody serves.
            pid_path(data_dir).unlink(missing_ok=True)
        # Same for a killed server's runtime file (and its copy in the default data dir).
        for stale in (runtime_path(data_dir), pointer_path(home_dir(), data_dir)):
            info = read_runtime(stale)
            if info is not None and same_dir(info.data_dir, data_dir):
                stale.unlink(missing_ok=True)
        bind_host = host or cfg.server.host
        bind_port = cfg.server.port if port is None else port
        try:
            _check_port(bind_host, bind_port)
        except OSError as exc:
            # Before any worker starts: a taken port fails here, not after a preload began.
            fail(f"could not start the server: {exc}")
        if detach:
            lock.release()  # the background server takes it (or fails, if another start won)
            _start_detached(path, data_dir, host=host, port=port, verbose=verbose)
            return
        from mlx_serve.server import ServerHandle, serve

        setup_logging(verbose)
        written: list[Path] = []
        try:

            def ready(handle: ServerHandle) -> None:
                # The runtime file, then the pid file, once the server listens: `start
                # --detach` waits for the pid file, and then finds the runtime file too.
                listening = bind_port or _listening_port()
                info = RuntimeInfo(
                    pid=os.getpid(),
                    url=url_for(bind_host, listening),
                    host=bind_host,
                    port=listening,
                    data_dir=data_dir,
                    config_path=cfg.source,
                    version=__version__,
                    started_at=handle.supervisor.started_at,
                    argv_host=host,
                    argv_port=port,
                )
                try:
                    written.extend(write_runtime(info, home_dir()))
                except OSError as exc:
                    log.warning("could not write %s: %s", runtime_path(data_dir), exc)
                write_pid(data_dir)
                log.info("OpenAI API: %s · dashboard: %s", info.api_url, info.dashboard_url)

            event_loop.run(serve(cfg, data_dir=data_dir, host=host, port=port, on_ready=ready))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        except OSError as exc:
            fail(f"could not start the server: {exc}")
        finally:
            # Before the lock goes: the next server's files are its own.
            remove_runtime(written)
            remove_pid(data_dir)


def _where(data_dir: Path, pid: int | None) -> str:
    """`` at http://127.0.0.1:8095`` for the server that holds ``data_dir``, when its runtime
    file names it."""
    info = read_runtime(runtime_path(data_dir))
    if info is None or (pid is not None and info.pid != pid) or not is_alive(info):
        return ""
    return f" at {info.url}"


def _listening_port() -> int:
    """The port this process listens on (``--port 0`` lets the OS pick one): the server's
    only listening socket, its workers being other processes."""
    import psutil

    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                return int(conn.laddr.port)
    return 0


def _check_port(host: str, port: int) -> None:
    """Raise OSError (as the server's own bind would) if ``host:port`` cannot be bound, e.g.
    because another program listens on it. Binds like asyncio's server: SO_REUSEADDR, every
    address the host resolves to, IPv6 sockets v6-only."""
    import socket

    if port == 0:
        return
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, addr in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {addr!r}: {reason}"
                ) from None


def _start_detached(
    config: Path, data_dir: Path, *, host: str | None, port: int | None, verbose: bool
) -> None:
    """Start ``mlx-serve start`` as a new session in the background; wait until it listens."""
    log_file = data_dir / "logs" / "server.log"
    argv = [sys.executable, "-m", "mlx_serve.cli.main", "start", "--config", str(config.resolve())]
    argv += ["--host", host] if host else []
    argv += ["--port", str(port)] if port is not None else []
    argv += ["--verbose"] if verbose else []
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log_out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            code = ExitCode.USAGE if proc.returncode == ExitCode.USAGE else ExitCode.FAILED
            fail(f"the server exited with code {proc.returncode}; see {log_file}", code)
        if running_pid(data_dir) == proc.pid:
            log_console.print(
                f"mlx-serve started in the background (pid {proc.pid}); log: {log_file}",
                soft_wrap=True,  # the path stays copy-pasteable
            )
            info = read_runtime(runtime_path(data_dir))
            if info is not None and info.pid == proc.pid:
                log_console.print(f"  OpenAI API  {info.api_url}", highlight=False)
                log_console.print(f"  dashboard   {info.dashboard_url}", highlight=False)
            return
        time.sleep(0.1)
    fail(f"the server did not start within 60 s; see {log_file}")


def _stop_server(settings: Settings, timeout: float) -> int | None:
    """SIGTERM the running server and wait for it to exit; return its pid, or None if no
    server is running. Exits with an error if it does not stop in time.

    The server is the one its runtime file names (found even when models.yaml is broken or
    names another port or data dir now), else the one in the pid file of the config's data
    dir (a server older than the runtime file). Both are checked to be an mlx-serve server: a
    stale file whose pid was reused by another program after a crash must never get that
    program killed."""
    import psutil

    pid = settings.server.pid if settings.server is not None else running_pid(settings.data_dir)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    except PermissionError:
        fail(f"not allowed to signal mlx-serve (pid {pid}): it was started by another user")
    with err.status(f"stopping mlx-serve (pid {pid}) and its workers", spinner="dots"):
        deadline = started + timeout
        while _alive(proc):
            if time.monotonic() > deadline:
                fail(
                    f"mlx-serve (pid {pid}) is still running after {timeout:g}s; "
                    f"`kill -9 {pid}` stops it at once (its workers exit with it)"
                )
            time.sleep(STOP_POLL_INTERVAL)
    err.print(Text(f"stopped mlx-serve (pid {pid}) in {time.monotonic() - started:.1f}s"))
    return pid


def _alive(proc: psutil.Process) -> bool:
    """Whether the server still runs. A zombie has exited: its parent (the shell that ran
    `mlx-serve start`) just has not collected its status yet, and may never while we wait."""
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop(*, config: ConfigOpt = None, timeout: TimeoutOpt = 60.0) -> None:
    """Stop the running server (started with `start`, detached or not) and its workers."""
    # A live pid is enough: a server too busy to answer /health must still be stoppable.
    settings = load_settings(config=config, check_health=False)
    with api_errors():
        pid = _stop_server(settings, timeout)
    if pid is None:
        err.print(
            Text(f"mlx-serve is not running (no live server in {pid_path(settings.data_dir)})")
        )
        raise typer.Exit(ExitCode.NOT_RUNNING)


def restart(*, config: ConfigOpt = None, timeout: TimeoutOpt = 60.0) -> None:
    """Stop the server (if it runs) and start it again in the background (`start --detach`).

    It restarts with the same config file (or --config) and the same --host/--port options.

    The config is checked first: if it is invalid, the running server is left alone.
    """
    settings = load_settings(config=config, check_health=False)
    server = settings.server
    path = settings.config_path
    named = config is not None or bool(os.environ.get(CONFIG_ENV_VAR, "").strip())
    if not named and server is not None and server.config_path is not None:
        path = server.config_path  # restart what runs, not whatever the default config is
    running = f"the running server (pid {server.pid}) is left alone" if server else ""
    if not path.exists():
        fail(
            f"no config at {path}; run `mlx-serve init` to write one"
            + (f"; {running}" if running else ""),
            ExitCode.USAGE,
        )
    try:
        load_config(path)
    except ConfigError as exc:
        # Stopping first would leave nothing serving until the file is fixed.
        fail(
            f"{exc}\n{running or 'nothing was started'}: fix the file and run `mlx-serve "
            "restart` again (`mlx-serve reload` applies model changes without a restart)",
            ExitCode.USAGE,
        )
    with api_errors():
        if _stop_server(settings, timeout) is None:
            err.print(Text("mlx-serve was not running; starting it", style="dim"))
    argv = [sys.executable, "-m", "mlx_serve.cli.main", "start", "--detach"]
    argv += ["--config", str(path)]
    if server is not None and server.argv_host is not None:
        argv += ["--host", server.argv_host]
    if server is not None and server.argv_port is not None:
        argv += ["--port", str(server.argv_port)]
    raise typer.Exit(subprocess.call(argv))


def reload(
    *,
    json_output: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Re-read models.yaml in the running server without dropping loaded models."""
    _, client = connect(url, api_key, config)
    with api_errors():
        try:
            result = client.reload()
        except ServerTooOld:
            fail(
                f"the server at {client.url} has no reload (it is older than this CLI); "
                "restart it to apply the config: `mlx-serve restart`"
            )
    if json_output:
        print_json(result)
    else:
        out.print(views.reload_summary(result))
    if result.get("status") != "ok":
        raise typer.Exit(ExitCode.USAGE)
