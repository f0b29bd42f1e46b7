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
from mlx_serve.pidfile import remove_pid, running_pid, write_pid

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
    running = running_pid(data_dir)
    if running is not None:
        raise _fail(f"mlx-serve is already running (pid {running}); `mlx-serve stop` first")
    if detach:
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
        remove_pid(data_dir)


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
