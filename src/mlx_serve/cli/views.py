"""Rich renderables for the CLI, as pure functions of the management API's JSON.

Nothing here talks to the server or reads the clock on its own: every function takes the JSON
it renders (and ``now`` where times are relative), so the views are tested by rendering sample
JSON into an 80-column console. The layouts are built for 80 columns, the width of a default
terminal and of any non-tty output: long model names are cut with an ellipsis, never wrapped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = [
    "PIN",
    "RESIDENT_STATUSES",
    "STATUS_STYLES",
    "Segments",
    "disk_text",
    "event_line",
    "eviction_line",
    "human_bytes",
    "human_duration",
    "measured_bytes",
    "memory_line",
    "models_table",
    "planned_text",
    "ps_view",
    "relative_time",
    "reload_summary",
    "requests_legend",
    "show_panel",
    "spares_line",
    "status_header",
    "status_table",
    "status_view",
    "until_unload",
]

#: Colors of the model states the API reports (``/api/models`` ``status``).
STATUS_STYLES: dict[str, str] = {
    "loaded": "bold green",
    "loading": "yellow",
    "draining": "yellow",
    "unloading": "yellow",
    "unloaded": "dim",
    "failed": "bold red",
}

#: The statuses of a model that has a worker process (``ps`` lists these): loaded, on its
#: way in, or on its way out.
RESIDENT_STATUSES = frozenset({"loaded", "loading", "draining", "unloading"})

#: Event kinds (or their first dotted part) and the color of the kind in ``logs``.
_KIND_STYLES: dict[str, str] = {
    "model.loaded": "green",
    "model.unloaded": "yellow",
    "model.deleted": "yellow",
    "model.pull": "blue",
    "model.evicted": "yellow",
    "model.refused": "bold red",
    "model.footprint": "cyan",
    "swap": "magenta",
    "worker.state": "cyan",
    "worker.drain": "cyan",
    "worker.crashed": "bold red",
    "worker.kill": "red",
    "auth.failed": "red",
    "memory.low": "bold red",
    "memory.ok": "green",
    "request": "blue",
    "supervisor": "bold",
    "config": "magenta",
    "spare": "cyan",
    "spare.failed": "yellow",
}

#: Shown for a value that does not apply (a memory figure of an unloaded model).
NONE = "—"

#: After the name of a pinned model (``pin: true``: never unloaded to make room for another).
PIN = "📌"

# Short names so the status table fits 80 columns; the config accepts "embed" as well.
_TYPE_SHORT = {"embedding": "embed"}

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, three significant digits at most."""
    if n is None:
        return NONE
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


_DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def human_duration(seconds: float | None, parts: int = 2) -> str:
    """``4000`` -> ``1h06m``: the ``parts`` largest units, rounded down; ``None`` -> ``—``.

    Rounding down keeps a countdown honest (``idle left 1m`` never means 0 s left) and one
    part is enough where space is short (the status table).
    """
    if seconds is None:
        return NONE
    if seconds < 0:
        return "never"
    remaining = int(seconds)
    if remaining < 1:
        return f"{seconds:.1f}s" if seconds > 0 else "0s"
    out: list[str] = []
    for unit, size in _DURATION_UNITS:
        if remaining >= size or out:
            count, remaining = divmod(remaining, size)
            out.append(f"{count:02d}{unit}" if out else f"{count}{unit}")
            if len(out) == parts:
                break
    # Trailing zero parts ("7m00s") say nothing.
    while len(out) > 1 and int(out[-1][:-1]) == 0:
        out.pop()
    return "".join(out)


def relative_time(ts: float | None, now: float, parts: int = 1) -> str:
    """``3m ago`` for a unix time; ``never`` for None."""
    if ts is None:
        return "never"
    ago = max(0.0, now - ts)
    if ago < 1:
        return "now"
    return f"{human_duration(ago, parts)} ago"


def _ms(seconds: object) -> str:
    return f"{float(seconds) * 1000:.0f}" if isinstance(seconds, int | float) else NONE


def _num(value: object, fmt: str = "{:.0f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else NONE


def _status_text(model: Mapping[str, Any]) -> Text:
    status = str(model.get("status", "?"))
    return Text(status, style=STATUS_STYLES.get(status, ""))


def idle_left(model: Mapping[str, Any], parts: int = 1) -> Text:
    """How long until the model is unloaded for idleness: ``7m``, ``never`` (keep_alive -1 or
    idle_timeout -1), ``busy`` (requests in flight: the countdown starts when they end), or
    ``—`` when it is not loaded."""
    if model.get("status") != "loaded":
        return Text(NONE, style="dim")
    timeout = model.get("idle_timeout_s")
    if isinstance(timeout, int | float) and timeout < 0:
        return Text("never", style="green")
    expires = model.get("expires_in_s")
    if expires is None:
        return Text("busy", style="cyan")
    return Text(human_duration(float(expires), parts))


class Segments:
    """Parts of a line joined with `` · ``: on one line when they fit, else broken between two
    parts, never inside one (a part too long for a line on its own is cut with an ellipsis).
    The status header's figures stay readable in any terminal, 80 columns included."""

    SEPARATOR = " · "

    def __init__(self, parts: Iterable[Text]) -> None:
        self.parts = [p for p in parts if p.plain]

    def lines(self, width: int) -> list[Text]:
        lines: list[Text] = []
        line = Text(no_wrap=True, overflow="ellipsis")
        for part in self.parts:
            if line.plain and line.cell_len + len(self.SEPARATOR) + part.cell_len > width:
                lines.append(line)
                line = Text(no_wrap=True, overflow="ellipsis")
            if line.plain:
                line.append(self.SEPARATOR)
            line.append_text(part)
        if line.plain:
            lines.append(line)
        for text in lines:
            text.truncate(width, overflow="ellipsis")
        return lines

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max((p.cell_len for p in self.parts), default=0)
        total = sum(p.cell_len for p in self.parts) + len(self.SEPARATOR) * max(
            len(self.parts) - 1, 0
        )
        return Measurement(min(widest, options.max_width), total)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines(options.max_width)


class LabeledPath:
    """``config /path/to/models.yaml``; a path too long for the line loses its start (the
    file name is what identifies it), never wraps."""

    def __init__(self, label: str, path: str, style: str = "dim") -> None:
        self.label, self.path, self.style = label, path, style

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.label) + 1 + cell_len(self.path)
        return Measurement(min(width, 20), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = options.max_width - cell_len(self.label) - 1
        path = self.path
        if cell_len(path) > room:
            path = "…" + path[len(path) - max(room - 1, 0) :] if room > 1 else "…"
        yield Text(f"{self.label} {path}", style=self.style, no_wrap=True, overflow="crop")


def status_header(
    stats: Mapping[str, Any], *, url: str | None = None, pid: int | None = None
) -> Group:
    """The server, like ``lms status``: ``mlx-serve 0.4.0 · http://127.0.0.1:8095 · pid
    4242 · up 2h05m``; the config file it runs with (on its own line: paths are long); then
    ``memory 5.1 GiB of 16 GiB free · workers 1.2 GiB · 3 waiting``. No line is wrapped
    inside a figure at 80 columns: see :class:`Segments`."""
    memory = stats.get("memory") or {}
    identity = [Text(f"mlx-serve {stats.get('version', '?')}", style="bold")]
    if url:
        identity.append(Text(url, style="cyan"))
    if pid is not None:
        identity.append(Text(f"pid {pid}"))
    identity.append(Text(f"up {human_duration(stats.get('uptime_s'))}"))
    config = stats.get("config_path")
    parts: list[RenderableType] = [
        Segments(identity),
        LabeledPath("config", str(config) if config else "(none)"),
    ]
    figures: list[Text] = []
    available, total = memory.get("system_available_bytes"), memory.get("system_total_bytes")
    if available is not None:
        figures.append(Text(f"memory {human_bytes(available)} of {human_bytes(total)} free"))
    if memory.get("workers_rss_bytes"):
        figures.append(Text(f"workers {human_bytes(memory['workers_rss_bytes'])}"))
    waiting = (stats.get("queue") or {}).get("waiting")
    if waiting:
        figures.append(Text(f"{waiting} waiting", style="yellow"))
    if figures:
        parts.append(Segments(figures))
    return Group(*parts)


def memory_line(memory: Mapping[str, Any]) -> Text:
    """How models are scheduled: ``budget 24.0 GiB · planned 9.4 GiB · free 14.6 GiB ·
    configured``, or ``no memory budget · one model at a time`` (``/api/stats`` ``memory``).

    The budget's source comes last, as the part that may be cut: ``auto: MLX's recommended
    working set 21.3 GiB minus 1.0 GiB`` would push the figures off an 80-column line.
    """
    text = Text(no_wrap=True, overflow="ellipsis")
    budget = memory.get("budget_bytes")
    cap = memory.get("max_loaded_models")
    count = "one model at a time" if cap == 1 else f"max {cap} loaded" if cap else ""
    if not isinstance(budget, int | float):
        text.append("no memory budget", style="bold")
        text.append(f" · {count or 'no model limit'}")
        return text
    text.append(f"budget {human_bytes(budget)}", style="bold")
    text.append(f" · planned {human_bytes(memory.get('planned_bytes') or 0)}")
    free = memory.get("free_bytes")
    if isinstance(free, int | float):
        if free < 0:
            text.append(f" · over by {human_bytes(-free)}", style="bold red")
        else:
            low = budget > 0 and free < budget * 0.1
            text.append(f" · free {human_bytes(free)}", style="yellow" if low else "")
    if count:
        text.append(f" · {count}")
    if memory.get("budget_source"):
        text.append(f" · {memory['budget_source']}", style="dim")
    return text


class SparesLine:
    """``spares: text (pid 4242, 86 MiB) · stt starting · 336 MiB reserved``: the pre-warmed
    worker processes (``/api/stats`` ``spares``) on one line. They hold no model, so they are
    not in the table; what they take off the memory budget (``memory.spares_bytes``: a spare
    still starting counts its type's default overhead) comes last. When the line does not fit,
    the pids go first, then its end is cut with an ellipsis."""

    def __init__(self, spares: Sequence[Mapping[str, Any]], memory: Mapping[str, Any]) -> None:
        self.spares = list(spares)
        reserved = memory.get("spares_bytes")
        # The total says something only with a budget (it comes off it) and when it is not
        # just the one figure already shown (one spare, measured).
        measured = [s for s in self.spares if isinstance(s.get("rss_bytes"), int | float)]
        self.reserved = (
            reserved
            if isinstance(memory.get("budget_bytes"), int | float)
            and isinstance(reserved, int)
            and reserved > 0
            and not (len(self.spares) == 1 and measured)
            else None
        )

    def text(self, pids: bool = True) -> Text:
        text = Text("spares: ", style="bold", no_wrap=True, overflow="ellipsis")
        for i, spare in enumerate(self.spares):
            if i:
                text.append(" · ")
            kind = str(spare.get("kind", "?"))
            text.append(_TYPE_SHORT.get(kind, kind), style="cyan")
            if spare.get("status") != "spare":
                text.append(" starting", style="yellow")
                continue
            rss = spare.get("rss_bytes")
            pid = spare.get("pid")
            details = [f"pid {pid}"] if pids and pid is not None else []
            if isinstance(rss, int | float):
                details.append(human_bytes(rss))
            if details:
                text.append(f" ({', '.join(details)})" if pids else f" {details[0]}")
        if self.reserved is not None:
            text.append(f" · {human_bytes(self.reserved)} reserved", style="dim")
        return text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = self.text().cell_len
        return Measurement(min(width, 20), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = self.text()
        if text.cell_len > options.max_width:
            text = self.text(pids=False)
        text.truncate(options.max_width, overflow="ellipsis")
        yield text


def spares_line(stats: Mapping[str, Any]) -> SparesLine | None:
    """The spares line of ``status``, or None when there are none (or the server is older
    than them)."""
    spares = stats.get("spares")
    if not isinstance(spares, list) or not spares:
        return None
    return SparesLine(spares, stats.get("memory") or {})


def status_table(stats: Mapping[str, Any], now: float | None = None) -> Table:
    """One row per configured model: what is loaded, how much memory it holds, when it was
    used and when it will be unloaded, and its request latency and speed."""
    now = time.time() if now is None else now
    # 80 columns hold the nine short columns only with a one-space gap (the box's divider,
    # no padding) and with the wordy headers on two lines; the model column gets the rest.
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        show_edge=False,
        header_style="bold",
        expand=False,
    )
    # The only wrappable column, so the only one rich shrinks to fit; names have no spaces
    # (the config forbids them), so "wrapping" one means cutting it with an ellipsis.
    table.add_column("model", overflow="ellipsis", min_width=8)
    table.add_column("type", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("memory", justify="right", no_wrap=True)
    table.add_column("planned", justify="right", no_wrap=True)
    table.add_column("last\nused", justify="right", no_wrap=True)
    table.add_column("idle\nleft", justify="right", no_wrap=True)
    table.add_column("reqs", justify="right", no_wrap=True)
    table.add_column("TTFT\np50 ms", justify="right", no_wrap=True)
    table.add_column("tok/s", justify="right", no_wrap=True)
    for model in stats.get("models", []):
        metrics = model.get("metrics") or {}
        requests = Text(str(model.get("requests", 0)))
        if model.get("inflight"):
            requests.append(f"+{model['inflight']}", style="cyan")
        if model.get("waiting"):
            requests.append(f"+{model['waiting']}q", style="yellow")
        kind = str(model.get("type", "?"))
        table.add_row(
            ModelName(str(model.get("name", "?")), pinned=bool(model.get("pinned"))),
            _TYPE_SHORT.get(kind, kind),
            _status_text(model),
            human_bytes(measured_bytes(model)),
            planned_text(model),
            relative_time(model.get("last_used"), now),
            idle_left(model),
            requests,
            _ms(metrics.get("ttft_p50_s")),
            _num(metrics.get("tokens_per_s_p50")),
        )
    return table


def measured_bytes(model: Mapping[str, Any]) -> int | None:
    """What a loaded model holds: the supervisor's latest measurement (which counts MLX's
    buffers where RSS misses them), else the process tree's RSS; None when not loaded."""
    measured = (model.get("memory") or {}).get("measured_bytes")
    return measured if isinstance(measured, int) else model.get("rss_bytes")


def planned_text(model: Mapping[str, Any]) -> Text:
    """What the scheduler counts for a model (``memory.planned_bytes``): plain once a load
    has been measured, ``~4.6 GiB`` while it is only an estimate, and ``≥250 MiB`` when the
    estimate lacks the weights (files not downloaded yet: only the worker is counted)."""
    memory = model.get("memory") or {}
    planned = memory.get("planned_bytes")
    if not planned:
        return Text("?", style="dim")
    if memory.get("learned_bytes") is not None or memory.get("peak_bytes") is not None:
        return Text(human_bytes(planned))
    if "estimate_bytes" in memory and memory.get("weights_bytes") is None:
        return Text(f"≥{human_bytes(planned)}", style="dim")
    return Text(f"~{human_bytes(planned)}")


class ModelName:
    """A model's name, with :data:`PIN` after it for a pinned model; a name too long for its
    column is cut with an ellipsis, the marker is kept."""

    def __init__(self, name: str, *, pinned: bool = False) -> None:
        self.name = name
        self.suffix = f" {PIN}" if pinned else ""

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.name) + cell_len(self.suffix)
        return Measurement(min(width, 8), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = max(options.max_width - cell_len(self.suffix), 1)
        text = Text(self.name, no_wrap=True, overflow="ellipsis")
        text.truncate(room, overflow="ellipsis")
        text.append(self.suffix)
        yield text


class EvictionLine:
    """``evicted qwen for llama 3m ago: memory, needed 4.1 GiB, free 2.0 GiB``, on one line:
    when it does not fit, the model names are cut first, since the numbers are the news."""

    def __init__(self, event: Mapping[str, Any], now: float) -> None:
        self.victim = str(event.get("model") or "?")
        self.for_model = str(event.get("for_model") or "")
        ts = event.get("ts")
        ago = relative_time(ts, now) if isinstance(ts, int | float) else ""
        self.ago = "just now" if ago == "now" else ago
        self.reason = _eviction_reason(event)

    def text(self, width: int | None = None) -> Text:
        victim, for_model = self.victim, self.for_model
        if width is not None:
            fixed = cell_len(self.plain("", ""))
            room = max(width - fixed, 16)
            if cell_len(victim) + cell_len(for_model) > room:
                # The shorter name keeps what it needs (up to half); the longer one the rest.
                short = min(cell_len(victim), cell_len(for_model), room // 2)
                long_room = room - short
                if cell_len(victim) >= cell_len(for_model):
                    victim, for_model = _cut(victim, long_room), _cut(for_model, short)
                else:
                    victim, for_model = _cut(victim, short), _cut(for_model, long_room)
        text = Text("evicted ", style="yellow")
        text.append(victim, style="bold")
        if for_model:
            text.append(f" for {for_model}")
        if self.ago:
            text.append(f" {self.ago}", style="dim")
        text.append(f": {self.reason}")
        text.no_wrap, text.overflow = True, "ellipsis"
        return text

    def plain(self, victim: str, for_model: str) -> str:
        names = victim + (f" for {for_model}" if self.for_model else "")
        return f"evicted {names}{f' {self.ago}' if self.ago else ''}: {self.reason}"

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.plain(self.victim, self.for_model))
        return Measurement(min(width, 40), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.text(options.max_width)


def _cut(text: str, width: int) -> str:
    return text if cell_len(text) <= width else text[: max(width - 1, 0)] + "…"


def eviction_line(event: Mapping[str, Any], now: float | None = None) -> EvictionLine:
    """The last ``model.evicted`` event (``/api/stats`` ``memory.last_eviction``) for
    ``status``: who made room for whom, when, and the numbers that decided it."""
    return EvictionLine(event, time.time() if now is None else now)


def _eviction_reason(data: Mapping[str, Any]) -> str:
    """Why a model was evicted, with the numbers that made it so."""
    reason = str(data.get("reason") or "?")
    if reason == "memory":
        return (
            f"memory, needed {human_bytes(data.get('needed_bytes'))}, "
            f"free {human_bytes(data.get('free_bytes'))}"
        )
    if reason == "count" and data.get("max_loaded"):
        return f"count, max {data['max_loaded']} loaded"
    if reason == "over_budget":
        return (
            f"over budget, {human_bytes(data.get('used_bytes'))} planned "
            f"of {human_bytes(data.get('budget_bytes'))}"
        )
    return reason


def requests_legend(stats: Mapping[str, Any]) -> Text | None:
    """What ``42+2`` and ``0+1q`` in the ``reqs`` column mean, when a row shows them."""
    models = stats.get("models") or []
    if not any(m.get("inflight") or m.get("waiting") for m in models):
        return None
    text = Text("reqs", style="bold")
    text.append(" = requests so far", style="dim")
    text.append(", +in flight now", style="cyan")
    text.append(", +queued (q)", style="yellow")
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def status_view(
    stats: Mapping[str, Any],
    now: float | None = None,
    *,
    url: str | None = None,
    pid: int | None = None,
) -> Group:
    """What ``mlx-serve status`` prints: the header (the server's URL and pid when known),
    the memory budget, the spare workers (when ``server.prewarm`` keeps some), the table and
    its legend, the last eviction (why a model is not loaded any more) and the reason of each
    failed model (the table has no room for it, and it is what the user needs next)."""
    memory = stats.get("memory") or {}
    parts: list[RenderableType] = [status_header(stats, url=url, pid=pid)]
    if "budget_bytes" in memory:  # not from a server older than the memory budget
        parts.append(memory_line(memory))
    spares = spares_line(stats)
    if spares is not None:
        parts.append(spares)
    parts += [Text(), status_table(stats, now)]
    legend = requests_legend(stats)
    if legend is not None:
        parts.append(legend)
    eviction = memory.get("last_eviction")
    if isinstance(eviction, Mapping):
        parts.append(eviction_line(eviction, now))
    for model in stats.get("models", []):
        if model.get("status") == "failed" and model.get("error"):
            first = str(model["error"]).strip().splitlines()[0]
            line = Text(f"{model.get('name')}: ", style="bold red")
            line.append(first)
            line.no_wrap, line.overflow = True, "ellipsis"
            parts.append(line)
    return Group(*parts)


def disk_text(model: Mapping[str, Any]) -> Text:
    """The size of a model's weights on disk (``memory.weights_bytes``, what the estimate
    read from the files): ``—`` when they are not downloaded, ``?`` when unknown."""
    memory = model.get("memory") or {}
    if "weights_bytes" not in memory:
        return Text("?", style="dim")
    weights = memory.get("weights_bytes")
    if not isinstance(weights, int | float):
        return Text(NONE, style="dim")
    return Text(human_bytes(weights))


def until_unload(model: Mapping[str, Any]) -> Text:
    """``ps``'s countdown: ``6m55s``, ``forever`` (keep_alive / idle_timeout -1), ``busy``
    (requests in flight: it starts when they end), ``loading``, ``unloading``."""
    status = model.get("status")
    if status == "loaded":
        timeout = model.get("idle_timeout_s")
        if isinstance(timeout, int | float) and timeout < 0:
            return Text("forever", style="green")
        expires = model.get("expires_in_s")
        if expires is None:
            return Text("busy", style="cyan")
        return Text(human_duration(float(expires)))
    if status == "loading":
        return Text(NONE, style="dim")
    return Text("unloading", style="yellow")


def ps_view(loaded: Sequence[Mapping[str, Any]], configured: int | None = None) -> RenderableType:
    """``mlx-serve ps``: the models that have a worker, like ``ollama ps``: type, memory
    (measured, else what is planned for it: ``~`` an estimate), time until it is unloaded
    for idleness, and the worker's pid."""
    if not loaded:
        text = Text("no model is loaded", style="dim")
        if configured:
            text.append(
                f" ({configured} configured; a request loads one, or `mlx-serve models load NAME`)",
                style="dim",
            )
        return text
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
        header_style="bold",
    )
    table.add_column("model", overflow="ellipsis", min_width=8)
    table.add_column("type", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("until unload", justify="right", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("reqs", justify="right", no_wrap=True)
    for model in loaded:
        kind = str(model.get("type", "?"))
        measured = measured_bytes(model)
        requests = Text(str(model.get("requests", 0)))
        if model.get("inflight"):
            requests.append(f"+{model['inflight']}", style="cyan")
        table.add_row(
            ModelName(str(model.get("name", "?")), pinned=bool(model.get("pinned"))),
            _TYPE_SHORT.get(kind, kind),
            _status_text(model),
            Text(human_bytes(measured)) if measured is not None else planned_text(model),
            until_unload(model),
            str(model.get("pid") or NONE),
            requests,
        )
    return table


def models_table(models: Sequence[Mapping[str, Any]]) -> Table:
    """``models list``: every configured model, the size of its weights on disk, its aliases
    and where its weights are (memory is in ``status``; at 80 columns the path needs the room
    more)."""
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
        header_style="bold",
    )
    table.add_column("model", no_wrap=True, overflow="ellipsis", max_width=18)
    table.add_column("type", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("disk", justify="right", no_wrap=True)
    table.add_column("aliases", overflow="ellipsis", no_wrap=True, max_width=16)
    table.add_column("path")
    for model in models:
        table.add_row(
            str(model.get("name", "?")),
            _TYPE_SHORT.get(str(model.get("type", "?")), str(model.get("type", "?"))),
            _status_text(model),
            disk_text(model),
            ", ".join(model.get("aliases") or []) or NONE,
            LeftTrimmed(str(model.get("path", "")), style="dim"),
        )
    return table


class LeftTrimmed:
    """Text that, when it does not fit, loses its start instead of its end: a model path's
    last component (``…/Qwen2.5-7B-Instruct-4bit``) is the part that identifies it."""

    def __init__(self, text: str, style: str = "", min_width: int = 12) -> None:
        self.text = text
        self.style = style
        self.min_width = min_width

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.text)
        return Measurement(min(width, self.min_width), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text, width = self.text, options.max_width
        if cell_len(text) > width:
            text = "…" + text[len(text) - max(width - 1, 0) :] if width > 1 else "…"[:width]
        yield Text(text, style=self.style, no_wrap=True, overflow="crop")


def _kv_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def _scalar(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(map(str, value))
    return json.dumps(value, default=str)


def show_panel(data: Mapping[str, Any], now: float | None = None) -> Panel:
    """``models show``: the model's state, request metrics, config, and what the hub knows
    about its files (``details``, rendered generically since its keys depend on the model)."""
    now = time.time() if now is None else now
    rows = _kv_table()
    rows.add_row("status", _status_text(data))
    if data.get("error"):
        rows.add_row("error", Text(str(data["error"]), style="red"))
    rows.add_row("type", str(data.get("type", "?")))
    rows.add_row("path", str(data.get("path", "")))
    if data.get("aliases"):
        rows.add_row("aliases", ", ".join(data["aliases"]))
    if data.get("pid"):
        rows.add_row("process", f"pid {data['pid']}, port {data.get('port')}")
    if data.get("pinned"):
        rows.add_row("pinned", f"{PIN} never unloaded to make room for another model")
    if data.get("loaded_at"):
        rows.add_row("loaded", relative_time(data["loaded_at"], now, parts=2))
    rows.add_row("last used", relative_time(data.get("last_used"), now, parts=2))
    timeout = data.get("idle_timeout_s")
    source = "keep_alive" if data.get("keep_alive_s") is not None else "idle_timeout"
    rows.add_row(source, human_duration(timeout))
    if data.get("status") == "loaded":
        rows.add_row("idle left", idle_left(data, parts=2))
    rows.add_row(
        "requests",
        f"{data.get('requests', 0)} total, {data.get('inflight', 0)} in flight, "
        f"{data.get('waiting', 0)} waiting",
    )
    parts: list[RenderableType] = [rows]
    memory = data.get("memory")
    if isinstance(memory, Mapping):
        parts += [Text(), Text("memory", style="bold underline"), _memory_rows(data, memory)]

    metrics = data.get("metrics") or {}
    if metrics.get("count"):
        parts += [Text(), _metrics_table(metrics)]
    config = {
        k: v
        for k, v in (data.get("config") or {}).items()
        if v not in (None, {}, []) and k not in ("path", "type", "aliases")
    }
    if config:
        parts += [Text(), Text("config", style="bold underline"), _mapping_rows(config)]
    details = data.get("details")
    if isinstance(details, Mapping) and details:
        parts += [Text(), Text("files", style="bold underline"), _mapping_rows(details)]
    return Panel(
        Group(*parts),
        title=Text(str(data.get("name", "?")), style="bold"),
        title_align="left",
        box=box.ROUNDED,
    )


def _memory_rows(model: Mapping[str, Any], memory: Mapping[str, Any]) -> Table:
    """``models show``: what the scheduler plans with and where the figure comes from."""
    rows = _kv_table()
    planned = memory.get("planned_bytes")
    learned, peak = memory.get("learned_bytes"), memory.get("peak_bytes")
    estimate = memory.get("estimate_bytes")
    source = ""
    if planned:
        if planned == peak:
            source = "the peak of this load"
        elif planned == learned:
            source = "the peak of the last load"
        elif planned == estimate:
            source = "the estimate"
    if planned:
        rows.add_row("planned", human_bytes(planned) + (f"  ({source})" if source else ""))
    else:
        rows.add_row("planned", Text("unknown", style="dim"))
    if "estimate_bytes" in memory:
        rows.add_row("estimate", human_bytes(estimate))
        weights = memory.get("weights_bytes")
        rows.add_row(
            "  weights",
            Text("unknown (files not on disk)", style="yellow")
            if weights is None
            else human_bytes(weights),
        )
        kv_cache = human_bytes(memory.get("kv_cache_bytes"))
        tokens = memory.get("context_tokens")
        if isinstance(tokens, int):
            kv_cache += f"  ({tokens:,} tokens of context)"
        rows.add_row("  KV cache", kv_cache)
        rows.add_row("  overhead", human_bytes(memory.get("overhead_bytes")))
    else:
        rows.add_row("estimate", Text("none (could not be made)", style="dim"))
    rows.add_row("learned", human_bytes(learned) if learned is not None else "never loaded")
    measured = measured_bytes(model)
    if measured is not None:
        shown, peak_shown = human_bytes(measured), human_bytes(peak)
        more = f"  (peak {peak_shown})" if peak and peak_shown != shown else ""
        rows.add_row("measured", shown + more)
    else:
        rows.add_row("measured", Text("not loaded", style="dim"))
    return rows


def _metrics_table(metrics: Mapping[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column(f"{metrics.get('count')} requests, {metrics.get('errors', 0)} errors")
    for q in ("p50", "p95", "p99"):
        table.add_column(q, justify="right")
    rows = (("TTFT ms", "ttft"), ("latency ms", "latency"), ("queued ms", "queued"),
            ("load ms", "load"))  # fmt: skip
    for label, key in rows:
        table.add_row(label, *(_ms(metrics.get(f"{key}_{q}_s")) for q in ("p50", "p95", "p99")))
    table.add_row("tok/s", _num(metrics.get("tokens_per_s_p50"), "{:.1f}"), "", "")
    codes = metrics.get("error_codes") or {}
    if codes:
        table.add_row("errors", ", ".join(f"{code} {n}" for code, n in codes.items()), "", "")
    return table


def _mapping_rows(mapping: Mapping[str, Any]) -> Table:
    rows = _kv_table()
    for key, value in mapping.items():
        if key.endswith("bytes") and isinstance(value, int | float):
            rows.add_row(key, human_bytes(value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            # Lists of records (a model's files) would be a wall of JSON: count them instead.
            names = [str(v.get("name", "")) for v in value if v.get("name")]
            shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
            rows.add_row(key, f"{len(value)}" + (f" ({shown})" if shown else ""))
        elif isinstance(value, list):
            rows.add_row(key, ", ".join(map(_scalar, value)) or NONE)
        else:
            rows.add_row(key, _scalar(value))
    return rows


# Fields every event has, and fields too long for one line (crash log tails).
_EVENT_META = frozenset({"seq", "ts", "kind", "model", "log_tail"})


def event_line(event: Mapping[str, Any], tz: tzinfo | None = None) -> Text:
    """One event as one line: local time, kind (colored), model, then what matters for that
    kind (``stopped → starting``, ``200 ttft 45ms 812 tok/s``) and any other fields."""
    ts = event.get("ts")
    stamp = "--:--:--"
    if isinstance(ts, int | float):
        stamp = datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S")
    kind = str(event.get("kind", "?"))
    style = _KIND_STYLES.get(kind) or _KIND_STYLES.get(kind.split(".", maxsplit=1)[0], "")
    data = {k: v for k, v in event.items() if k not in _EVENT_META}
    line = Text(f"{stamp} ", style="dim")
    line.append(f"{kind:<14}", style=style)
    line.append(" ")
    if event.get("model"):
        line.append(str(event["model"]), style="bold")
        line.append(" ")
    elif kind == "request":  # refused before a model was known (404 model_not_found, 401)
        line.append("unknown ", style="dim")
    line.append_text(_event_details(kind, data))
    return line


def _event_details(kind: str, data: dict[str, Any]) -> Text:
    out = Text()
    if kind == "worker.state":
        old, new = data.pop("old", "?"), data.pop("new", "?")
        out.append(f"{old} → ")
        out.append(str(new), style=_STATE_STYLES.get(str(new), ""))
    elif kind == "swap":
        out.append(f"→ {data.pop('to', '?')}")
    elif kind in ("model.loaded", "model.unloaded") and "duration_s" in data:
        out.append(f"in {_seconds(data.pop('duration_s'))}")
        spare_pid = data.pop("spare_pid", None)
        if data.pop("spare", None):
            out.append(" from spare", style="cyan")
            if "pid" not in data and spare_pid is not None:
                out.append(f" pid {spare_pid}")
    elif kind.startswith("spare."):
        _spare_details(kind, data, out)
    elif kind == "model.evicted":
        for_model = data.pop("for_model", None)
        if for_model:
            out.append(f"for {for_model}: ")
        out.append(_eviction_reason(data))
        victim = data.pop("victim_bytes", None)
        if victim:
            out.append(f", frees {human_bytes(victim)}")
        # The reason shows the figures that decided it; the others are context for the API.
        for key in ("reason", "needed_bytes", "free_bytes", "used_bytes", "budget_bytes"):
            data.pop(key, None)
        data.pop("max_loaded", None)
        data.pop("resident", None)
    elif kind == "model.refused":
        needed, budget = data.pop("needed_bytes", None), data.pop("budget_bytes", None)
        out.append(f"needs {human_bytes(needed)}", style="red")
        if isinstance(budget, int | float):
            out.append(f" of a {human_bytes(budget)} budget")
        if data.get("reason"):
            out.append(f": {data.pop('reason')}")
    elif kind == "model.footprint":
        measured = data.pop("measured_bytes", None)
        estimate = data.pop("estimate_bytes", None)
        out.append(f"measured {human_bytes(measured)}")
        if isinstance(estimate, int | float):
            out.append(f", estimated {human_bytes(estimate)}")
            if estimate > 0 and isinstance(measured, int | float):
                off = (measured - estimate) / estimate
                out.append(f" ({off:+.0%})", style="yellow" if abs(off) > 0.25 else "")
        if "planned_bytes" in data:
            out.append(f", planned {human_bytes(data.pop('planned_bytes'))}")
    elif kind == "request":
        status = data.pop("status", None)
        ok = isinstance(status, int) and status < 400
        out.append(str(status), style="green" if ok else "red")
        out.append(f" {data.pop('endpoint', '')}")
        tokens = data.pop("completion_tokens", None)
        if tokens is not None:
            out.append(f" {tokens} tok")
        ttft, latency = data.pop("ttft_s", None), data.pop("latency_s", None)
        if ttft is not None:
            out.append(f" ttft {_ms(ttft)}ms")
        if latency is not None:
            out.append(f" total {_ms(latency)}ms")
        tps = data.pop("tokens_per_s", None)
        if isinstance(tps, int | float):
            out.append(f" {tps:.0f} tok/s")
        queued = data.pop("queued_s", None)
        if isinstance(queued, int | float) and queued >= 0.001:
            out.append(f" queued {_ms(queued)}ms", style="yellow")
        load = data.pop("load_s", None)  # waiting for the model to start: not in ttft
        if isinstance(load, int | float) and load >= 0.001:
            out.append(f" load {_ms(load)}ms", style="yellow")
        if not ok and data.get("code"):
            out.append(f" {data.pop('code')}", style="red")
        data.pop("code", None)
        for key in ("stream", "prompt_tokens"):
            data.pop(key, None)
        if not data.get("retries"):
            data.pop("retries", None)
    # Empty values ("added=[]" in a reload that added nothing) are noise on a log line.
    rest = [f"{k}={_scalar(v)}" for k, v in data.items() if v not in (None, "", [], {})]
    if rest:
        if out:
            out.append(" ")
        out.append(" ".join(rest), style="dim")
    return out


def _spare_details(kind: str, data: dict[str, Any], out: Text) -> None:
    """``spare.*`` events (the model field is the spare's kind): what happened to it."""
    pid = data.pop("pid", None)
    if kind == "spare.failed":
        out.append(str(data.pop("reason", None) or "failed"), style="yellow")
        failures = data.pop("failures", None)
        if isinstance(failures, int) and failures > 1:
            out.append(f", {failures} in a row")
        if data.pop("gave_up", False):
            out.append(", gave up", style="bold red")
        return
    if pid is not None:
        out.append(f"pid {pid}")
    if kind == "spare.ready":
        duration, rss = data.pop("duration_s", None), data.pop("rss_bytes", None)
        if duration is not None:
            out.append(f" in {_seconds(duration)}")
        if isinstance(rss, int | float):
            out.append(f", {human_bytes(rss)}")
    elif kind == "spare.taken" and data.get("by"):
        out.append(f" for {data.pop('by')}")
    elif kind == "spare.stopped" and data.get("reason"):
        out.append(f": {data.pop('reason')}")


_STATE_STYLES = {
    "ready": "green",
    "starting": "yellow",
    "draining": "yellow",
    "stopping": "yellow",
    "failed": "bold red",
}


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return str(value)
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def reload_summary(result: Mapping[str, Any]) -> Text:
    """``mlx-serve reload``: what the new models.yaml changed (``/api/reload``'s answer).

    ``changed`` splits into ``restarted`` (worker settings: the model restarts once its
    in-flight requests finish) and ``updated`` (router settings, applied at once) when the
    server says which is which; ``restart_needed`` lists server settings (host, port,
    data_dir) that only a server restart applies.
    """
    text = Text()
    if result.get("status") != "ok":
        text.append("models.yaml is invalid; nothing changed\n", style="bold red")
        if result.get("error"):
            text.append(str(result["error"]))
        return text
    split = "restarted" in result or "updated" in result
    sections: Iterable[tuple[str, str, str]] = (
        ("added", "added", "green"),
        ("removed", "removed", "red"),
        *(
            (
                ("restarted", "restarting", "yellow"),  # after their in-flight requests
                ("updated", "updated", "yellow"),
            )
            if split
            else (("changed", "changed", "yellow"),)
        ),
        ("server_changed", "server", "yellow"),
        ("restart_needed", "needs restart", "bold red"),
    )
    changed = False
    for key, label, style in sections:
        names = result.get(key) or []
        if names:
            changed = True
            text.append(f"{label:<14}", style=style)
            text.append(", ".join(map(str, names)) + "\n")
    if not changed:
        text.append("no changes\n", style="dim")
    if result.get("restarted"):
        text.append("(restarting models finish their in-flight requests first)\n", style="dim")
    if result.get("restart_needed"):
        text.append("(these server settings apply after `mlx-serve restart`)\n", style="dim")
    unchanged = result.get("unchanged") or []
    if unchanged:
        text.append(f"{'unchanged':<14}", style="dim")
        text.append(", ".join(map(str, unchanged)), style="dim")
    text.rstrip()
    return text
