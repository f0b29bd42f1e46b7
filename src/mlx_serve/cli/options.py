"""The options the commands share (``--url``, ``--api-key``, ``--config``, ``--json``,
``--timeout``), declared once so that they read the same in every command's help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ApiKeyOpt", "ConfigOpt", "JsonOpt", "TimeoutOpt", "UrlOpt"]

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="server URL (default: $MLX_SERVE_URL, else the running server's, else "
        "host:port from the config)",
        show_default=False,
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="API key (default: server.api_key from the config, else $MLX_API_KEY)",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="models.yaml (default: $MLX_SERVE_CONFIG, then ~/.mlx-serve/models.yaml)",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON")]

TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=1, help="seconds to wait for it to exit")
]
