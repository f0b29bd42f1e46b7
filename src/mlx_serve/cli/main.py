"""``mlx-serve``: thin typer commands; the work happens in the modules they call.

The commands live by what they do: :mod:`.init_cmd` (``init``), :mod:`.server_cmd`
(``start``, ``stop``, ``restart``, ``reload``), :mod:`.status_cmd` (``status``, ``ps``),
:mod:`.logs_cmd` (``logs``), :mod:`.models_cmd` (``models ...``) and :mod:`.service_cmd`
(``service ...``); they find the server with :mod:`.settings`, call it with :mod:`.client`
and render with :mod:`.views`. Exit codes are part of the interface, so scripts can tell
"not running" from "refused" from "misconfigured": see :mod:`.exit_codes`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mlx_serve import __version__
from mlx_serve.cli.exit_codes import ExitCode, table_text
from mlx_serve.cli.init_cmd import init
from mlx_serve.cli.logs_cmd import logs
from mlx_serve.cli.models_cmd import models_app
from mlx_serve.cli.server_cmd import reload, restart, setup_logging, start, stop
from mlx_serve.cli.service_cmd import build_app as build_service_app
from mlx_serve.cli.status_cmd import ps, status
from mlx_serve.paths import home_dir

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


def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def demo(
    exit_after: Annotated[bool, typer.Option("--exit", help="stop after the tour")] = False,
    port: Annotated[int, typer.Option(help="port for the demo server")] = 8095,
    workdir: Annotated[
        Path | None, typer.Option(help="where demo models go (default ~/.mlx-serve/demo)")
    ] = None,
) -> None:
    """Build the demo models (real SmolLM2 and Whisper tiny.en), serve them, tour the endpoints."""
    from mlx_serve.demo import run_demo

    setup_logging(False)
    code = run_demo(workdir or home_dir() / "demo", port=port, exit_after=exit_after)
    sys.exit(code)


# In this order in `mlx-serve --help`.
for command in (version, init, start, demo, status, ps, logs, stop, restart, reload):
    app.command()(command)
app.add_typer(models_app, name="models")
service_app = build_service_app()
app.add_typer(service_app, name="service", help="Install mlx-serve as a launchd / systemd service.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
