"""``mlx-serve logs``: lifecycle events from the server (or from its event log file while it
is down), or a worker's own log read from the data directory."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.text import Text

from mlx_serve.cli import views
from mlx_serve.cli.client import ServerNotRunning
from mlx_serve.cli.connect import api_errors, connect, model_name
from mlx_serve.cli.options import ApiKeyOpt, ConfigOpt, UrlOpt
from mlx_serve.cli.output import err, fail, out
from mlx_serve.cli.settings import Settings
from mlx_serve.event_filter import event_matches

__all__ = ["logs", "parse_since", "worker_log_path"]

#: How often ``logs -f`` looks for new lines in a file (a worker log, or the event log while
#: the server is down). Files have no push notification that works everywhere without a
#: dependency; a quarter second is well below what a person reading a log notices.
FILE_POLL_INTERVAL = 0.25


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` as a unix time: a duration back from now (``10m``, ``1h30m``), an ISO 8601
    time (local time when it has no offset), or a unix time. Raises ``ValueError``."""
    text = text.strip()
    now = time.time() if now is None else now
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        # A bare number that looks like a unix time is one; smaller ones are seconds ago.
        return value if value > 1e9 else now - value
    from mlx_serve.config.durations import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: use a duration (10m, 2h), an ISO time "
            "(2024-05-01T12:00) or a unix time"
        ) from None


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
    settings, client = connect(url, api_key, config)
    if worker is not None:
        _worker_log(settings, model_name(settings, worker), lines, follow)
        return
    model = model_name(settings, model) if model else None
    with api_errors():
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
    """The server's filter, for events read from the file."""
    return event_matches(
        str(event.get("kind", "")),
        event.get("model"),
        event.get("ts"),
        want_model=model,
        want_kind=kind,
        since=since,
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
    with api_errors():
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
        fail(f"no worker log for {name!r} at {path} (the model has not been started yet?)")
    with api_errors():
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
