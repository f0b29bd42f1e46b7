"""One model at a time: its cells (status, type, memory, countdown), ``ps``, ``models list``
and ``models show``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .format import NONE, human_bytes, human_duration, ms, num, relative_time, scalar
from .widgets import PIN, LeftTrimmed, ModelName

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


# Short names so the status table fits 80 columns; the config accepts "embed" as well.
_TYPE_SHORT = {"embedding": "embed"}


def short_type(kind: object) -> str:
    """A model type, short enough for an 80-column table (``embed``)."""
    return _TYPE_SHORT.get(str(kind), str(kind))


def status_text(model: Mapping[str, Any]) -> Text:
    status = str(model.get("status", "?"))
    return Text(status, style=STATUS_STYLES.get(status, ""))


def requests_text(model: Mapping[str, Any], *, waiting: bool = True) -> Text:
    """``42+2+1q``: requests so far, then in flight now and (with ``waiting``) queued."""
    requests = Text(str(model.get("requests", 0)))
    if model.get("inflight"):
        requests.append(f"+{model['inflight']}", style="cyan")
    if waiting and model.get("waiting"):
        requests.append(f"+{model['waiting']}q", style="yellow")
    return requests


def _loaded_countdown(model: Mapping[str, Any], forever: str, parts: int) -> Text:
    """A loaded model's time until it is unloaded for idleness: ``forever`` (keep_alive or
    idle_timeout -1), ``busy`` (requests in flight: it starts when they end), or the time."""
    timeout = model.get("idle_timeout_s")
    if isinstance(timeout, int | float) and timeout < 0:
        return Text(forever, style="green")
    expires = model.get("expires_in_s")
    if expires is None:
        return Text("busy", style="cyan")
    return Text(human_duration(float(expires), parts))


def idle_left(model: Mapping[str, Any], parts: int = 1) -> Text:
    """How long until the model is unloaded for idleness: ``7m``, ``never`` (keep_alive -1 or
    idle_timeout -1), ``busy`` (requests in flight: the countdown starts when they end), or
    ``—`` when it is not loaded."""
    if model.get("status") != "loaded":
        return Text(NONE, style="dim")
    return _loaded_countdown(model, "never", parts)


def until_unload(model: Mapping[str, Any]) -> Text:
    """``ps``'s countdown: ``6m55s``, ``forever`` (keep_alive / idle_timeout -1), ``busy``
    (requests in flight: it starts when they end), ``loading``, ``unloading``."""
    status = model.get("status")
    if status == "loaded":
        return _loaded_countdown(model, "forever", 2)
    if status == "loading":
        return Text(NONE, style="dim")
    return Text("unloading", style="yellow")


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


def _list_table() -> Table:
    """The borderless table of ``ps`` and ``models list``."""
    return Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
        header_style="bold",
    )


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
    table = _list_table()
    table.add_column("model", overflow="ellipsis", min_width=8)
    table.add_column("type", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("until unload", justify="right", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("reqs", justify="right", no_wrap=True)
    for model in loaded:
        measured = measured_bytes(model)
        table.add_row(
            ModelName.of(model),
            short_type(model.get("type", "?")),
            status_text(model),
            Text(human_bytes(measured)) if measured is not None else planned_text(model),
            until_unload(model),
            str(model.get("pid") or NONE),
            requests_text(model, waiting=False),
        )
    return table


def models_table(models: Sequence[Mapping[str, Any]]) -> Table:
    """``models list``: every configured model, the size of its weights on disk, its aliases
    and where its weights are (memory is in ``status``; at 80 columns the path needs the room
    more)."""
    table = _list_table()
    table.add_column("model", no_wrap=True, overflow="ellipsis", max_width=18)
    table.add_column("type", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("disk", justify="right", no_wrap=True)
    table.add_column("aliases", overflow="ellipsis", no_wrap=True, max_width=16)
    table.add_column("path")
    for model in models:
        table.add_row(
            str(model.get("name", "?")),
            short_type(model.get("type", "?")),
            status_text(model),
            disk_text(model),
            ", ".join(model.get("aliases") or []) or NONE,
            LeftTrimmed(str(model.get("path", "")), style="dim"),
        )
    return table


def _kv_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def show_panel(data: Mapping[str, Any], now: float | None = None) -> Panel:
    """``models show``: the model's state, request metrics, config, and what the hub knows
    about its files (``details``, rendered generically since its keys depend on the model)."""
    now = time.time() if now is None else now
    rows = _kv_table()
    rows.add_row("status", status_text(data))
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
        table.add_row(label, *(ms(metrics.get(f"{key}_{q}_s")) for q in ("p50", "p95", "p99")))
    table.add_row("tok/s", num(metrics.get("tokens_per_s_p50"), "{:.1f}"), "", "")
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
            rows.add_row(key, ", ".join(map(scalar, value)) or NONE)
        else:
            rows.add_row(key, scalar(value))
    return rows
