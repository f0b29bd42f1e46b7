"""``mlx-serve status``: the server's header, its memory budget and spare workers, one row
per model, the last eviction and why failed models failed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .format import cut, human_bytes, human_duration, ms, num, relative_time
from .models import (
    idle_left,
    measured_bytes,
    planned_text,
    requests_text,
    short_type,
    status_text,
)
from .widgets import LabeledPath, ModelName, Segments


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
            text.append(short_type(spare.get("kind", "?")), style="cyan")
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
        table.add_row(
            ModelName.of(model),
            short_type(model.get("type", "?")),
            status_text(model),
            human_bytes(measured_bytes(model)),
            planned_text(model),
            relative_time(model.get("last_used"), now),
            idle_left(model),
            requests_text(model),
            ms(metrics.get("ttft_p50_s")),
            num(metrics.get("tokens_per_s_p50")),
        )
    return table


class EvictionLine:
    """``evicted qwen for llama 3m ago: memory, needed 4.1 GiB, free 2.0 GiB``, on one line:
    when it does not fit, the model names are cut first, since the numbers are the news."""

    def __init__(self, event: Mapping[str, Any], now: float) -> None:
        self.victim = str(event.get("model") or "?")
        self.for_model = str(event.get("for_model") or "")
        ts = event.get("ts")
        ago = relative_time(ts, now) if isinstance(ts, int | float) else ""
        self.ago = "just now" if ago == "now" else ago
        self.reason = eviction_reason(event)

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
                    victim, for_model = cut(victim, long_room), cut(for_model, short)
                else:
                    victim, for_model = cut(victim, short), cut(for_model, long_room)
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


def eviction_line(event: Mapping[str, Any], now: float | None = None) -> EvictionLine:
    """The last ``model.evicted`` event (``/api/stats`` ``memory.last_eviction``) for
    ``status``: who made room for whom, when, and the numbers that decided it."""
    return EvictionLine(event, time.time() if now is None else now)


def eviction_reason(data: Mapping[str, Any]) -> str:
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
