"""Where the commands print: results on stdout (:data:`out`), everything else on stderr
(:data:`err`), and the one way a command fails (:func:`fail`)."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from mlx_serve.cli.exit_codes import ExitCode

__all__ = ["err", "fail", "log_console", "out", "print_json"]

out = Console(highlight=False)
# Messages are not hard-wrapped at 80 columns: they get copied into searches and scripts.
err = Console(stderr=True, highlight=False, soft_wrap=True)
#: The server's own log (``start`` in the foreground, ``demo``) and what ``start`` and
#: ``init`` report on the way: stderr, so that stdout stays for what scripts read.
log_console = Console(stderr=True)


def fail(message: str | Text, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """Print ``error: message`` (never read as markup) and exit with ``code``."""
    text = Text("error: ", style="bold red")
    text.append_text(message if isinstance(message, Text) else Text(message))
    err.print(text)
    raise typer.Exit(code)


def print_json(data: Any, indent: int | None = 2) -> None:
    # Plain print: rich would wrap long strings and add color codes to what scripts parse.
    sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")
    sys.stdout.flush()
