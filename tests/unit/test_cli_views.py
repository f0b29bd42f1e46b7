"""The CLI's rendering, as pure functions of the management API's JSON, at 80 columns.

The sample JSON below is written by hand to look like a busy server with a memory budget (a
loaded model, one with a name too long for the table, one whose files are not downloaded yet, a
failed one, a pinned one serving requests, a model evicted a moment ago); a test builds the
real ``/api/stats`` answer from a supervisor with fake workers and checks the sample has the
same keys, so the views cannot drift from what the server sends.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, RenderableType
from rich.text import Text

from mlx_serve.cli import views
from mlx_serve.cli.client import _api_error
from mlx_serve.cli.logs_cmd import parse_since, worker_log_path
from mlx_serve.cli.settings import load_settings, url_for

NOW = 1_700_000_000.0
LONG_NAME = "Meta-Llama-3.1-8B-Instruct-4bit-with-an-even-longer-suffix"
GIB = 2**30
MIB = 2**20


def _metrics(count: int = 0, ttft: float | None = None, tps: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "count": count,
        "errors": 0,
        "statuses": {"200": count} if count else {},
        "error_codes": {},
    }
    for name, value in (("ttft", ttft), ("latency", None if ttft is None else ttft * 10)):
        for q in (50, 95, 99):
            out[f"{name}_p{q}_s"] = value
    for q in (50, 95, 99):
        out[f"queued_p{q}_s"] = None if ttft is None else 0.0
        out[f"load_p{q}_s"] = None
    out["cold_starts"] = 0
    out["tokens_per_s_p50"] = tps
    return out


def _memory(
    estimate: tuple[int | None, int, int, int | None] | None = None,
    learned: int | None = None,
    measured: int | None = None,
    peak: int | None = None,
) -> dict[str, Any]:
    """A model's ``memory`` (``Footprint.to_json``): ``estimate`` is (weights, KV cache,
    overhead, context tokens); without one the estimate keys are absent, as the server does."""
    out: dict[str, Any] = {}
    if estimate is not None:
        weights, kv_cache, overhead, tokens = estimate
        out = {
            "estimate_bytes": (weights or 0) + kv_cache + overhead,
            "weights_bytes": weights,
            "kv_cache_bytes": kv_cache,
            "overhead_bytes": overhead,
            "context_tokens": tokens,
        }
    figures = [out.get("estimate_bytes", 0), learned or 0, peak or 0]
    out |= {
        "learned_bytes": learned,
        "measured_bytes": measured,
        "peak_bytes": peak,
        "planned_bytes": max(figures),
    }
    return out


def _model(name: str, **fields: Any) -> dict[str, Any]:
    """One entry of ``/api/models`` / ``/api/stats`` ``models`` (``management.model_status``)."""
    status = fields.pop("status", "unloaded")
    loaded = status in ("loaded", "draining", "unloading")
    entry: dict[str, Any] = {
        "name": name,
        "type": "text",
        "path": f"mlx-community/{name}",
        "aliases": [],
        "status": status,
        "error": None,
        "pid": 4242 if loaded else None,
        "port": 50123 if loaded else None,
        "rss_bytes": None,
        "loaded_at": NOW - 3600 if loaded else None,
        "last_used": None,
        "idle_timeout_s": 600.0,
        "expires_in_s": None,
        "keep_alive_s": None,
        "requests": 0,
        "inflight": 0,
        "waiting": 0,
        "pinned": False,
        "distributed": None,
        "pull": None,
        "memory": _memory(),
        "metrics": _metrics(),
    }
    entry.update(fields)
    return entry


def sample_stats() -> dict[str, Any]:
    """``GET /api/stats`` of a server with five models in different states and a budget."""
    models = _sample_models()
    planned = sum(
        m["memory"]["planned_bytes"] for m in models if m["status"] in ("loaded", "loading")
    )
    return {
        "version": "0.4.0",
        "uptime_s": 7512.3,
        "started_at": NOW - 7512.3,
        "config_path": "/Users/someone/.mlx-serve/models.yaml",
        "memory": {
            "system_total_bytes": 16 * GIB,
            "system_available_bytes": int(5.1 * GIB),
            "workers_rss_bytes": int(4.2 * GIB),
            "router_rss_bytes": 60_000_000,
            "budget_bytes": 12 * GIB,
            "budget_source": "75% of 16.0 GiB physical",
            "max_loaded_models": None,
            "planned_bytes": planned,
            "measured_bytes": int(4.2 * GIB),
            "free_bytes": 12 * GIB - planned,
            "last_eviction": EVICTION,
            "spares_bytes": 90_000_000,
        },
        "queue": {"waiting": 0},
        "requests": {
            "count": 0,
            "errors": 0,
            "statuses": {},
            "error_codes": {},
            "unknown": {"count": 0, "errors": 0, "statuses": {}, "error_codes": {}},
        },
        "models": models,
        "spares": [
            {
                "kind": "text",
                "pid": 4501,
                "port": 50200,
                "status": "spare",
                "rss_bytes": 90_000_000,
                "started_at": NOW - 60.0,
            },
        ],
        "events": [],
    }


#: ``memory.last_eviction``: LONG_NAME was unloaded to make room for qwen (as the scheduler
#: emits it).
EVICTION: dict[str, Any] = {
    "seq": 311,
    "ts": NOW - 190,
    "kind": "model.evicted",
    "model": LONG_NAME,
    "victim_bytes": int(4.6 * GIB),
    "budget_bytes": 12 * GIB,
    "max_loaded": None,
    "reason": "memory",
    "for_model": "qwen",
    "needed_bytes": int(1.3 * GIB),
    "used_bytes": int(11.5 * GIB),
    "free_bytes": int(0.5 * GIB),
    "resident": 3,
}


def _sample_models() -> list[dict[str, Any]]:
    return [
        _model(
            "qwen",
            status="loaded",
            aliases=["default"],
            rss_bytes=int(1.2 * GIB),
            last_used=NOW - 185,
            expires_in_s=415.0,
            requests=42,
            memory=_memory(
                (int(0.8 * GIB), 96 * MIB, 250 * MIB, 8192),
                learned=int(1.3 * GIB),
                measured=int(1.2 * GIB),
                peak=int(1.25 * GIB),
            ),
            metrics=_metrics(42, ttft=0.0452, tps=812.4),
        ),
        _model(
            LONG_NAME,
            last_used=NOW - 7400,
            requests=3,
            memory=_memory((int(4.2 * GIB), 256 * MIB, 250 * MIB, 8192)),
            metrics=_metrics(3, 0.31, 35.2),
        ),
        _model(
            "minilm",
            type="embedding",
            status="loading",
            pid=4343,
            memory=_memory((None, 0, 250 * MIB, None)),  # not downloaded yet
        ),
        _model(
            "whisper",
            type="stt",
            status="failed",
            error="model 'whisper' failed to start: the worker exited with code 1 while "
            "loading\n--- last lines of its log ---\nTraceback ...",
        ),
        _model(
            "pinned",
            type="vision",
            status="loaded",
            rss_bytes=3 * GIB,
            last_used=NOW - 5,
            idle_timeout_s=-1.0,
            keep_alive_s=-1.0,
            requests=1200,
            inflight=2,
            pinned=True,
            memory=_memory(
                (int(2.5 * GIB), 128 * MIB, 400 * MIB, 4096),
                learned=int(3.1 * GIB),
                measured=3 * GIB,
                peak=int(3.05 * GIB),
            ),
            metrics=_metrics(1200, ttft=1.234, tps=12.3),
        ),
    ]


def render(renderable: RenderableType, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def assert_fits(text: str, width: int = 80) -> None:
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, f"lines over {width} columns: {too_long}"


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "—"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (320 * 2**20, "320 MiB"),
        (int(1.2 * GIB), "1.2 GiB"),
        (16 * GIB, "16.0 GiB"),
        (200 * GIB, "200 GiB"),
        (3 * 2**50, "3.0 PiB"),
        (5 * 2**60, "5120 PiB"),
    ],
)
def test_human_bytes(value: int | None, expected: str) -> None:
    assert views.human_bytes(value) == expected


@pytest.mark.parametrize(
    ("seconds", "parts", "expected"),
    [
        (None, 2, "—"),
        (-1, 2, "never"),
        (0, 2, "0s"),
        (0.25, 2, "0.2s"),
        (42.9, 2, "42s"),
        (60, 2, "1m"),
        (90, 2, "1m30s"),
        (420, 2, "7m"),
        (419.9, 1, "6m"),  # rounded down: a countdown never shows more than is left
        (3900, 2, "1h05m"),
        (7512.3, 2, "2h05m"),
        (7512.3, 1, "2h"),
        (86400 + 7200 + 60, 2, "1d02h"),
        (3 * 86400, 2, "3d"),
    ],
)
def test_human_duration(seconds: float | None, parts: int, expected: str) -> None:
    assert views.human_duration(seconds, parts) == expected


def test_relative_time() -> None:
    assert views.relative_time(None, NOW) == "never"
    assert views.relative_time(NOW - 0.3, NOW) == "now"
    assert views.relative_time(NOW - 185, NOW) == "3m ago"
    assert views.relative_time(NOW - 185, NOW, parts=2) == "3m05s ago"
    assert views.relative_time(NOW + 5, NOW) == "now", "a clock a bit ahead is not the future"


def test_parse_since() -> None:
    assert parse_since("10m", now=NOW) == NOW - 600
    assert parse_since("1h30m", now=NOW) == NOW - 5400
    assert parse_since("90", now=NOW) == NOW - 90, "a small number is seconds back"
    assert parse_since(str(NOW - 1), now=NOW) == NOW - 1, "a unix time is taken as is"
    assert parse_since("2023-11-14T22:13:20+00:00", now=0) == NOW
    assert parse_since("2023-11-14T22:13:20Z", now=0) == NOW
    naive = datetime(2023, 11, 14, 12, 0).timestamp()  # local time, like the user typed it
    assert parse_since("2023-11-14T12:00", now=0) == naive
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday-ish")


# ------------------------------------------------------------------ status


def test_status_table_fits_80_columns() -> None:
    text = render(views.status_view(sample_stats(), now=NOW))
    assert_fits(text)
    lines = text.splitlines()
    head = "\n".join(lines[:8])
    for header in ("model", "type", "status", "memory", "planned", "last", "used", "idle"):
        assert header in head
    for header in ("left", "reqs", "TTFT", "p50 ms", "tok/s"):
        assert header in head
    assert lines[0] == "mlx-serve 0.4.0 · up 2h05m"
    assert lines[1] == "config /Users/someone/.mlx-serve/models.yaml"
    assert lines[2] == "memory 5.1 GiB of 16.0 GiB free · workers 4.2 GiB"
    assert lines[3] == (
        "budget 12.0 GiB · planned 4.6 GiB · free 7.4 GiB · 75% of 16.0 GiB physical"
    )
    assert lines[4] == "spares: text (pid 4501, 85.8 MiB)"

    rows = {line.split()[0]: line for line in lines if line.split()}
    # memory: what the loaded model measures; planned: what the budget counts for it.
    assert rows["qwen"].split()[1:] == [
        *("text", "loaded", "1.2", "GiB", "1.3", "GiB", "3m", "ago", "6m", "42", "45", "812"),
    ]
    assert rows["minilm"].split()[1:5] == ["embed", "loading", "—", "≥250"], "no weights yet"
    assert rows["pinned"].split()[1:] == [
        *("📌", "vision", "loaded", "3.0", "GiB", "3.1", "GiB", "5s", "ago", "never"),
        *("1200+2", "1234", "12"),
    ]
    assert rows["whisper"].split()[1:6] == ["stt", "failed", "—", "?", "never"]
    (llama,) = [line for line in lines if line.startswith("Meta-Llama")]
    assert llama.split()[3:6] == ["—", "~4.7", "GiB"], "only an estimate: never loaded"


def test_status_header_names_the_server_and_fits_80_columns() -> None:
    """Like `lms status`: version, URL, pid, uptime; the config; memory. At 80 columns in a
    Console of that width nothing wraps, even with every figure at its widest."""
    stats = sample_stats()
    stats["version"] = "0.4.0.dev0"
    stats["uptime_s"] = 12 * 86400 + 3 * 3600
    stats["queue"] = {"waiting": 12}
    stats["memory"]["system_available_bytes"] = int(123.4 * GIB)
    stats["memory"]["system_total_bytes"] = 512 * GIB
    stats["memory"]["workers_rss_bytes"] = int(99.9 * GIB)
    url = "http://127.0.0.1:18095"
    text = render(views.status_view(stats, now=NOW, url=url, pid=4194303))
    assert_fits(text)
    lines = text.splitlines()
    assert lines[0] == f"mlx-serve 0.4.0.dev0 · {url} · pid 4194303 · up 12d03h"
    assert lines[1] == "config /Users/someone/.mlx-serve/models.yaml"
    assert lines[2] == "memory 123 GiB of 512 GiB free · workers 99.9 GiB · 12 waiting"


def test_status_header_breaks_between_figures_never_inside_one() -> None:
    url = "http://[fd00:1234:5678:9abc::1]:18095"
    text = render(views.status_header(sample_stats(), url=url, pid=4242), width=60)
    assert_fits(text, 60)
    lines = text.splitlines()
    assert lines[0] == f"mlx-serve 0.4.0 · {url}"
    assert lines[1] == "pid 4242 · up 2h05m", "the figures that did not fit, whole"
    assert lines[2] == "config /Users/someone/.mlx-serve/models.yaml"


def test_a_long_config_path_loses_its_start_not_its_file_name() -> None:
    stats = {**sample_stats(), "config_path": "/Users/someone/" + "deep/" * 20 + "models.yaml"}
    lines = render(views.status_header(stats)).splitlines()
    assert_fits("\n".join(lines))
    assert lines[1].startswith("config …") and lines[1].endswith("/deep/models.yaml")
    assert len(lines[1]) == 80


def test_segments_cut_a_part_too_long_for_any_line() -> None:
    parts = [Text("a" * 30), Text("b" * 100)]
    lines = [line.plain for line in views.Segments(parts).lines(40)]
    assert lines == ["a" * 30, "b" * 39 + "…"]


def test_the_request_column_has_a_legend_when_it_needs_one() -> None:
    text = render(views.status_view(sample_stats(), now=NOW))
    (legend,) = [line for line in text.splitlines() if line.startswith("reqs ")]
    assert legend == "reqs = requests so far, +in flight now, +queued (q)"
    stats = sample_stats()
    for model in stats["models"]:
        model["inflight"] = model["waiting"] = 0
    assert "requests so far" not in render(views.status_view(stats, now=NOW))
    stats["models"][0]["waiting"] = 1
    assert "+queued (q)" in render(views.status_view(stats, now=NOW))


def _loaded() -> list[dict[str, Any]]:
    models = [m for m in sample_stats()["models"] if m["status"] in views.RESIDENT_STATUSES]
    for pid, model in enumerate(models, start=4242):
        model["pid"] = pid
    return models


def test_ps_lists_loaded_models_with_size_and_time_until_unload() -> None:
    loaded = _loaded()
    busy = _model(
        "busy-one",
        status="loaded",
        pid=4300,
        inflight=1,
        requests=7,
        expires_in_s=None,
        memory=_memory((GIB, 0, 250 * MIB, None)),
    )
    leaving = _model("leaving", status="unloading", pid=4301, rss_bytes=GIB)
    text = render(views.ps_view([*loaded, busy, leaving], configured=9))
    assert_fits(text)
    lines = text.splitlines()
    for header in ("model", "type", "status", "size", "until unload", "pid", "reqs"):
        assert header in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    # Measured memory when the worker has been measured, else what is planned for it.
    assert rows["qwen"][1:] == ["text", "loaded", "1.2", "GiB", "6m55s", "4242", "42"]
    assert rows["minilm"][1:] == ["embed", "loading", "≥250", "MiB", "—", "4243", "0"]
    assert rows["pinned"][1:] == [
        *("📌", "vision", "loaded", "3.0", "GiB", "forever", "4244", "1200+2"),
    ]
    assert rows["busy-one"][1:] == ["text", "loaded", "~1.2", "GiB", "busy", "4300", "7+1"]
    assert rows["leaving"][1:] == ["text", "unloading", "1.0", "GiB", "unloading", "4301", "0"]
    assert len(lines) == 2 + 5


def test_ps_with_nothing_loaded_says_so() -> None:
    text = render(views.ps_view([], configured=3))
    assert text.startswith("no model is loaded (3 configured; a request loads one")
    assert render(views.ps_view([])).strip() == "no model is loaded"


def test_until_unload() -> None:
    assert views.until_unload(_model("m", status="loaded", expires_in_s=3725.0)).plain == "1h02m"
    forever = _model("m", status="loaded", idle_timeout_s=-1.0, expires_in_s=None)
    assert views.until_unload(forever).plain == "forever"
    assert views.until_unload(_model("m", status="draining")).plain == "unloading"


def test_long_model_name_is_cut_with_an_ellipsis_not_wrapped() -> None:
    text = render(views.status_table(sample_stats(), now=NOW))
    assert_fits(text)
    holding = [line for line in text.splitlines() if "Meta-Llama" in line or "suffix" in line]
    assert len(holding) == 1, f"the long name spans several lines: {holding}"
    (line,) = holding
    assert "…" in line and LONG_NAME not in line
    assert line.split()[1:3] == ["text", "unloaded"], "the other cells stay on the same line"
    # Every data row is exactly one line: 5 models, 2 header lines, 1 rule.
    assert len(text.rstrip("\n").splitlines()) == 5 + 2 + 1


def test_the_pin_marker_survives_a_cut_name() -> None:
    stats = sample_stats()
    stats["models"][1]["pinned"] = True
    text = render(views.status_table(stats, now=NOW))
    assert_fits(text)
    (line,) = [line for line in text.splitlines() if "Meta-Llama" in line]
    name, marker = line.split()[:2]
    assert name.endswith("…") and marker == views.PIN
    unpinned = [line for line in text.splitlines() if line.startswith(("qwen ", "minilm "))]
    assert len(unpinned) == 2 and all(views.PIN not in line for line in unpinned)


def test_status_table_uses_the_room_a_wide_terminal_has() -> None:
    text = render(views.status_table(sample_stats(), now=NOW), width=140)
    assert LONG_NAME in text and "…" not in text


def test_status_colors_and_idle_left() -> None:
    table = views.status_table(sample_stats(), now=NOW)
    statuses = list(table.columns[2].cells)
    assert [str(s) for s in statuses] == ["loaded", "unloaded", "loading", "failed", "loaded"]
    assert [s.style for s in statuses if isinstance(s, Text)] == [
        *("bold green", "dim", "yellow", "bold red", "bold green"),
    ]
    busy = views.idle_left(_model("m", status="loaded", inflight=1, expires_in_s=None))
    assert str(busy) == "busy", "the countdown starts when the in-flight requests end"
    assert str(views.idle_left(_model("m", status="loaded", expires_in_s=0.0))) == "0s"
    assert str(views.idle_left(_model("m", status="unloaded"))) == "—"


def test_failed_models_show_their_reason_under_the_table() -> None:
    text = render(views.status_view(sample_stats(), now=NOW))
    (line,) = [x for x in text.splitlines() if x.startswith("whisper:")]
    assert "the worker exited with code 1" in line and "Traceback" not in line


def test_status_of_a_server_with_no_models() -> None:
    stats = {**sample_stats(), "models": [], "config_path": None}
    text = render(views.status_view(stats, now=NOW))
    assert "config (none)" in text and "model" in text


def _no_budget(cap: int | None = 1) -> dict[str, Any]:
    return {
        **sample_stats()["memory"],
        "budget_bytes": None,
        "budget_source": None,
        "max_loaded_models": cap,
        "free_bytes": None,
        "last_eviction": None,
    }


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (_no_budget(1), "no memory budget · one model at a time"),
        (_no_budget(3), "no memory budget · max 3 loaded"),
        (_no_budget(None), "no memory budget · no model limit"),
        (
            {**sample_stats()["memory"], "max_loaded_models": 2, "budget_source": "configured"},
            "budget 12.0 GiB · planned 4.6 GiB · free 7.4 GiB · max 2 loaded · configured",
        ),
        (
            {**sample_stats()["memory"], "planned_bytes": 13 * GIB, "free_bytes": -GIB},
            "budget 12.0 GiB · planned 13.0 GiB · over by 1.0 GiB · 75% of 16.0 GiB physical",
        ),
    ],
)
def test_memory_line(memory: dict[str, Any], expected: str) -> None:
    assert views.memory_line(memory).plain == expected


def test_memory_line_colors_what_needs_attention() -> None:
    over = views.memory_line({**sample_stats()["memory"], "free_bytes": -GIB})
    assert any(str(span.style) == "bold red" for span in over.spans)
    low = views.memory_line({**sample_stats()["memory"], "free_bytes": GIB // 2})
    assert any(str(span.style) == "yellow" for span in low.spans)


def test_a_long_budget_source_is_cut_not_wrapped() -> None:
    stats = sample_stats()
    stats["memory"]["budget_source"] = (
        "auto: MLX's recommended working set 21.3 GiB minus 1.0 GiB (and then some more)"
    )
    lines = render(views.status_view(stats, now=NOW)).splitlines()
    assert_fits("\n".join(lines))
    assert lines[3].startswith("budget 12.0 GiB · planned 4.6 GiB · free 7.4 GiB · auto:")
    assert lines[3].endswith("…") and lines[4].startswith("spares: ") and lines[5] == ""


def test_status_shows_the_last_eviction() -> None:
    text = render(views.status_view(sample_stats(), now=NOW))
    (line,) = [x for x in text.splitlines() if x.startswith("evicted ")]
    # The victim's long name is cut, the numbers are not.
    assert (
        line == "evicted Meta-Llama-3.1-8B… for qwen 3m ago: memory, needed 1.3 GiB, free 512 MiB"
    )
    wide = render(views.status_view(sample_stats(), now=NOW), width=160)
    assert f"evicted {LONG_NAME} for qwen 3m ago: memory" in wide
    without = {**sample_stats(), "memory": _no_budget()}
    assert "evicted" not in render(views.status_view(without, now=NOW))


def _spare(kind: str = "text", pid: int = 4501, rss: int | None = 90_000_000) -> dict[str, Any]:
    """One entry of ``/api/stats`` ``spares`` (``Spare.to_json``): ready when measured."""
    return {
        "kind": kind,
        "pid": pid,
        "port": 50200,
        "status": "spare" if rss is not None else "starting",
        "rss_bytes": rss,
        "started_at": NOW - 60.0,
    }


def _with_spares(*spares: dict[str, Any], **memory: Any) -> dict[str, Any]:
    stats = sample_stats()
    stats["spares"] = list(spares)
    stats["memory"] |= memory
    return stats


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        # One measured spare: what it holds is what it takes off the budget; no total.
        (_with_spares(_spare()), "spares: text (pid 4501, 85.8 MiB)"),
        (
            _with_spares(_spare(), _spare("stt", 4502, None), spares_bytes=90_000_000 + 250 * MIB),
            "spares: text (pid 4501, 85.8 MiB) · stt starting · 336 MiB reserved",
        ),
        (
            _with_spares(_spare("embedding", rss=None), spares_bytes=250 * MIB),
            "spares: embed starting · 250 MiB reserved",
        ),
        # 85 columns with the pids: they go first.
        (
            _with_spares(_spare(), _spare("vision", 4502, 40 * MIB), spares_bytes=130 * MIB),
            "spares: text 85.8 MiB · vision 40.0 MiB · 130 MiB reserved",
        ),
        # Without a budget nothing is reserved from one.
        (
            {**_with_spares(_spare(), _spare("tts", 4502, None)), "memory": _no_budget()},
            "spares: text (pid 4501, 85.8 MiB) · tts starting",
        ),
    ],
)
def test_spares_line(stats: dict[str, Any], expected: str) -> None:
    lines = render(views.status_view(stats, now=NOW)).splitlines()
    assert_fits("\n".join(lines))
    (line,) = [x for x in lines if x.startswith("spares")]
    assert line == expected
    # Under the memory line, above the table; never a row of the table.
    assert lines.index(line) == 4 and lines[5] == ""
    table = render(views.status_table(stats, now=NOW))
    assert not [x for x in table.splitlines() if x.split()[:1] == [stats["spares"][0]["kind"]]]


def test_a_spare_still_starting_is_yellow() -> None:
    stats = _with_spares(_spare(), _spare("stt", 4502, None))
    line = views.spares_line(stats)
    assert line is not None
    text = line.text()
    styles = {text.plain[s.start : s.end].strip(): str(s.style) for s in text.spans}
    assert styles["starting"] == "yellow" and styles["text"] == "cyan"


def test_no_spares_no_line() -> None:
    for stats in (_with_spares(), {k: v for k, v in sample_stats().items() if k != "spares"}):
        assert views.spares_line(stats) is None
        lines = render(views.status_view(stats, now=NOW)).splitlines()
        assert "spares" not in "\n".join(lines)
        assert lines[3].startswith("budget ") and lines[4] == "", "the table follows at once"


def test_many_spares_lose_their_pids_then_their_end() -> None:
    three = [_spare(k, 40000 + i) for i, k in enumerate(("text", "vision", "embedding"))]
    stats = _with_spares(*three, spares_bytes=3 * 90_000_000)
    (line,) = [x for x in render(views.status_view(stats, now=NOW)).splitlines() if "spares" in x]
    assert line == "spares: text 85.8 MiB · vision 85.8 MiB · embed 85.8 MiB · 257 MiB reserved"
    wide = render(views.status_view(stats, now=NOW), width=160)
    assert "vision (pid 40001, 85.8 MiB)" in wide, "with room, the pids are back"
    five = _with_spares(
        *three, _spare("tts", 40003), _spare("stt", 40004, None), spares_bytes=5 * 90_000_000
    )
    text = render(views.status_view(five, now=NOW))
    assert_fits(text)
    (line,) = [x for x in text.splitlines() if "spares" in x]
    assert line.startswith("spares: text 85.8 MiB · vision") and line.endswith("…")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"model": "qwen", "for_model": "llama", "reason": "count", "max_loaded": 1},
            "evicted qwen for llama 3m ago: count, max 1 loaded",
        ),
        (
            {"model": "qwen", "for_model": None, "reason": "over_budget", "free_bytes": None},
            "evicted qwen 3m ago: over budget, 11.5 GiB planned of 12.0 GiB",
        ),
        (
            {"model": "a" * 50, "for_model": "b" * 50},
            f"evicted {'a' * 10}… for {'b' * 10}… 3m ago: memory, needed 1.3 GiB, free 512 MiB",
        ),
    ],
)
def test_eviction_line(fields: dict[str, Any], expected: str) -> None:
    line = render(views.eviction_line({**EVICTION, **fields}, now=NOW)).rstrip("\n")
    assert line == expected and len(line) <= 80


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ({"planned_bytes": GIB, "learned_bytes": GIB}, "1.0 GiB"),
        ({"planned_bytes": GIB, "peak_bytes": GIB}, "1.0 GiB"),
        ({"planned_bytes": GIB, "estimate_bytes": GIB, "weights_bytes": 3 * 2**29}, "~1.0 GiB"),
        ({"planned_bytes": GIB, "estimate_bytes": GIB, "weights_bytes": None}, "≥1.0 GiB"),
        ({"planned_bytes": 0}, "?"),
        ({}, "?"),
    ],
)
def test_planned_text(memory: dict[str, Any], expected: str) -> None:
    assert views.planned_text({"memory": memory}).plain == expected
    assert views.planned_text({}).plain == "?", "a server without memory figures"


# ------------------------------------------------------------------ other views


def test_models_table_fits_and_keeps_the_end_of_long_paths() -> None:
    models = sample_stats()["models"]
    models[0]["path"] = "/Users/someone/models/qwen2.5-7b-instruct-4bit"
    text = render(views.models_table(models))
    assert_fits(text)
    (qwen,) = [line for line in text.splitlines() if line.startswith("qwen ")]
    # disk: the size of the weights on disk, from the estimate the server made of the files.
    assert qwen.split()[1:6] == ["text", "loaded", "819", "MiB", "default"]
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()}
    assert rows["minilm"][1:4] == ["embed", "loading", "—"], "not downloaded: nothing on disk"
    assert rows["whisper"][1:4] == ["stt", "failed", "?"], "no estimate: the size is unknown"
    path = qwen.split()[-1]
    assert path.startswith("…") and path.endswith("2.5-7b-instruct-4bit"), "its start is cut"
    (llama,) = [line for line in text.splitlines() if "Meta-Llama" in line]
    assert "…" in llama and llama.rstrip().endswith(LONG_NAME[-12:])
    assert len(text.rstrip("\n").splitlines()) == 5 + 2


def test_show_panel() -> None:
    data = {
        **sample_stats()["models"][0],
        "config": {
            "type": "text",
            "path": "mlx-community/qwen",
            "idle_timeout": None,
            "aliases": ["default"],
            "defaults": {"temperature": 0.7},
            "preload": False,
        },
        "details": {
            "source": "hub",
            "cached": True,
            "files": [{"name": f"f{i}.safetensors", "size": 10} for i in range(6)],
            "size_bytes": 800 * 2**20,
            "architectures": ["Qwen2ForCausalLM"],
            "quantization": {"bits": 4, "group_size": 64},
        },
    }
    text = render(views.show_panel(data, now=NOW))
    assert_fits(text)
    for expected in (
        "qwen",
        "loaded",
        "pid 4242, port 50123",
        "planned     1.3 GiB  (the peak of the last load)",
        "estimate    1.1 GiB",
        "  weights   819 MiB",
        "  KV cache  96.0 MiB  (8,192 tokens of context)",
        "  overhead  250 MiB",
        "learned     1.3 GiB",
        "measured    1.2 GiB",
        "idle left",
        "6m55s",
        "42 total, 0 in flight, 0 waiting",
        "TTFT ms",
        '{"temperature": 0.7}',
        "6 (f0.safetensors, f1.safetensors",
        "800 MiB",
        "Qwen2ForCausalLM",
        '{"bits": 4, "group_size": 64}',
    ):
        assert expected in text, expected


def test_show_panel_of_a_failed_model() -> None:
    data = {**sample_stats()["models"][3], "config": {}, "details": {}}
    text = render(views.show_panel(data, now=NOW))
    assert "failed" in text and "the worker exited with code 1" in text
    assert "idle left" not in text
    # No estimate could be made and it never loaded: nothing to plan with.
    for expected in ("planned   unknown", "estimate  none", "learned   never loaded"):
        assert expected in text, expected
    assert "weights" not in text and "pinned" not in text


def _memory_rows(data: dict[str, Any]) -> list[str]:
    """The lines of the ``memory`` section of ``models show``, stripped of the panel."""
    text = render(views.show_panel(data, now=NOW))
    lines = [line.removeprefix("│ ").rstrip("│ ") for line in text.splitlines()]
    rows = lines[lines.index("memory") + 1 :]
    return rows[: [not row or row.startswith("╰") for row in rows].index(True)]


def test_show_panel_memory_of_models_never_loaded() -> None:
    llama, minilm = sample_stats()["models"][1:3]
    assert _memory_rows({**llama, "config": {}}) == [
        "planned     4.7 GiB  (the estimate)",
        "estimate    4.7 GiB",
        "  weights   4.2 GiB",
        "  KV cache  256 MiB  (8,192 tokens of context)",
        "  overhead  250 MiB",
        "learned     never loaded",
        "measured    not loaded",
    ]
    rows = _memory_rows({**minilm, "status": "unloaded", "pid": None, "config": {}})
    assert rows[2] == "  weights   unknown (files not on disk)"
    assert rows[3] == "  KV cache  0 B", "no context: the model's config is not on disk either"


def test_show_panel_of_a_pinned_model_measured_above_its_estimate() -> None:
    pinned = sample_stats()["models"][4]
    pinned["memory"] |= {"peak_bytes": int(3.4 * GIB), "planned_bytes": int(3.4 * GIB)}
    text = render(views.show_panel({**pinned, "config": {}}, now=NOW))
    assert f"pinned      {views.PIN} never unloaded to make room for another model" in text
    rows = _memory_rows({**pinned, "config": {}})
    assert rows[0] == "planned     3.4 GiB  (the peak of this load)"
    assert rows[-1] == "measured    3.0 GiB  (peak 3.4 GiB)"


def event(kind: str, model: str | None = "qwen", **data: Any) -> dict[str, Any]:
    return {"seq": 7, "ts": NOW, "kind": kind, "model": model, **data}


@pytest.mark.parametrize(
    ("evt", "expected"),
    [
        (
            event("worker.state", old="stopped", new="starting"),
            "22:13:20 worker.state   qwen stopped → starting",
        ),
        (
            event(
                "worker.state", old="ready", new="draining", old_status="loaded", status="draining"
            ),
            "22:13:20 worker.state   qwen loaded → draining",
        ),
        (
            event("model.loaded", duration_s=1.234, pid=55, type="text", log_tail="x\ny"),
            "22:13:20 model.loaded   qwen in 1.23s pid=55 type=text",
        ),
        (
            event("model.unloaded", duration_s=0.014, reason="idle", was="ready"),
            "22:13:20 model.unloaded qwen in 14ms reason=idle was=ready",
        ),
        (event("swap", to="llama"), "22:13:20 swap           qwen → llama"),
        (
            event(
                "request",
                endpoint="/v1/chat/completions",
                stream=True,
                status=200,
                queued_s=0.0,
                ttft_s=0.045,
                latency_s=0.5,
                prompt_tokens=5,
                completion_tokens=40,
                tokens_per_s=88.9,
                retries=0,
                error=None,
            ),
            "22:13:20 request        qwen 200 /v1/chat/completions 40 tok ttft 45ms total "
            "500ms 89 tok/s",
        ),
        (
            event("request", endpoint="/v1/embeddings", status=503, error="queue full"),
            "22:13:20 request        qwen 503 /v1/embeddings error=queue full",
        ),
        (
            event("worker.crashed", exit_code=-9, log_tail="boom"),
            "22:13:20 worker.crashed qwen exit_code=-9",
        ),
        (
            event("config.reload", None, status="ok", added=[], changed=["a", "b"]),
            "22:13:20 config.reload  status=ok changed=a,b",
        ),
        (event("supervisor.stopped", None), "22:13:20 supervisor.stopped"),
        (
            {**EVICTION, "ts": NOW, "model": "qwen", "for_model": "llama"},
            "22:13:20 model.evicted  qwen for llama: memory, needed 1.3 GiB, free 512 MiB, "
            "frees 4.6 GiB",
        ),
        (
            event(
                "model.evicted",
                victim_bytes=GIB,
                budget_bytes=None,
                max_loaded=1,
                reason="count",
                for_model="llama",
                needed_bytes=2 * GIB,
                used_bytes=GIB,
                free_bytes=None,
                resident=1,
            ),
            "22:13:20 model.evicted  qwen for llama: count, max 1 loaded, frees 1.0 GiB",
        ),
        (
            event(
                "model.evicted",
                victim_bytes=GIB,
                budget_bytes=8 * GIB,
                max_loaded=None,
                reason="over_budget",
                used_bytes=9 * GIB,
            ),
            "22:13:20 model.evicted  qwen over budget, 9.0 GiB planned of 8.0 GiB, frees 1.0 GiB",
        ),
        (
            event(
                "model.refused",
                reason="its planned footprint (30.00 GiB) exceeds the whole memory budget",
                needed_bytes=30 * GIB,
                budget_bytes=24 * GIB,
            ),
            "22:13:20 model.refused  qwen needs 30.0 GiB of a 24.0 GiB budget: its planned "
            "footprint (30.00 GiB) exceeds the whole memory budget",
        ),
        (
            event(
                "model.refused",
                reason="the pinned models (a) hold all 1 model slots",
                needed_bytes=GIB,
                budget_bytes=None,
            ),
            "22:13:20 model.refused  qwen needs 1.0 GiB: the pinned models (a) hold all 1 "
            "model slots",
        ),
        (
            event(
                "model.footprint",
                measured_bytes=int(1.3 * GIB),
                estimate_bytes=int(1.1 * GIB),
                planned_bytes=int(1.3 * GIB),
            ),
            "22:13:20 model.footprint qwen measured 1.3 GiB, estimated 1.1 GiB (+18%), "
            "planned 1.3 GiB",
        ),
        (
            event(
                "model.footprint",
                measured_bytes=GIB,
                estimate_bytes=None,
                planned_bytes=GIB,
            ),
            "22:13:20 model.footprint qwen measured 1.0 GiB, planned 1.0 GiB",
        ),
        (
            event(
                "model.loaded", duration_s=0.8, pid=4501, type="text", spare=True, spare_pid=4501
            ),
            "22:13:20 model.loaded   qwen in 800ms from spare pid=4501 type=text",
        ),
        (event("spare.starting", "text", pid=4501), "22:13:20 spare.starting text pid 4501"),
        (
            event("spare.ready", "text", pid=4501, duration_s=2.5, rss_bytes=90_000_000),
            "22:13:20 spare.ready    text pid 4501 in 2.50s, 85.8 MiB",
        ),
        (
            event("spare.taken", "text", pid=4501, by="mlx-community/Qwen2.5-0.5B-4bit"),
            "22:13:20 spare.taken    text pid 4501 for mlx-community/Qwen2.5-0.5B-4bit",
        ),
        (
            event("spare.stopped", "tts", pid=4501, reason="not wanted any more"),
            "22:13:20 spare.stopped  tts pid 4501: not wanted any more",
        ),
        (
            event(
                "spare.failed",
                "text",
                reason="not ready after 120s",
                failures=1,
                gave_up=False,
                log_tail="",
            ),
            "22:13:20 spare.failed   text not ready after 120s",
        ),
        (
            event(
                "spare.failed",
                "vision",
                reason="the spare exited with code 1",
                failures=3,
                gave_up=True,
                log_tail="Traceback (most recent call last):\n  ...",
            ),
            "22:13:20 spare.failed   vision the spare exited with code 1, 3 in a row, gave up",
        ),
    ],
)
def test_event_line(evt: dict[str, Any], expected: str) -> None:
    line = views.event_line(evt, tz=UTC)
    assert line.plain.rstrip() == expected


def test_event_line_colors_the_kind() -> None:
    line = views.event_line(event("worker.crashed", exit_code=1), tz=UTC)
    styles = {line.plain[span.start : span.end].strip(): str(span.style) for span in line.spans}
    assert styles["worker.crashed"] == "bold red"
    request = views.event_line(event("request", status=500, endpoint="/x"), tz=UTC)
    assert any(str(span.style) == "red" for span in request.spans)
    for kind, style in (("model.evicted", "yellow"), ("model.refused", "bold red")):
        line = views.event_line(event(kind, reason="memory"), tz=UTC)
        assert any(str(span.style) == style for span in line.spans), kind
    failed = views.event_line(
        event("spare.failed", "text", reason="boom", failures=3, gave_up=True), tz=UTC
    )
    styles = {failed.plain[s.start : s.end].strip(): str(s.style) for s in failed.spans}
    assert styles["spare.failed"] == "yellow" and styles["boom"] == "yellow"
    assert styles[", gave up".strip()] == "bold red"
    for kind in ("spare.starting", "spare.ready", "spare.taken", "spare.stopped"):
        line = views.event_line(event(kind, "text", pid=1), tz=UTC)
        assert any(str(s.style) == "cyan" for s in line.spans), kind
    from_spare = views.event_line(
        event("model.loaded", duration_s=1.0, pid=1, spare=True, spare_pid=1), tz=UTC
    )
    assert any(
        str(s.style) == "cyan" and from_spare.plain[s.start : s.end] == " from spare"
        for s in from_spare.spans
    )
    way_off = views.event_line(
        event("model.footprint", measured_bytes=2 * GIB, estimate_bytes=GIB), tz=UTC
    )
    assert any(
        str(s.style) == "yellow" and "+100%" in way_off.plain[s.start : s.end]
        for s in way_off.spans
    )


def test_reload_summary() -> None:
    # The shape of supervisor.reload's answer.
    ok = views.reload_summary(
        {
            "status": "ok",
            "error": None,
            "trigger": "api",
            "added": ["new"],
            "removed": [],
            "changed": ["qwen", "llama"],
            "restarted": ["qwen"],
            "updated": ["llama"],
            "unchanged": ["a"],
            "server_changed": ["idle_timeout"],
            "restart_needed": ["port"],
        }
    ).plain
    assert "added         new" in ok and "removed" not in ok
    assert "restarting    qwen" in ok and "updated       llama" in ok
    assert "server        idle_timeout" in ok and "needs restart port" in ok
    assert "mlx-serve restart" in ok and ok.endswith("unchanged     a")
    nothing = views.reload_summary(
        {"status": "ok", "added": [], "removed": [], "changed": [], "unchanged": ["a"]}
    ).plain
    assert nothing.startswith("no changes")
    older = views.reload_summary({"status": "ok", "changed": ["b"]}).plain
    assert older.startswith("changed       b"), "without the split, 'changed' is shown"
    bad = views.reload_summary({"status": "invalid", "error": "models.yaml:3: bad"}).plain
    assert "invalid" in bad and "models.yaml:3: bad" in bad


# ------------------------------------------------------------------ client helpers


def test_api_errors_are_read_from_the_openai_shape() -> None:
    body = {"error": {"message": "model 'x' not found", "type": "invalid", "code": "nf"}}
    error = _api_error(404, "Not Found", json.dumps(body).encode())
    assert (error.status, error.message, error.code) == (404, "model 'x' not found", "nf")
    html = _api_error(502, "Bad Gateway", b"<html>\n<body>proxy</body>")
    assert html.message == "HTTP 502 Bad Gateway: <html>"
    unauthorized = _api_error(401, "Unauthorized", b'{"error": {"message": "key"}}')
    assert type(unauthorized).__name__ == "Unauthorized"


def test_url_for_a_bind_address() -> None:
    assert url_for("127.0.0.1", 8095) == "http://127.0.0.1:8095"
    assert url_for("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert url_for("::", 9) == "http://[::1]:9"
    assert url_for("fe80::1", 9) == "http://[fe80::1]:9"


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "models.yaml"
    cfg.write_text(
        f"server: {{host: 0.0.0.0, port: 9999, api_key: from-config, data_dir: {tmp_path}/d}}\n"
        "models:\n  qwen: {path: org/qwen, aliases: [q]}\n"
    )
    monkeypatch.delenv("MLX_SERVE_URL", raising=False)
    monkeypatch.delenv("MLX_API_KEY", raising=False)
    settings = load_settings(config=cfg)
    assert (settings.url, settings.api_key) == ("http://127.0.0.1:9999", "from-config")
    assert settings.data_dir == tmp_path / "d" and settings.config_error is None
    assert settings.model_names == {"qwen": "qwen", "q": "qwen"}
    monkeypatch.setenv("MLX_SERVE_URL", "http://other:1/")
    monkeypatch.setenv("MLX_API_KEY", "from-env")
    settings = load_settings(config=cfg)
    assert (settings.url, settings.api_key) == ("http://other:1", "from-config")  # as the server
    cfg.write_text(cfg.read_text().replace("api_key: from-config, ", ""))
    assert load_settings(config=cfg).api_key == "from-env"
    settings = load_settings("http://flag:2", "from-flag", config=cfg)
    assert (settings.url, settings.api_key) == ("http://flag:2", "from-flag")


def test_settings_survive_a_broken_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLX_SERVE_URL", raising=False)
    monkeypatch.setenv("MLX_SERVE_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "models.yaml"
    cfg.write_text("server: {port: nope}\n")
    settings = load_settings(config=cfg)
    assert settings.url == "http://127.0.0.1:8095" and settings.data_dir == tmp_path / "home"
    assert settings.config_error is not None and "port" in settings.config_error
    # A file being edited: the server section is still readable, the models are not.
    cfg.write_text("server: {port: 9001, api_key: k, data_dir: d}\nmodels:\n  m: {path: 3}\n")
    settings = load_settings(config=cfg)
    assert (settings.url, settings.api_key) == ("http://127.0.0.1:9001", "k")
    assert settings.data_dir == tmp_path / "d" and settings.config_error is not None
    missing = load_settings(config=tmp_path / "nope.yaml")
    assert missing.config_error is not None and "not found" in missing.config_error


@pytest.mark.parametrize("name", ["qwen", "org/c:latest", "..", "a b", "ünï", ".hidden."])
def test_worker_log_path_matches_the_supervisor(name: str) -> None:
    from mlx_serve.supervisor.worker import _safe_filename

    assert worker_log_path(Path("/d"), name) == Path("/d/logs") / f"{_safe_filename(name)}.log"


# ------------------------------------------------------------------ drift guard


async def test_sample_json_has_the_keys_the_server_sends(tmp_path: Path) -> None:
    """Build the real ``/api/stats`` answer (fake workers, no processes) and compare keys.

    The server has a budget for one of its two models, and both were used: the answer has a
    loaded model with measured memory and a last eviction, like the sample."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from mlx_serve.config import ModelType, parse_config_text
    from mlx_serve.observability.request_stats import RequestStats
    from mlx_serve.router import management
    from mlx_serve.router.keys import STATS, SUPERVISOR
    from mlx_serve.supervisor import Supervisor
    from mlx_serve.testing import FakeLauncher, InstantDriver

    launcher = FakeLauncher()
    supervisor = Supervisor(
        parse_config_text(
            "server: {memory_budget: 400MiB}\n"
            "models:\n  qwen: {path: org/qwen, pin: true}\n  llama: {path: org/llama}\n"
        ),
        data_dir=tmp_path,
        launcher=launcher,
        drivers={ModelType.TEXT: InstantDriver(launcher)},
        measure=lambda _pid, _mlx: 300 * MIB,
    )
    await supervisor.start()
    try:
        await supervisor.load("llama")
        await supervisor.load("qwen")  # 128 MiB planned does not fit beside llama's 300
        app = web.Application()
        app[SUPERVISOR] = supervisor
        app[STATS] = RequestStats()
        response = await management.stats(make_mocked_request("GET", "/api/stats", app=app))
    finally:
        await supervisor.shutdown()
    assert isinstance(response, web.Response) and response.text is not None
    real = json.loads(response.text)
    sample = sample_stats()
    assert set(sample) == set(real)
    assert set(sample["memory"]) == set(real["memory"])
    assert set(sample["queue"]) == set(real["queue"])
    assert set(sample["models"][0]) == set(real["models"][0])
    assert set(sample["models"][0]["metrics"]) == set(real["models"][0]["metrics"])
    assert real["models"][0]["status"] in views.STATUS_STYLES
    qwen = real["models"][0]
    assert qwen["status"] == "loaded" and qwen["pinned"] is True
    assert set(sample["models"][0]["memory"]) == set(qwen["memory"])
    assert qwen["memory"]["measured_bytes"] == 300 * MIB
    eviction = real["memory"]["last_eviction"]
    assert (eviction["model"], eviction["reason"], eviction["for_model"]) == (
        "llama",
        "memory",
        "qwen",
    )
    assert set(EVICTION) == set(eviction)
    assert real["memory"]["budget_source"] == "configured"
    # The sample's figures render the real answer too.
    assert_fits(render(views.status_view(real)))
