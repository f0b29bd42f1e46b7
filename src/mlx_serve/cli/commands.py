"""The commands that operate a running server: ``status``, ``ps``, ``logs``, ``models ...``,
``stop``, ``restart``, ``reload``. ``register(app)`` mounts them on the main typer app.

They find the server through its runtime file first (:mod:`mlx_serve.runtime_file`: the
address it really listens on, whatever models.yaml says now), then through the config. They
talk to it over HTTP (:mod:`.client`) and render with :mod:`.views`; the few that must work
while the server is down or unreachable (``stop``, ``logs`` from the event file, ``logs
--worker``) use the pid and the data directory instead. Exit codes are part of the interface,
so scripts can tell "not running" from "refused" from "misconfigured": see
:mod:`.exit_codes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from mlx_serve.cli import views
from mlx_serve.cli.client import (
    ApiError,
    Client,
    ServerNotRunning,
    ServerTooOld,
    Settings,
    Unauthorized,
    load_settings,
    parse_since,
)
from mlx_serve.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    import psutil

__all__ = [
    "models_app",
    "register",
    "worker_log_path",
    "write_example_config",
]

#: How often ``logs -f`` looks for new lines in a file (a worker log, or the event log while
#: the server is down). Files have no push notification that works everywhere without a
#: dependency; a quarter second is well below what a person reading a log notices.
FILE_POLL_INTERVAL = 0.25
#: How often ``stop`` checks whether the server has exited (it takes a second or more).
STOP_POLL_INTERVAL = 0.1

out = Console(highlight=False)
# Messages are not hard-wrapped at 80 columns: they get copied into searches and scripts.
err = Console(stderr=True, highlight=False, soft_wrap=True)

# --------------------------------------------------------------------- options

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


def write_example_config(path: Path) -> None:
    """Write the commented example models.yaml to ``path`` (``init``, and ``service install``
    on a machine without a config), atomically: never a half-written config."""
    from mlx_serve.config import example_config_text

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(example_config_text(), encoding="utf-8")
    tmp.replace(path)


#: The last settings :func:`_connect` resolved: the error handlers mention a broken config.
_settings: Settings | None = None


def _connect(url: str | None, api_key: str | None, config: Path | None) -> tuple[Settings, Client]:
    global _settings  # noqa: PLW0603 - one command per process
    settings = _settings = load_settings(url, api_key, config)
    if settings.config_error:
        first = settings.config_error.splitlines()[0]
        err.print(Text(f"warning: {first} (using {settings.url})", style="yellow"))
    try:
        return settings, Client(settings.url, settings.api_key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from None


def _fail(message: str | Text, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    text = Text("error: ", style="bold red")
    text.append_text(message if isinstance(message, Text) else Text(message))
    err.print(text)
    raise typer.Exit(code)


def _not_running(url: str) -> NoReturn:
    err.print(
        Text(
            f"mlx-serve is not running at {url} "
            "(start it with `mlx-serve start` or `mlx-serve service install`)"
        )
    )
    raise typer.Exit(ExitCode.NOT_RUNNING)


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
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
        _fail(f"{exc.message}\n{hint}", ExitCode.UNAUTHORIZED)
    except ApiError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except BrokenPipeError:
        # `mlx-serve logs | head`: the reader has all it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not fail on the closed pipe too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(ExitCode.OK) from None


def _print_json(data: Any, indent: int | None = 2) -> None:
    # Plain print: rich would wrap long strings and add color codes to what scripts parse.
    sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")
    sys.stdout.flush()


def _model_name(settings: Settings, name: str) -> str:
    """The configured name for an alias, when the local config knows it (the server resolves
    aliases for the API, but event filters and worker logs use the real name)."""
    if settings.model_names:
        return settings.model_names.get(name, name)
    return name


# ---------------------------------------------------------------------- status


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
    settings, client = _connect(url, api_key, config)
    where = _server_fields(settings, client)
    with _api_errors():
        if json_output and watch:
            # One compact object per line (NDJSON), so a consumer can parse as they come.
            while True:
                _print_json(client.stats(), indent=None)
                time.sleep(interval)
        if json_output:
            _print_json(client.stats())
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


# -------------------------------------------------------------------------- ps


def ps(
    *,
    json_output: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the loaded models: type, memory, time until they are unloaded, worker pid."""
    _, client = _connect(url, api_key, config)
    with _api_errors():
        models = client.models()
    loaded = [m for m in models if m.get("status") in views.RESIDENT_STATUSES]
    if json_output:
        _print_json({"models": loaded})
    else:
        out.print(views.ps_view(loaded, configured=len(models)))


# ------------------------------------------------------------------------ logs


def logs(
    *,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events")
    ] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="only this model")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="only events after this: a duration back (10m), ISO time or unix time"),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--type", "-t", help="only this event kind or family (request, worker)"),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker", help="print this model's worker log (a local file) instead of events"
        ),
    ] = None,
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, help="how many to show")] = 50,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print lifecycle events (loads, swaps, crashes, requests), or a worker's own log.

    While the server is down, events come from the event log file in the data directory.
    """
    try:
        since_ts = parse_since(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    settings, client = _connect(url, api_key, config)
    if worker is not None:
        _worker_log(settings, _model_name(settings, worker), lines, follow)
        return
    model = _model_name(settings, model) if model else None
    with _api_errors():
        try:
            if follow:
                # One subscription replays the last `lines` events and then streams: nothing
                # can fall between a separate fetch and the start of the stream.
                # `-n 0`: no history at all, only what happens from now on.
                replay = (since_ts if since_ts is not None else 0.0) if lines else None
                stream = client.follow_events(model, since=replay, kind=kind, limit=lines)
            else:
                events = client.events(model, since=since_ts, kind=kind, limit=lines)
                events = events[-lines:] if lines else []
        except ServerNotRunning as exc:
            path = settings.data_dir / "events.jsonl"
            err.print(
                Text(f"mlx-serve is not running at {exc.url}; reading {path}", style="yellow")
            )
            _file_events(path, model=model, kind=kind, since=since_ts, lines=lines, follow=follow)
            return
        if not follow:
            for event in events:
                out.print(views.event_line(event))
            return
        for event in stream:
            out.print(views.event_line(event))
        err.print(Text("the server closed the event stream (it stopped)", style="yellow"))


def _matches(
    event: Mapping[str, Any], model: str | None, kind: str | None, since: float | None
) -> bool:
    """The server's filter (``EventBus.recent``), for events read from the file."""
    event_kind = str(event.get("kind", ""))
    ts = event.get("ts")
    return (
        (model is None or event.get("model") == model)
        and (kind is None or event_kind == kind or event_kind.startswith(kind + "."))
        and (since is None or (isinstance(ts, int | float) and ts >= since))
    )


def _file_events(
    path: Path,
    *,
    model: str | None,
    kind: str | None,
    since: float | None,
    lines: int,
    follow: bool,
) -> None:
    from mlx_serve.observability.event_log import read_events

    # The size before reading: a line appended meanwhile is shown twice rather than lost.
    offset = _size(path)
    matching = [e for e in read_events(path, limit=100_000) if _matches(e, model, kind, since)]
    for event in matching[-lines:] if lines else []:
        out.print(views.event_line(event))
    if not follow:
        return
    with _api_errors():
        # A server started meanwhile appends its events to the same file.
        for line in _follow_file(path, offset):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and _matches(event, model, kind, since):
                out.print(views.event_line(event))


def worker_log_path(data_dir: Path, name: str) -> Path:
    """Where the supervisor writes the worker log of model ``name``.

    Mirrors ``supervisor.worker._safe_filename``, which the CLI does not import (it would
    pull aiohttp into every command); a unit test keeps the two identical.
    """
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return data_dir / "logs" / f"{cleaned or 'model'}.log"


def _worker_log(settings: Settings, name: str, lines: int, follow: bool) -> None:
    """Print the worker's own output (the model library's log, tracebacks), read from the
    local data directory: the server need not run, and no HTTP is involved."""
    path = worker_log_path(settings.data_dir, name)
    if not path.exists() and not follow:
        _fail(f"no worker log for {name!r} at {path} (the model has not been started yet?)")
    with _api_errors():
        tail, offset = _tail(path, lines)
        sys.stdout.writelines(tail)
        sys.stdout.flush()
        if follow:
            for line in _follow_file(path, offset):
                sys.stdout.write(line)
                sys.stdout.flush()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _tail(path: Path, count: int, block: int = 64 * 1024) -> tuple[list[str], int | None]:
    """The last ``count`` lines of a file, read backwards from its end (worker logs grow
    large), and the offset they end at (None if there is no file)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return [], None
    if count <= 0:
        with f:
            return [], f.seek(0, os.SEEK_END)
    with f:
        end = position = f.seek(0, os.SEEK_END)
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines(keepends=True)
    return lines[-count:], end


def _follow_file(path: Path, offset: int | None) -> Iterator[str]:
    """Complete lines appended to ``path`` after ``offset``, forever.

    ``offset`` None means the file did not exist: all of it is new once it appears. A file
    that is rotated (a new inode) or truncated is read again from its start, after what was
    left in the old one.
    """
    handle: BinaryIO | None = None
    inode: int | None = None
    partial = b""
    try:
        while True:
            if handle is None:
                try:
                    handle = path.open("rb")
                except FileNotFoundError:
                    offset = None
                    time.sleep(FILE_POLL_INTERVAL)
                    continue
                inode = os.fstat(handle.fileno()).st_ino
                size = os.fstat(handle.fileno()).st_size
                handle.seek(offset if offset is not None and offset <= size else 0)
                offset = None  # a file opened again later is new from its first byte
            line = handle.readline()
            if line:
                partial += line
                if partial.endswith(b"\n"):
                    yield partial.decode("utf-8", "replace")
                    partial = b""
                continue
            time.sleep(FILE_POLL_INTERVAL)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # mid-rotation: the new file appears in a moment
            if stat.st_ino != inode or stat.st_size < handle.tell():
                for rest in handle:  # what was written to the old file before it was moved
                    yield (partial + rest).decode("utf-8", "replace")
                    partial = b""
                handle.close()
                handle = None
    finally:
        if handle is not None:
            handle.close()


# ---------------------------------------------------------------------- models

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
    _, client = _connect(url, api_key, config)
    with _api_errors():
        models = client.models()
    if json_output:
        _print_json({"models": models})
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
    _, client = _connect(url, api_key, config)
    started = time.monotonic()
    with _api_errors(), err.status(f"{name}: requested", spinner="dots") as spinner:
        for item in client.load(name, keep_alive=keep_alive):
            state = str(item.get("status", "?"))
            elapsed = time.monotonic() - started
            if state == "error":
                spinner.stop()
                _fail(str(item.get("error") or "the load failed"))
            if state == "success":
                break
            # Each step on its own line too: piped output (scripts, CI logs) has no spinner.
            err.print(Text(f"{item.get('name', name)}: {state:<9} {elapsed:6.1f}s", style="dim"))
            spinner.update(f"{item.get('name', name)}: {state}")
        else:
            _fail("the server closed the connection before the load finished")
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
    _, client = _connect(url, api_key, config)
    with _api_errors():
        model = _find_model(client.models(), name)
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


def _find_model(models: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The ``/api/models`` entry of a configured name or alias, as the server resolves it."""
    for model in models:
        if model.get("name") == name:
            return model
    for model in models:
        if name in (model.get("aliases") or []):
            return model
    return None


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
    _, client = _connect(url, api_key, config)
    with _api_errors():
        data = client.show(name)
    if json_output:
        _print_json(data)
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

    _, client = _connect(url, api_key, config)
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
    with _api_errors(), progress:
        for item in client.pull(repo, revision):
            last = item
            state = str(item.get("status", ""))
            file = item.get("file")
            if state == "error":
                progress.stop()
                _fail(str(item.get("error") or "the download failed"))
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
        _fail("the server closed the connection before the download finished")
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
    _, client = _connect(url, api_key, config)
    with _api_errors():
        model = _find_model(client.models(), name)
        if model is not None:
            path = str(model.get("path", ""))
            local_dir = path.startswith("/")  # the config resolves local paths to absolute
            if local_dir and not local:
                # Before asking: a "yes" must not be answered with "you needed --local".
                _fail(f"{name!r} is a local directory ({path}); add --local to delete it")
            if not yes:
                what = f"the directory {path}" if local_dir else f"the cached files of {path}"
                typer.confirm(f"Delete {what}?", abort=True, err=True)
        try:
            result = client.delete(name, local=local)
        except ApiError as exc:
            if exc.code == "local_model":
                _fail(f"{name!r} is a local directory; add --local to delete it")
            raise
    freed = views.human_bytes(result.get("freed_bytes"))
    out.print(Text(f"✓ deleted {result.get('deleted')} ({freed} freed)", style="green"))


# ----------------------------------------------------------- stop and restart


def _stop_server(settings: Settings, timeout: float) -> int | None:
    """SIGTERM the running server and wait for it to exit; return its pid, or None if no
    server is running. Exits with an error if it does not stop in time.

    The server is the one its runtime file names (found even when models.yaml is broken or
    names another port or data dir now), else the one in the pid file of the config's data
    dir (a server older than the runtime file). Both are checked to be an mlx-serve server: a
    stale file whose pid was reused by another program after a crash must never get that
    program killed."""
    import psutil

    from mlx_serve.pidfile import running_pid

    pid = settings.server.pid if settings.server is not None else running_pid(settings.data_dir)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    except PermissionError:
        _fail(f"not allowed to signal mlx-serve (pid {pid}): it was started by another user")
    with err.status(f"stopping mlx-serve (pid {pid}) and its workers", spinner="dots"):
        deadline = started + timeout
        while _alive(proc):
            if time.monotonic() > deadline:
                _fail(
                    f"mlx-serve (pid {pid}) is still running after {timeout:g}s; "
                    f"`kill -9 {pid}` stops it at once (its workers exit with it)"
                )
            time.sleep(STOP_POLL_INTERVAL)
    err.print(Text(f"stopped mlx-serve (pid {pid}) in {time.monotonic() - started:.1f}s"))
    return pid


def _alive(proc: psutil.Process) -> bool:
    """Whether the server still runs. A zombie has exited: its parent (the shell that ran
    `mlx-serve start`) just has not collected its status yet, and may never while we wait."""
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=1, help="seconds to wait for it to exit")
]


def stop(*, config: ConfigOpt = None, timeout: TimeoutOpt = 60.0) -> None:
    """Stop the running server (started with `start`, detached or not) and its workers."""
    # A live pid is enough: a server too busy to answer /health must still be stoppable.
    settings = load_settings(config=config, check_health=False)
    with _api_errors():
        pid = _stop_server(settings, timeout)
    if pid is None:
        from mlx_serve.pidfile import pid_path

        err.print(
            Text(f"mlx-serve is not running (no live server in {pid_path(settings.data_dir)})")
        )
        raise typer.Exit(ExitCode.NOT_RUNNING)


def restart(*, config: ConfigOpt = None, timeout: TimeoutOpt = 60.0) -> None:
    """Stop the server (if it runs) and start it again in the background (`start --detach`).

    It restarts with the same config file (or --config) and the same --host/--port options.

    The config is checked first: if it is invalid, the running server is left alone.
    """
    from mlx_serve.config import CONFIG_ENV_VAR, ConfigError, load_config

    settings = load_settings(config=config, check_health=False)
    server = settings.server
    path = settings.config_path
    named = config is not None or bool(os.environ.get(CONFIG_ENV_VAR, "").strip())
    if not named and server is not None and server.config_path is not None:
        path = server.config_path  # restart what runs, not whatever the default config is
    running = f"the running server (pid {server.pid}) is left alone" if server else ""
    if not path.exists():
        _fail(
            f"no config at {path}; run `mlx-serve init` to write one"
            + (f"; {running}" if running else ""),
            ExitCode.USAGE,
        )
    try:
        load_config(path)
    except ConfigError as exc:
        # Stopping first would leave nothing serving until the file is fixed.
        _fail(
            f"{exc}\n{running or 'nothing was started'}: fix the file and run `mlx-serve "
            "restart` again (`mlx-serve reload` applies model changes without a restart)",
            ExitCode.USAGE,
        )
    with _api_errors():
        if _stop_server(settings, timeout) is None:
            err.print(Text("mlx-serve was not running; starting it", style="dim"))
    argv = [sys.executable, "-m", "mlx_serve.cli.main", "start", "--detach"]
    argv += ["--config", str(path)]
    if server is not None and server.argv_host is not None:
        argv += ["--host", server.argv_host]
    if server is not None and server.argv_port is not None:
        argv += ["--port", str(server.argv_port)]
    raise typer.Exit(subprocess.call(argv))


# ---------------------------------------------------------------------- reload


def reload(
    *,
    json_output: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Re-read models.yaml in the running server without dropping loaded models."""
    _, client = _connect(url, api_key, config)
    with _api_errors():
        try:
            result = client.reload()
        except ServerTooOld:
            _fail(
                f"the server at {client.url} has no reload (it is older than this CLI); "
                "restart it to apply the config: `mlx-serve restart`"
            )
    if json_output:
        _print_json(result)
    else:
        out.print(views.reload_summary(result))
    if result.get("status") != "ok":
        raise typer.Exit(ExitCode.USAGE)


# --------------------------------------------------------------------- mount


def register(app: typer.Typer) -> None:
    """Add these commands to the ``mlx-serve`` app (``main.py`` calls this once)."""
    for command in (status, ps, logs, stop, restart, reload):
        app.command()(command)
    app.add_typer(models_app, name="models")
