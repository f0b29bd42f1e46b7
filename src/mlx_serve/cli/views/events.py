"""``mlx-serve logs``: one event per line, what matters for its kind first."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any

from rich.text import Text

from .format import human_bytes, ms, scalar, seconds
from .status import eviction_reason

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
        # The status names the API uses (older servers sent only the state names).
        old, new = data.pop("old", "?"), data.pop("new", "?")
        old, new = data.pop("old_status", old), data.pop("status", new)
        out.append(f"{old} → ")
        out.append(str(new), style=_STATE_STYLES.get(str(new), ""))
    elif kind == "swap":
        out.append(f"→ {data.pop('to', '?')}")
    elif kind in ("model.loaded", "model.unloaded") and "duration_s" in data:
        out.append(f"in {seconds(data.pop('duration_s'))}")
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
        out.append(eviction_reason(data))
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
            out.append(f" ttft {ms(ttft)}ms")
        if latency is not None:
            out.append(f" total {ms(latency)}ms")
        tps = data.pop("tokens_per_s", None)
        if isinstance(tps, int | float):
            out.append(f" {tps:.0f} tok/s")
        queued = data.pop("queued_s", None)
        if isinstance(queued, int | float) and queued >= 0.001:
            out.append(f" queued {ms(queued)}ms", style="yellow")
        load = data.pop("load_s", None)  # waiting for the model to start: not in ttft
        if isinstance(load, int | float) and load >= 0.001:
            out.append(f" load {ms(load)}ms", style="yellow")
        if not ok and data.get("code"):
            out.append(f" {data.pop('code')}", style="red")
        data.pop("code", None)
        for key in ("stream", "prompt_tokens"):
            data.pop(key, None)
        if not data.get("retries"):
            data.pop("retries", None)
    # Empty values ("added=[]" in a reload that added nothing) are noise on a log line.
    rest = [f"{k}={scalar(v)}" for k, v in data.items() if v not in (None, "", [], {})]
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
            out.append(f" in {seconds(duration)}")
        if isinstance(rss, int | float):
            out.append(f", {human_bytes(rss)}")
    elif kind == "spare.taken" and data.get("by"):
        out.append(f" for {data.pop('by')}")
    elif kind == "spare.stopped" and data.get("reason"):
        out.append(f": {data.pop('reason')}")


_STATE_STYLES = {
    "loaded": "green",
    "loading": "yellow",
    "draining": "yellow",
    "unloading": "yellow",
    "failed": "bold red",
    # state names, from servers that sent no status
    "ready": "green",
    "starting": "yellow",
    "stopping": "yellow",
}
