"""The table and notes of :mod:`bench.compare`: direct mlx_lm vs mlx-serve (this repo) vs
mlx-serve 0.3.0, with the ratios between them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.lib import report
from bench.lib.report import dig, fmt, ratio
from bench.lib.servers import DIRECT, LABELS, LEGACY, LEGACY_VERSION, OURS

TITLE = "mlx_lm direct vs mlx-serve (this repo) vs mlx-serve 0.3.0"


def _cell(results: dict[str, Any], skipped: dict[str, str], target: str, phase: str) -> str | None:
    """Why a cell has no number (skipped target or failed phase), else None."""
    if target in skipped:
        return "skipped"
    if dig(results, target, phase, "error"):
        return "error"
    return None


def build_rows(results: dict[str, Any], skipped: dict[str, str]) -> list[list[str]]:
    rows: list[list[str]] = []
    targets = (DIRECT, OURS, LEGACY)

    def metric(
        label: str,
        phase: str,
        path: Sequence[str],
        unit: str,
        *,
        base: tuple[str, Sequence[str]] | None = None,
        na: dict[str, str] | None = None,
    ) -> None:
        values: dict[str, float | None] = {}
        cells: dict[str, str] = {}
        for t in targets:
            if na and t in na:
                values[t], cells[t] = None, na[t]
                continue
            reason = _cell(results, skipped, t, phase)
            v = None if reason else dig(results, t, phase, *path)
            values[t] = v if isinstance(v, int | float) else None
            cells[t] = reason or fmt(values[t], unit)
        base_value = values[DIRECT]
        if base is not None:
            b = dig(results, DIRECT, base[0], *base[1])
            base_value = b if isinstance(b, int | float) else None
        rows.append(
            [
                label,
                cells[DIRECT],
                cells[OURS],
                ratio(values[OURS], base_value, unit),
                cells[LEGACY],
                ratio(values[LEGACY], base_value, unit),
                ratio(values[OURS], values[LEGACY], unit),
            ]
        )

    def counts(
        label: str,
        phase: str,
        key: str,
        *,
        of_total: bool = False,
        na: dict[str, str] | None = None,
    ) -> None:
        cells: dict[str, str] = {}
        for t in targets:
            if na and t in na:
                cells[t] = na[t]
                continue
            reason = _cell(results, skipped, t, phase)
            v = dig(results, t, phase, key)
            if reason or v is None:
                cells[t] = reason or "—"
            elif of_total:
                cells[t] = f"{v}/{dig(results, t, phase, 'requests')}"
            else:
                cells[t] = str(v)
        rows.append([label, cells[DIRECT], cells[OURS], "", cells[LEGACY], "", ""])

    cold = dig(results, DIRECT, "cold", "cold_s", "median")
    floor = f"n/a (cold floor {fmt(cold, 's')})" if isinstance(cold, float) else "n/a"
    metric("Worker's `import mlx_lm.server` in its venv", "worker_import_s", (), "s")
    metric("Server spawn → /health OK", "startup_s", (), "s")
    metric("Warm TTFT, median", "warm_ttft", ("ttft_ms", "median"), "ms")
    metric("Warm TTFT, p95", "warm_ttft", ("ttft_ms", "p95"), "ms")
    metric("Streamed tok/s, request → last token", "tps", ("e2e_tokens_per_s", "median"), "tok/s")
    metric("Streamed tok/s, first → last token", "tps", ("tokens_per_s", "median"), "tok/s")
    no_router = {DIRECT: "n/a (no router)"}
    metric("Router CPU per warm request", "router_cpu", ("per_request_ms",), "ms", na=no_router)
    metric(
        "Router CPU per 1k streamed tokens", "router_cpu", ("per_1k_tokens_ms",), "ms", na=no_router
    )
    metric("Cold start → first token, median", "cold", ("cold_s", "median"), "s")
    metric(
        "Swap A→B → first token, median",
        "swap",
        ("swap_s", "median"),
        "s",
        base=("cold", ("cold_s", "median")),
        na={DIRECT: floor},
    )
    metric(
        "Swap A→B → first token, max",
        "swap",
        ("swap_s", "max"),
        "s",
        base=("cold", ("cold_s", "median")),
        na={DIRECT: "n/a"},
    )
    counts("Swaps counted during the swap runs", "swap", "swaps_counted", na={DIRECT: "n/a"})
    counts("Burst of 20 on a cold model: successes", "burst", "successes", of_total=True)
    counts(
        "Burst: worker processes started",
        "burst",
        "loads_counted",
        na={DIRECT: "1 (by construction)"},
    )
    metric("Burst: first token, median", "burst", ("ttft_s", "median"), "s")
    metric("Burst: all answers done", "burst", ("wall_s",), "s")
    na_direct = {DIRECT: "n/a (one model)"}
    counts("Interleaved 20 A/B: successes", "interleaved", "successes", of_total=True, na=na_direct)
    counts("Interleaved: swaps counted", "interleaved", "swaps_counted", na=na_direct)
    counts("Interleaved: worker processes started", "interleaved", "loads_counted", na=na_direct)
    metric("Interleaved: all answers done", "interleaved", ("wall_s",), "s", na=na_direct)
    return rows


HEADER = [
    "Metric",
    "direct mlx_lm",
    "mlx-serve (this repo)",
    "vs direct",
    f"mlx-serve {LEGACY_VERSION}",
    "vs direct",
    "this repo vs 0.3.0",
]


def notes(results: dict[str, Any], skipped: dict[str, str], meta: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for target, reason in skipped.items():
        out.append(f"**{LABELS[target]} was skipped:** {reason}")
    for target in (DIRECT, OURS, LEGACY):
        seen: set[str] = set()
        for phase, data in (results.get(target) or {}).items():
            if not isinstance(data, dict) or str(data.get("error")) in seen:
                continue
            if data.get("error"):
                seen.add(str(data["error"]))
                out.append(f"{LABELS[target]} / {phase}: **error** {data['error']}")
            elif data.get("errors"):
                out.append(
                    f"{LABELS[target]} / {phase}: failed requests: " + "; ".join(data["errors"])
                )
        leaked = [
            *(dig(results, target, "leaked_worker_pids") or []),
            *(dig(results, target, "leaked_worker_pids_warm") or []),
        ]
        if leaked:
            out.append(f"{LABELS[target]}: worker processes alive after stop: {leaked}")
        trouble = dig(results, target, "log_trouble")
        if trouble:
            out.append(f"{LABELS[target]}: warnings/errors in its log: " + " | ".join(trouble[:5]))
    out.append(
        "Warm TTFT and tokens/s are measured with all servers up at once, one request to each"
        " in turn (round-robin), so background load on this shared machine hits them alike."
        " Direct mlx_lm has no router: its cold start and burst are timed from the process spawn"
        " (requests retry until its port opens); its swap cells show its cold start as the floor"
        " a swap cannot beat. Routers are timed from the request, with the router already up."
    )
    tokens = {t: dig(results, t, "tps", "tokens") for t in (DIRECT, OURS, LEGACY)}
    out.append(
        "Tokens per long generation: "
        + ", ".join(f"{LABELS[t]} {v}" for t, v in tokens.items() if v)
    )
    out.append(f"mlx-serve (this repo) ran from: {meta['mlx_serve_source']}.")
    s = meta["settings"]
    out.append(
        f"Settings: {'quick' if s['quick'] else 'full'} run; warm TTFT over {s['ttft_requests']}"
        f" sequential requests (max_tokens {s['ttft_max_tokens']}, 2 warm-up requests first);"
        f" {s['long_runs']} x {s['long_max_tokens']}-token generations; {s['cold_runs']} cold"
        f" starts; {s['swap_runs']} swaps; temperature 0; concurrent batches give up after"
        f" {s['concurrent_timeout']:g} s."
    )
    out.append(
        f"Machine: {meta['machine']}; Python {meta['python']}; mlx {meta['mlx']},"
        f" mlx-lm {meta['mlx_lm']} (same in both venvs); models: two tiny random-weight llamas"
        f" from mlx_serve.tiny_models; {meta['date']}; run took {meta['duration_s']:.0f} s;"
        f" 1-min load average before the run {meta['loadavg_1m_before']} (well above 0 means"
        " other processes were sharing the 2 cores)."
    )
    return out


def render_markdown(rows: list[list[str]], note_lines: list[str]) -> str:
    return report.render_markdown(HEADER, rows, note_lines)


def print_table(rows: list[list[str]], note_lines: list[str]) -> None:
    report.print_table(TITLE, HEADER, rows, note_lines)
