"""``mlx-serve models list|load|unload|show|pull|rm``: the models of the running server."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.text import Text

from mlx_serve.cli import views
from mlx_serve.cli.client import ApiError, Client
from mlx_serve.cli.connect import api_errors, ask, connect, find_model
from mlx_serve.cli.options import ApiKeyOpt, ConfigOpt, JsonOpt, UrlOpt
from mlx_serve.cli.output import err, fail, out, print_json

__all__ = ["models_app"]

models_app = typer.Typer(
    name="models",
    help="List, load, unload, inspect, download and delete models.",
    no_args_is_help=True,
)


@models_app.command("list")
def models_list(
    *,
    json_output: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Every configured model, its status and where its weights are."""
    models = ask(url, api_key, config, Client.models)
    if json_output:
        print_json({"models": models})
    else:
        out.print(views.models_table(models))


@models_app.command("load")
def models_load(
    *,
    name: Annotated[str, typer.Argument(help="model name or alias")],
    keep_alive: Annotated[
        str | None,
        typer.Option(help="keep it loaded this long when idle: 30m, 1h, -1 (forever)"),
    ] = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Load a model now (swapping out others if needed), showing its progress."""
    _, client = connect(url, api_key, config)
    started = time.monotonic()
    with api_errors(), err.status(f"{name}: requested", spinner="dots") as spinner:
        for item in client.load(name, keep_alive=keep_alive):
            state = str(item.get("status", "?"))
            elapsed = time.monotonic() - started
            if state == "error":
                spinner.stop()
                fail(str(item.get("error") or "the load failed"))
            if state == "success":
                break
            # Each step on its own line too: piped output (scripts, CI logs) has no spinner.
            err.print(Text(f"{item.get('name', name)}: {state:<9} {elapsed:6.1f}s", style="dim"))
            spinner.update(f"{item.get('name', name)}: {state}")
        else:
            fail("the server closed the connection before the load finished")
    elapsed = time.monotonic() - started
    out.print(Text(f"✓ {item.get('name', name)} loaded in {elapsed:.1f}s", style="green"))


@models_app.command("unload")
def models_unload(
    *,
    name: Annotated[str, typer.Argument(help="model name or alias")],
    force: Annotated[
        bool, typer.Option("--force", help="cut in-flight requests instead of waiting for them")
    ] = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Unload a model: in-flight requests finish first unless --force."""
    _, client = connect(url, api_key, config)
    with api_errors():
        model = find_model(client.models(), name)
        if model is not None and model.get("status") not in views.RESIDENT_STATUSES:
            # Nothing to do, and saying "unloaded" would claim something happened.
            out.print(Text(f"{model.get('name', name)} is not loaded; nothing to unload"))
            return
        with err.status(f"unloading {name}", spinner="dots"):
            result = client.unload(name, force=force)  # an unknown name: the server's 404
    forced = " (forced)" if result.get("forced") else ""
    out.print(
        Text(f"✓ {result.get('name', name)} unloaded in {result.get('duration_s', 0):.1f}s{forced}")
    )


@models_app.command("show")
def models_show(
    *,
    name: Annotated[str, typer.Argument(help="model name or alias")],
    json_output: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Everything about one model: state, memory, request metrics, config, files."""
    data = ask(url, api_key, config, lambda client: client.show(name))
    if json_output:
        print_json(data)
    else:
        out.print(views.show_panel(data))


@models_app.command("pull")
def models_pull(
    *,
    repo: Annotated[str, typer.Argument(help="Hugging Face repo id, e.g. mlx-community/...")],
    revision: Annotated[str | None, typer.Option(help="branch, tag or commit")] = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Download a model into the Hugging Face cache, with a progress bar per file."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.table import Column

    _, client = connect(url, api_key, config)
    tasks: dict[str, TaskID] = {}
    last: dict[str, Any] = {}
    verifying: str | None = None
    progress = Progress(
        TextColumn(
            "{task.description}",
            table_column=Column(no_wrap=True, overflow="ellipsis", max_width=32),
        ),
        BarColumn(bar_width=None),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=out,
    )
    with api_errors(), progress:
        for item in client.pull(repo, revision):
            last = item
            state = str(item.get("status", ""))
            file = item.get("file")
            if state == "error":
                progress.stop()
                fail(str(item.get("error") or "the download failed"))
            elif state == "pulling manifest":
                progress.console.print(
                    Text(
                        f"{repo}: {item.get('files', '?')} files, "
                        f"{views.human_bytes(_number(item.get('total')))}, "
                        f"revision {str(item.get('revision') or '?')[:12]}",
                        style="dim",
                    )
                )
            elif isinstance(file, str) and "completed" in item:
                total = _number(item.get("total"))
                if file not in tasks:
                    tasks[file] = progress.add_task(file, total=total)
                completed = _number(item.get("completed")) or 0
                progress.update(tasks[file], completed=completed, total=total)
            elif isinstance(file, str) and file in tasks and state == "verifying":
                # Checked once complete; whatever comes next means the check passed.
                progress.update(tasks[file], description=f"{file} (verifying)")
                verifying = file
                continue
            elif state and state != "success":
                progress.console.print(Text(f"{state} {file or ''}".rstrip(), style="dim"))
            if verifying is not None:
                progress.update(tasks[verifying], description=verifying)
                verifying = None
    if last.get("status") != "success":
        fail("the server closed the connection before the download finished")
    done = Text(f"✓ pulled {repo}", style="green")
    size, fetched = _number(last.get("bytes")), _number(last.get("downloaded_bytes"))
    if size is not None:
        done.append(f" ({views.human_bytes(size)}, {views.human_bytes(fetched)} downloaded)")
    if last.get("path"):
        done.append(f"\n{last['path']}", style="dim")
    out.print(done)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@models_app.command("rm")
def models_rm(
    *,
    name: Annotated[str, typer.Argument(help="model name or alias")],
    local: Annotated[
        bool, typer.Option("--local", help="the model is a local directory: delete it")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete a model's files (from the Hugging Face cache, or its directory with --local).

    The model stays configured; it is downloaded again the next time it is loaded.
    """
    _, client = connect(url, api_key, config)
    with api_errors():
        model = find_model(client.models(), name)
        if model is not None:
            path = str(model.get("path", ""))
            local_dir = path.startswith("/")  # the config resolves local paths to absolute
            if local_dir and not local:
                # Before asking: a "yes" must not be answered with "you needed --local".
                fail(f"{name!r} is a local directory ({path}); add --local to delete it")
            if not yes:
                what = f"the directory {path}" if local_dir else f"the cached files of {path}"
                typer.confirm(f"Delete {what}?", abort=True, err=True)
        try:
            result = client.delete(name, local=local)
        except ApiError as exc:
            if exc.code == "local_model":
                fail(f"{name!r} is a local directory; add --local to delete it")
            raise
    freed = views.human_bytes(result.get("freed_bytes"))
    out.print(Text(f"✓ deleted {result.get('deleted')} ({freed} freed)", style="green"))
