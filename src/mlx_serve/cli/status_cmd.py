"""``mlx-serve status`` and ``mlx-serve ps``: what the running server holds, from its API."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.text import Text

from mlx_serve.cli import views
from mlx_serve.cli.client import Client, ServerNotRunning
from mlx_serve.cli.connect import api_errors, ask, connect
from mlx_serve.cli.options import ApiKeyOpt, ConfigOpt, JsonOpt, UrlOpt
from mlx_serve.cli.output import out, print_json
from mlx_serve.cli.settings import Settings

__all__ = ["ps", "status"]


def status(
    *,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh until Ctrl-C")] = False,
    json_output: JsonOpt = False,
    interval: Annotated[
        float, typer.Option("--interval", "-i", min=0.2, help="seconds between refreshes")
    ] = 2.0,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the server (URL, pid, uptime, config) and every model's state, memory and speed.

    Per model: state, memory, last use, idle time left, requests, TTFT and tokens per second.
    """
    settings, client = connect(url, api_key, config)
    where = _server_fields(settings, client)
    with api_errors():
        if json_output and watch:
            # One compact object per line (NDJSON), so a consumer can parse as they come.
            while True:
                print_json(client.stats(), indent=None)
                time.sleep(interval)
        if json_output:
            print_json(client.stats())
            return
        if not watch:
            out.print(views.status_view(client.stats(), **where))
            return
        _watch_status(client, interval, where)


def _server_fields(settings: Settings, client: Client) -> dict[str, Any]:
    """The status header's URL and pid: the pid only from a runtime file that names the very
    server the client talks to."""
    server = settings.server
    pid = server.pid if server is not None and server.url == client.url else None
    return {"url": client.url, "pid": pid}


def _watch_status(client: Client, interval: float, where: Mapping[str, Any]) -> None:
    """Redraw the status in place. A server that goes away is shown, not fatal: the view
    comes back when it does (``restart`` while watching)."""
    from rich.console import Group
    from rich.live import Live

    def frame() -> Group:
        footer = Text(f"every {interval:g}s · Ctrl-C to quit", style="dim")
        try:
            return Group(views.status_view(client.stats(), **where), footer)
        except ServerNotRunning:
            down = Text(f"mlx-serve is not running at {client.url}; retrying", style="bold red")
            return Group(down, footer)

    with Live(frame(), console=out, auto_refresh=False, redirect_stderr=False) as live:
        while True:
            time.sleep(interval)
            live.update(frame(), refresh=True)


def ps(
    *,
    json_output: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the loaded models: type, memory, time until they are unloaded, worker pid."""
    models = ask(url, api_key, config, Client.models)
    loaded = [m for m in models if m.get("status") in views.RESIDENT_STATUSES]
    if json_output:
        print_json({"models": loaded})
    else:
        out.print(views.ps_view(loaded, configured=len(models)))
