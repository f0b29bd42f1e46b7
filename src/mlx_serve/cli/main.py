"""``mlx-serve``: thin typer commands; the work happens in the modules they call."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from mlx_serve import __version__
from mlx_serve.cli import commands
from mlx_serve.cli.commands import ConfigOpt
from mlx_serve.cli.service_cmd import build_app as build_service_app
from mlx_serve.config import ConfigError, example_config_text, find_config_path, load_config
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

app = typer.Typer(
    name="mlx-serve",
    help="Always-on local inference server for MLX models (OpenAI API, hot-swapped models).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


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


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


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
    text = example_config_text()
    if print_only:
        typer.echo(text, nl=False)
        return
    path = find_config_path(config)
    if path.exists() and not force:
        raise _fail(f"{path} already exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # never a half-written config
    console.print(f"wrote {path}")


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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the server (in the foreground unless --detach) until Ctrl-C / SIGTERM / `stop`."""
    path = find_config_path(config)
    if not path.exists():
        raise _fail(f"no config at {path}; run `mlx-serve init` to write one")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from exc
    data_dir = cfg.server.data_dir or home_dir()
    # One decision, before anything else: whoever holds the data dir's lock is the server. It
    # is held until this process exits; the OS drops it even on SIGKILL, so nothing is stale.
    try:
        lock = acquire_lock(data_dir)
    except AlreadyRunning as exc:
        raise _fail(f"{exc}; `mlx-serve stop` first") from exc
    except OSError as exc:
        raise _fail(f"could not lock {lock_path(data_dir)}: {exc}") from exc
    with lock:
        if running_pid(data_dir) is None:
            # Left by a server that was killed: nobody else holds the lock, nobody serves.
            pid_path(data_dir).unlink(missing_ok=True)
        try:
            _check_port(host or cfg.server.host, cfg.server.port if port is None else port)
        except OSError as exc:
            # Before any worker starts: a taken port fails here, not after a preload began.
            raise _fail(f"could not start the server: {exc}") from exc
        if detach:
            lock.release()  # the background server takes it (or fails, if another start won)
            _start_detached(path, data_dir, host=host, port=port, verbose=verbose)
            return
        from mlx_serve.server import serve

        _setup_logging(verbose)
        try:

            def ready(_handle: object) -> None:
                # The pid file appears once the server listens: `start --detach` waits for it.
                write_pid(data_dir)

            asyncio.run(serve(cfg, data_dir=data_dir, host=host, port=port, on_ready=ready))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        except OSError as exc:
            raise _fail(f"could not start the server: {exc}") from exc
        finally:
            remove_pid(data_dir)  # before the lock goes: the next server's file is its own


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

    argv = [sys.executable, "-m", "mlx_serve.cli.main", "start", "--config", str(config.resolve())]
    argv += ["--host", host] if host else []
    argv += ["--port", str(port)] if port else []
    argv += ["--verbose"] if verbose else []
    log = data_dir / "logs" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _fail(f"the server exited with code {proc.returncode}; see {log}")
        if running_pid(data_dir) == proc.pid:
            console.print(f"mlx-serve started in the background (pid {proc.pid}); log: {log}")
            return
        time.sleep(0.1)
    raise _fail(f"the server did not start within 60 s; see {log}")


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
