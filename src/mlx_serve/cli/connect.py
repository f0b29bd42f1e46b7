"""Reaching the server from a command: resolve the settings, make the client, and turn what
goes wrong on the way into a message and an exit code (:mod:`.exit_codes`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.text import Text

from mlx_serve.cli.client import ApiError, Client, ServerNotRunning, Unauthorized
from mlx_serve.cli.exit_codes import ExitCode
from mlx_serve.cli.output import err, fail
from mlx_serve.cli.settings import Settings, load_settings

__all__ = ["api_errors", "ask", "connect", "find_model", "model_name"]

T = TypeVar("T")

#: The last settings :func:`connect` resolved: the error handlers mention a broken config.
_settings: Settings | None = None


def connect(url: str | None, api_key: str | None, config: Path | None) -> tuple[Settings, Client]:
    """The settings (:func:`~mlx_serve.cli.settings.load_settings`, a broken config only
    warned about) and a client for their URL; an invalid ``--url`` is a usage error."""
    global _settings  # noqa: PLW0603 - one command per process
    settings = _settings = load_settings(url, api_key, config)
    if settings.config_error:
        first = settings.config_error.splitlines()[0]
        err.print(Text(f"warning: {first} (using {settings.url})", style="yellow"))
    try:
        return settings, Client(settings.url, settings.api_key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from None


def ask(
    url: str | None, api_key: str | None, config: Path | None, call: Callable[[Client], T]
) -> T:
    """:func:`connect`, then one ``call`` with the client, its errors turned into exit codes
    (the results are rendered outside, so a rendering error is not taken for the server's)."""
    _, client = connect(url, api_key, config)
    with api_errors():
        return call(client)


def _not_running(url: str) -> NoReturn:
    err.print(
        Text(
            f"mlx-serve is not running at {url} "
            "(start it with `mlx-serve start` or `mlx-serve service install`)"
        )
    )
    raise typer.Exit(ExitCode.NOT_RUNNING)


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """Turn client errors into their message and exit code; Ctrl-C into a quiet exit."""
    try:
        yield
    except ServerNotRunning as exc:
        _not_running(exc.url)
    except Unauthorized as exc:
        hint = (
            "hint: pass --api-key, set $MLX_API_KEY, or set server.api_key in the config the "
            "CLI reads (--config)"
        )
        if _settings is not None and _settings.config_error:
            hint += f"; {_settings.config_path} is invalid, so its key could not be read"
        fail(f"{exc.message}\n{hint}", ExitCode.UNAUTHORIZED)
    except ApiError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except BrokenPipeError:
        # `mlx-serve logs | head`: the reader has all it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not fail on the closed pipe too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(ExitCode.OK) from None


def model_name(settings: Settings, name: str) -> str:
    """The configured name for an alias, when the local config knows it (the server resolves
    aliases for the API, but event filters and worker logs use the real name)."""
    if settings.model_names:
        return settings.model_names.get(name, name)
    return name


def find_model(models: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The ``/api/models`` entry of a configured name or alias, as the server resolves it."""
    for model in models:
        if model.get("name") == name:
            return model
    for model in models:
        if name in (model.get("aliases") or []):
            return model
    return None
