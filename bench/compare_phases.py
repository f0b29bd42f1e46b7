"""The phases of :mod:`bench.compare`: warm TTFT and tokens/s round-robin over every target,
then per target bursts, cold starts, swaps and interleaved requests."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib.client import StreamResult, error_summary, run_concurrently, stream_chat
from bench.lib.report import console
from bench.lib.servers import (
    DIRECT,
    HEALTH_TIMEOUT,
    LABELS,
    SERVER_CLASSES,
    DirectServer,
    LegacyServer,
    OursServer,
    Server,
    router_cpu_s,
)
from bench.lib.stats import summarize


@dataclass(frozen=True)
class Settings:
    quick: bool
    ttft_requests: int  # sequential warm streamed requests
    long_runs: int  # long generations for tokens/s
    cold_runs: int  # cold starts
    swap_runs: int  # A->B / B->A swaps
    burst: int = 20
    interleaved: int = 20
    ttft_max_tokens: int = 32
    long_max_tokens: int = 512
    request_timeout: float = 120.0
    concurrent_timeout: float = 90.0  # a burst / interleaved batch gives up after this

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick,
                ttft_requests=8,
                long_runs=1,
                cold_runs=1,
                swap_runs=2,
                concurrent_timeout=40.0,
            )
        return cls(quick, ttft_requests=30, long_runs=5, cold_runs=5, swap_runs=6)


def _ok(results: Sequence[StreamResult]) -> list[StreamResult]:
    return [r for r in results if r.ok]


def _warm_summary(ttft: Sequence[StreamResult], long: Sequence[StreamResult]) -> dict[str, Any]:
    ok_ttft, ok_long = _ok(ttft), _ok(long)
    return {
        "warm_ttft": {
            "ttft_ms": summarize([r.ttft_s * 1000 for r in ok_ttft if r.ttft_s is not None]),
            "total_ms": summarize([r.total_s * 1000 for r in ok_ttft]),
            "successes": len(ok_ttft),
            "requests": len(ttft),
            "errors": error_summary(ttft),
        },
        "tps": {
            "tokens_per_s": summarize(
                [r.tokens_per_s for r in ok_long if r.tokens_per_s is not None]
            ),
            "e2e_tokens_per_s": summarize(
                [r.e2e_tokens_per_s for r in ok_long if r.e2e_tokens_per_s is not None]
            ),
            "tokens": [r.tokens for r in ok_long],
            "chunks": [r.chunks for r in ok_long],
            "successes": len(ok_long),
            "requests": len(long),
            "errors": error_summary(long),
        },
    }


async def run_warm_stage(ctx: Context, kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Warm TTFT and tokens/s with every target's server up at once, measured round-robin.

    Other work on the machine (this is a shared 2-core box) then slows every target alike
    instead of whichever happened to be measured at the time. Idle servers cost ~no CPU.
    """
    s, session = ctx.settings, ctx.session
    out: dict[str, dict[str, Any]] = {k: {} for k in kinds}
    servers: dict[str, Server] = {}
    try:
        for kind in kinds:
            srv = SERVER_CLASSES[kind](ctx.workdir / kind, ctx.logs, ctx.models, ctx.env(kind))
            try:
                # Direct: /health answers once the port is open; the model may still be loading.
                out[kind]["startup_s"] = await srv.start(session)
                for _ in range(2):  # warm-up: model loaded, first-request compilation done
                    warm = await stream_chat(
                        session, srv.url, srv.model_id("a"), max_tokens=s.ttft_max_tokens
                    )
                    if not warm.ok:
                        raise RuntimeError(f"warm-up request failed: {warm.error}")
            except Exception as exc:  # that target gets error cells; the others go on
                error = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
                out[kind].update(warm_ttft=error, tps=error)
                console.print(f"  [red]✗ {LABELS[kind]} warm-up: {exc}[/]")
                await srv.stop()
                continue
            servers[kind] = srv
        order = list(servers)
        ttft: dict[str, list[StreamResult]] = {k: [] for k in order}
        long: dict[str, list[StreamResult]] = {k: [] for k in order}
        cpu = {k: [router_cpu_s(servers[k])] for k in order}
        t0 = time.perf_counter()
        for i in range(s.ttft_requests):
            for kind in order[i % len(order) :] + order[: i % len(order)]:
                srv = servers[kind]
                ttft[kind].append(
                    await stream_chat(
                        session, srv.url, srv.model_id("a"), max_tokens=s.ttft_max_tokens
                    )
                )
        console.print(f"  [green]✓[/] warm TTFT [dim]({time.perf_counter() - t0:.1f}s)[/]")
        for k in order:
            cpu[k].append(router_cpu_s(servers[k]))
        t0 = time.perf_counter()
        for i in range(s.long_runs):
            for kind in order[i % len(order) :] + order[: i % len(order)]:
                srv = servers[kind]
                long[kind].append(
                    await stream_chat(
                        session,
                        srv.url,
                        srv.model_id("a"),
                        max_tokens=s.long_max_tokens,
                        extra={"stream_options": {"include_usage": True}},
                    )
                )
        console.print(f"  [green]✓[/] streamed tokens/s [dim]({time.perf_counter() - t0:.1f}s)[/]")
        for k in order:
            cpu[k].append(router_cpu_s(servers[k]))
        for kind in order:
            out[kind].update(_warm_summary(ttft[kind], long[kind]))
            c0, c1, c2 = cpu[kind]
            if c0 is not None and c1 is not None and c2 is not None:
                tokens = sum(r.tokens for r in long[kind] if r.ok)
                out[kind]["router_cpu"] = {
                    "per_request_ms": (c1 - c0) * 1000 / max(1, len(ttft[kind])),
                    "per_1k_tokens_ms": (c2 - c1) * 1000 / max(1, tokens) * 1000,
                }
    finally:
        for kind, srv in servers.items():
            with contextlib.suppress(Exception):
                await srv.counters(session)  # collect worker pids for the leak check
            leaked = await srv.stop()
            if leaked:
                out[kind]["leaked_worker_pids_warm"] = leaked
    return out


async def phase_cold_router(
    session: aiohttp.ClientSession, srv: Server, s: Settings
) -> dict[str, Any]:
    results: list[StreamResult] = []
    for _ in range(s.cold_runs):
        await srv.unload(session)
        results.append(
            await stream_chat(session, srv.url, srv.model_id("a"), max_tokens=s.ttft_max_tokens)
        )
    ok = _ok(results)
    return {
        "cold_s": summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
        "successes": len(ok),
        "requests": len(results),
        "errors": error_summary(results),
    }


async def phase_swaps(session: aiohttp.ClientSession, srv: Server, s: Settings) -> dict[str, Any]:
    start = await stream_chat(session, srv.url, srv.model_id("a"), max_tokens=1)
    if not start.ok:
        raise RuntimeError(f"could not load model a before the swaps: {start.error}")
    before = await srv.counters(session)
    results = [
        await stream_chat(
            session, srv.url, srv.model_id("b" if i % 2 == 0 else "a"), max_tokens=s.ttft_max_tokens
        )
        for i in range(s.swap_runs)
    ]
    after = await srv.counters(session)
    ok = _ok(results)
    return {
        "swap_s": summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
        "successes": len(ok),
        "requests": len(results),
        "swaps_counted": after["swaps"] - before["swaps"],
        "loads_counted": after["loads"] - before["loads"],
        "errors": error_summary(results),
    }


async def phase_concurrent(
    session: aiohttp.ClientSession,
    srv: Server,
    s: Settings,
    *,
    models: Sequence[str],
    counters: bool = True,
    started: float | None = None,
) -> dict[str, Any]:
    """Fire one streamed request per entry of ``models`` at once. With ``started`` (a process
    spawn), times count from then and refused connections are retried until the port opens."""
    before = await srv.counters(session) if counters else None
    retry_until = None if started is None else started + HEALTH_TIMEOUT
    calls = [
        (
            lambda m=m: stream_chat(
                session,
                srv.url,
                m,
                max_tokens=s.ttft_max_tokens,
                started=started,
                retry_connect_until=retry_until,
                exited=srv.exited,
            )
        )
        for m in models
    ]
    results, wall = await run_concurrently(calls, s.concurrent_timeout)
    after = await srv.counters(session) if counters else None
    ok = _ok(results)
    out: dict[str, Any] = {
        "successes": len(ok),
        "requests": len(results),
        "wall_s": wall,
        "ttft_s": summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
        "total_s": summarize([r.total_s for r in ok]),
        "errors": error_summary(results),
        "statuses": dict(Counter(str(r.status) for r in results)),
    }
    if before is not None and after is not None:
        out["swaps_counted"] = after["swaps"] - before["swaps"]
        out["loads_counted"] = after["loads"] - before["loads"]
    return out


async def guarded(
    results: dict[str, Any], key: str, label: str, make: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    """Run one phase; a failure is recorded (and printed), never fatal to the run."""
    t0 = time.perf_counter()
    try:
        results[key] = await make()
        console.print(f"  [green]✓[/] {label} [dim]({time.perf_counter() - t0:.1f}s)[/]")
    except Exception as exc:  # one broken phase must not hide the others' numbers
        results[key] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
        console.print(f"  [red]✗ {label}: {type(exc).__name__}: {exc}[/]")


@dataclass
class Context:
    """What every stage needs; ``envs`` adds environment variables per target."""

    settings: Settings
    workdir: Path
    logs: Path
    models: dict[str, Path]
    session: aiohttp.ClientSession
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def env(self, kind: str) -> dict[str, str]:
        return self.envs.get(kind, {})


async def run_direct(ctx: Context) -> dict[str, Any]:
    s, session = ctx.settings, ctx.session
    res: dict[str, Any] = {}
    workdir = ctx.workdir / DIRECT

    async def burst() -> dict[str, Any]:
        srv = DirectServer(workdir, ctx.logs, ctx.models)
        try:
            # Fired at spawn: each request retries its connection until the port opens, so
            # all of them hit the server as soon as it listens (its model loads meanwhile).
            t0 = time.perf_counter()
            srv.spawn()
            return await phase_concurrent(
                session, srv, s, models=[srv.model_id("a")] * s.burst, counters=False, started=t0
            )
        finally:
            await srv.stop()

    await guarded(res, "burst", f"burst of {s.burst} on a fresh server", burst)

    srv = DirectServer(workdir, ctx.logs, ctx.models)
    try:

        async def cold() -> dict[str, Any]:
            results: list[StreamResult] = []
            for i in range(s.cold_runs):
                if i:
                    await srv.stop()
                t0 = time.perf_counter()
                srv.spawn()
                results.append(
                    await stream_chat(
                        session,
                        srv.url,
                        srv.model_id("a"),
                        max_tokens=s.ttft_max_tokens,
                        started=t0,
                        retry_connect_until=t0 + HEALTH_TIMEOUT,
                        exited=srv.exited,
                    )
                )
            ok = _ok(results)
            return {
                "cold_s": summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
                "successes": len(ok),
                "requests": len(results),
                "errors": error_summary(results),
                "note": "process spawn -> first token",
            }

        await guarded(res, "cold", "cold start (spawn -> first token)", cold)
    finally:
        await srv.stop()
    return res


async def run_router(ctx: Context, cls: type[OursServer | LegacyServer]) -> dict[str, Any]:
    s, session = ctx.settings, ctx.session
    res: dict[str, Any] = {}
    workdir = ctx.workdir / cls.kind
    srv = cls(workdir, ctx.logs, ctx.models, ctx.env(cls.kind))
    leaked: list[int] = []
    try:
        await srv.start(session)

        async def burst() -> dict[str, Any]:
            return await phase_concurrent(session, srv, s, models=[srv.model_id("a")] * s.burst)

        await guarded(res, "burst", f"burst of {s.burst} on a cold model", burst)
        # A fresh server for the rest: whatever state the burst left does not leak into it.
        leaked += await srv.stop()
        await srv.start(session)
        await guarded(res, "cold", "cold start", lambda: phase_cold_router(session, srv, s))
        await guarded(res, "swap", "swaps", lambda: phase_swaps(session, srv, s))

        async def interleaved() -> dict[str, Any]:
            warm = await stream_chat(session, srv.url, srv.model_id("a"), max_tokens=1)
            if not warm.ok:
                raise RuntimeError(f"could not load model a first: {warm.error}")
            models = [srv.model_id("a" if i % 2 == 0 else "b") for i in range(s.interleaved)]
            return await phase_concurrent(session, srv, s, models=models)

        await guarded(res, "interleaved", f"{s.interleaved} interleaved A/B", interleaved)
        with contextlib.suppress(Exception):
            await srv.counters(session)  # collect every worker pid for the leak check
    finally:
        leaked += await srv.stop()
    if isinstance(srv, OursServer):
        res["log_trouble"] = srv.trouble()[:20]
    res["leaked_worker_pids"] = leaked
    return res
