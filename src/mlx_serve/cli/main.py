"""``mlx-serve``: thin typer commands; the work happens in the modules they call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from mlx_serve import __version__
from mlx_serve.cli import commands
from mlx_serve.cli.client import url_for
from mlx_serve.cli.commands import ConfigOpt, write_example_config
from mlx_serve.cli.exit_codes import ExitCode, table_text
from mlx_serve.cli.service_cmd import build_app as build_service_app
from mlx_serve.config import ConfigError, find_config_path, load_config
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
    write_runtime,
)

#: ``-h`` as well as ``--help``, on every command (sub-commands inherit it).
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="mlx-serve",
    help="Always-on local inference server for MLX models (OpenAI API, hot-swapped models).",
    epilog="\b\nExit codes:\n" + table_text(),
    no_args_is_help=True,
    add_completion=False,
    context_settings=CONTEXT_SETTINGS,
)
console = Console(stderr=True)
log = logging.getLogger("mlx_serve")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if not sys.stderr.isatty():
        # A service log file: one plain line per record, never wrapped at 80 columns.
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )


def _fail(message: str, code: ExitCode = ExitCode.FAILED) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mlx-serve {__version__}")
        raise typer.Exit(ExitCode.OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """Always-on local inference server for MLX models (OpenAI API, hot-swapped models)."""


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def init(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
    print_only: Annotated[
        bool, typer.Option("--print", help="print the example, write nothing")
    ] = False,
) -> None:
    """Write a commented example models.yaml."""
    from mlx_serve.config import example_config_text

    if print_only:
        typer.echo(example_config_text(), nl=False)
        return
    path = find_config_path(config)
    if path.exists() and not force:
        raise _fail(f"{path} already exists (use --force to overwrite)")
    write_example_config(path)
    console.print(f"wrote {path}")
    console.print(init_next_steps(path), highlight=False)


def init_next_steps(path: Path) -> str:
    """What to do after ``init``: start, get a model's files (or let ``auto_pull`` do it),
    and where clients and the dashboard are. Lines fit 80 columns but for long names."""
    from mlx_serve.hub import check_model_files

    cfg = load_config(path)
    base = url_for(cfg.server.host, cfg.server.port)
    missing = [
        model.path
        for model in cfg.models.values()
        if (lack := check_model_files(model.path)) is not None and lack.pullable
    ]
    steps = [f"edit {path}: keep the models you want", "mlx-serve start --detach"]
    if missing:
        others = "each other model you keep; " if len(missing) > 1 else ""
        steps.append(
            f"mlx-serve models pull {missing[0]}\n"
            f"     ({others}or set server.auto_pull: true to download\n"
            "     a model when a request first needs it)"
        )
    steps.append(f"clients: {base}/v1   dashboard: {base}/")
    return "next steps:\n" + "\n".join(f"  {i}. {step}" for i, step in enumerate(steps, 1))


@app.command()
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
        raise _fail(f"no config at {path}; run `mlx-serve init` to write one", ExitCode.USAGE)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc), ExitCode.USAGE) from exc
    data_dir = cfg.server.data_dir or home_dir()
    # One decision, before anything else: whoever holds the data dir's lock is the server. It
    # is held until this process exits; the OS drops it even on SIGKILL, so nothing is stale.
    try:
        lock = acquire_lock(data_dir)
    except AlreadyRunning as exc:
        raise _fail(f"{exc}{_where(data_dir, exc.pid)}; `mlx-serve stop` first") from exc
    except OSError as exc:
        raise _fail(f"could not lock {lock_path(data_dir)}: {exc}") from exc
    with lock:
        if running_pid(data_dir) is None:
            # Left by a server that was killed: nobody else holds the lock, nobody serves.
            pid_path(data_dir).unlink(missing_ok=True)
        # Same for a killed server's runtime file (and its copy in the default data dir).
        for stale in (runtime_path(data_dir), pointer_path(home_dir(), data_dir)):
            info = read_runtime(stale)
            if info is not None and _same_dir(info.data_dir, data_dir):
                stale.unlink(missing_ok=True)
        bind_host = host or cfg.server.host
        bind_port = cfg.server.port if port is None else port
        try:
            _check_port(bind_host, bind_port)
        except OSError as exc:
            # Before any worker starts: a taken port fails here, not after a preload began.
            raise _fail(f"could not start the server: {exc}") from exc
        if detach:
            lock.release()  # the background server takes it (or fails, if another start won)
            _start_detached(path, data_dir, host=host, port=port, verbose=verbose)
            return
        from mlx_serve.server import ServerHandle, serve

        _setup_logging(verbose)
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

            asyncio.run(serve(cfg, data_dir=data_dir, host=host, port=port, on_ready=ready))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        except OSError as exc:
            raise _fail(f"could not start the server: {exc}") from exc
        finally:
            # Before the lock goes: the next server's files are its own.
            remove_runtime(written)
            remove_pid(data_dir)


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.normpath(a.absolute()) == os.path.normpath(b.absolute())


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
    import subprocess
    import time

    log_file = data_dir / "logs" / "server.log"
    argv = [sys.executable, "-m", "mlx_serve.cli.main", "start", "--config", str(config.resolve())]
    argv += ["--host", host] if host else []
    argv += ["--port", str(port)] if port is not None else []
    argv += ["--verbose"] if verbose else []
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            code = ExitCode.USAGE if proc.returncode == ExitCode.USAGE else ExitCode.FAILED
            raise _fail(f"the server exited with code {proc.returncode}; see {log_file}", code)
        if running_pid(data_dir) == proc.pid:
            console.print(
                f"mlx-serve started in the background (pid {proc.pid}); log: {log_file}",
                soft_wrap=True,  # the path stays copy-pasteable
            )
            info = read_runtime(runtime_path(data_dir))
            if info is not None and info.pid == proc.pid:
                console.print(f"  OpenAI API  {info.api_url}", highlight=False)
                console.print(f"  dashboard   {info.dashboard_url}", highlight=False)
            return
        time.sleep(0.1)
    raise _fail(f"the server did not start within 60 s; see {log_file}")


@app.command()
def demo(
    exit_after: Annotated[bool, typer.Option("--exit", help="stop after the tour")] = False,
    port: Annotated[int, typer.Option(help="port for the demo server")] = 8095,
    workdir: Annotated[
        Path | None, typer.Option(help="where demo models go (default ~/.mlx-serve/demo)")
    ] = None,
) -> None:
    """Build tiny random-weight demo models, serve them, and tour every endpoint."""
    from mlx_serve.demo import run_demo

    _setup_logging(False)
    code = run_demo(workdir or home_dir() / "demo", port=port, exit_after=exit_after)
    sys.exit(code)


commands.register(app)
service_app = build_service_app()
app.add_typer(service_app, name="service", help="Install mlx-serve as a launchd / systemd service.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
