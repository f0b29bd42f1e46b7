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
from mlx_serve.config import ConfigError, example_config_text, find_config_path, load_config
from mlx_serve.paths import home_dir

app = typer.Typer(
    name="mlx-serve",
    help="Always-on local inference server for MLX models (OpenAI API, hot-swapped models).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="models.yaml (default: $MLX_SERVE_CONFIG, then ~/.mlx-serve/models.yaml)",
    ),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the server in the foreground until Ctrl-C / SIGTERM."""
    from mlx_serve.server import serve

    _setup_logging(verbose)
    path = find_config_path(config)
    if not path.exists():
        raise _fail(f"no config at {path}; run `mlx-serve init` to write one")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from exc
    data_dir = cfg.server.data_dir or home_dir()
    try:
        asyncio.run(serve(cfg, data_dir=data_dir, host=host, port=port))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except OSError as exc:
        raise _fail(f"could not start the server: {exc}") from exc


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
