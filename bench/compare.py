"""Side-by-side benchmark: ``mlx_lm server`` direct vs mlx-serve (this repo) vs mlx-serve 0.3.0.

Run with ``.venv/bin/python -m bench.compare [--quick] [--out bench/results]``.

Every server is a real subprocess started the way a user starts it, serving the same two tiny
random-weight llama models built locally by :mod:`mlx_serve.tiny_models` (nothing is
downloaded). Requests never overlap across targets (the machine has 2 cores): the warm
metrics run with all servers up but idle except the one being asked (round-robin), the
lifecycle metrics (cold start, swaps, bursts) run one target after another.

- direct:     ``python -m mlx_lm server --model DIR`` (one process, one model)
- mlx-serve:  ``.venv/bin/mlx-serve start --config models.yaml`` (this repo: the working tree,
              or ``--ref REV`` to measure a commit while others edit the tree)
- 0.3.0:      ``bench/.venv-030/bin/mlx-serve start`` (the FastAPI-based mlx-serve from PyPI,
              installed into its own venv on first use with the same mlx-lm version)

The table is printed with rich and written as Markdown to ``OUT/latest.md``; the raw samples
go to ``OUT/latest.json`` and the servers' logs to ``OUT/logs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
LEGACY_VENV = BENCH_DIR / ".venv-030"
LEGACY_VERSION = "0.3.0"

PROMPT = "Tell me a long story about a lighthouse keeper and her cat."
HEALTH_TIMEOUT = 60.0  # seconds for a server to answer /health after it was spawned
STOP_TIMEOUT = 20.0  # grace after SIGTERM before the process group is SIGKILLed

DIRECT, OURS, LEGACY = "direct", "mlx-serve", "mlx-serve-0.3.0"
LABELS = {
    DIRECT: "direct mlx_lm",
    OURS: "mlx-serve (this repo)",
    LEGACY: f"mlx-serve {LEGACY_VERSION} (PyPI)",
}

# Piped output gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 150)


# ------------------------------------------------------------------------------ settings


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


# ------------------------------------------------------------------------------ statistics


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile (the max for fewer than 20 samples)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "n": len(vals),
        "median": median(vals),
        "p95": p95(vals),
        "min": min(vals) if vals else None,
        "max": max(vals) if vals else None,
        "samples": [round(v, 6) for v in vals],
    }


# ------------------------------------------------------------------------------ client


@dataclass
class StreamResult:
    """One streamed chat completion as the client saw it."""

    ok: bool
    status: int | None
    ttft_s: float | None  # request sent -> first SSE data chunk with content
    total_s: float
    chunks: int  # SSE chunks that carried content
    completion_tokens: int | None  # from the usage block, when the server sent one
    decode_s: float | None  # first -> last content chunk
    last_s: float | None = None  # request sent -> last content chunk
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.completion_tokens or self.chunks

    @property
    def tokens_per_s(self) -> float | None:
        if self.decode_s is None or self.decode_s <= 0 or self.tokens < 2:
            return None
        return (self.tokens - 1) / self.decode_s

    @property
    def e2e_tokens_per_s(self) -> float | None:
        """Tokens over request sent -> last token: a late first chunk cannot flatter it."""
        if self.last_s is None or self.last_s <= 0 or self.tokens < 1:
            return None
        return self.tokens / self.last_s


def failed(total_s: float, error: str) -> StreamResult:
    return StreamResult(False, None, None, total_s, 0, None, None, None, error)


async def stream_chat(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    *,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
    started: float | None = None,
    retry_connect_until: float | None = None,
    exited: Callable[[], str | None] | None = None,
) -> StreamResult:
    """Stream one chat completion. ``started`` moves the clock's zero earlier (cold start of a
    process); ``retry_connect_until`` retries refused connections until then (port not open)
    unless ``exited`` says why the server will never open it."""
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": PROMPT}],
        **(extra or {}),
    }
    t0 = time.perf_counter() if started is None else started
    while True:
        try:
            return await _stream_once(session, base_url, body, t0)
        except aiohttp.ClientConnectorError as exc:
            if retry_connect_until is None or time.perf_counter() > retry_connect_until:
                return failed(time.perf_counter() - t0, f"connect failed: {exc}")
            if exited is not None and (why := exited()) is not None:
                return failed(time.perf_counter() - t0, why)
            await asyncio.sleep(0.02)


async def _stream_once(
    session: aiohttp.ClientSession, base_url: str, body: dict[str, Any], t0: float
) -> StreamResult:
    status: int | None = None
    first: float | None = None
    last: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    done = False
    error: str | None = None
    try:
        async with session.post(base_url + "/v1/chat/completions", json=body) as resp:
            status = resp.status
            if status != 200:
                text = (await resp.text())[:300]
                error = f"HTTP {status}: {text.strip()}"
            else:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        error = (
                            "stream error: "
                            + str(err.get("message", err) if isinstance(err, dict) else err)[:300]
                        )
                        continue
                    usage = chunk.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        usage_tokens = usage["completion_tokens"]
                    choices = chunk.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        first = now if first is None else first
                        last = now
                        chunks += 1
                if not done and error is None:
                    error = "stream ended without [DONE]"
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    total = time.perf_counter() - t0
    ok = status == 200 and done and error is None and chunks > 0
    return StreamResult(
        ok=ok,
        status=status,
        ttft_s=None if first is None else first - t0,
        total_s=total,
        chunks=chunks,
        completion_tokens=usage_tokens,
        decode_s=None if first is None or last is None else last - first,
        last_s=None if last is None else last - t0,
        error=error,
    )


async def run_concurrently(
    calls: Sequence[Callable[[], Awaitable[StreamResult]]], timeout: float
) -> tuple[list[StreamResult], float]:
    """Start every call at once; whatever has not finished after ``timeout`` counts as failed."""
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(call()) for call in calls]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    results: list[StreamResult] = []
    for task in tasks:
        if task.cancelled():
            results.append(failed(wall, f"no answer within {timeout:g}s"))
        elif (exc := task.exception()) is not None:
            results.append(failed(wall, repr(exc)))
        else:
            results.append(task.result())
    return results, wall


def error_summary(results: Sequence[StreamResult], limit: int = 4) -> list[str]:
    counts = Counter(r.error or "failed" for r in results if not r.ok)
    return [f"{n}x {msg}" for msg, n in counts.most_common(limit)]


async def wait_http_ok(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    exited: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``url`` until it answers 200; the seconds it took."""
    t0 = time.perf_counter()
    while True:
        if exited is not None and (why := exited()) is not None:
            raise RuntimeError(why)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:g}s")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A server process in its own process group; :meth:`stop` ends the whole group."""

    started: list[Proc] = []  # every Proc ever started, so the final cleanup finds them all

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== bench: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals all of it
                env=self.env,
                cwd=self.cwd,
            )
        Proc.started.append(self)

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def stop(self) -> None:
        """SIGTERM the group, wait, SIGKILL whatever is left of the group. Idempotent: once
        stopped, its (possibly reused) pid is never signalled again."""
        if self.popen is None or self.stopped:
            return
        self.stopped = True
        pgid = self.popen.pid  # session leader: its pgid is its pid
        if self.popen.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]{self.name} ignored SIGTERM for {STOP_TIMEOUT:g}s[/]")
        _signal_group(pgid, signal.SIGKILL)  # stragglers it forked into the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 12) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_all() -> None:
    for proc in reversed(Proc.started):
        proc.stop()


def _is_live_worker(pid: int) -> bool:
    """Is ``pid`` still a live mlx_lm worker leading its own group (not a reused pid)?"""
    try:
        proc = psutil.Process(pid)
        return (
            proc.status() != psutil.STATUS_ZOMBIE
            and os.getpgid(pid) == pid
            and "mlx_lm" in " ".join(proc.cmdline())
        )
    except (psutil.Error, OSError):
        return False


# ------------------------------------------------------------------------------ servers


class Server:
    """A server under test: how to start it, reach it, and inspect it."""

    kind: str = ""

    def __init__(
        self,
        workdir: Path,
        logs: Path,
        models: dict[str, Path],
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = env or {}  # added to the server's environment (e.g. PYTHONPATH)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.models = models  # "a"/"b" -> model directory
        self.port = free_port()
        self.proc: Proc | None = None
        self.worker_pids: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def model_id(self, which: str) -> str:
        """What a client sends in ``model`` to reach model ``which`` ("a" or "b")."""
        return f"tiny-{which}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    async def start(self, session: aiohttp.ClientSession) -> float:
        """Spawn the process and wait until it answers /health; the seconds that took."""
        argv, env = self.command()
        env = {**env, **self.extra_env}
        self.proc = Proc(self.kind, argv, self.logs / f"{self.kind}.log", env=env, cwd=self.workdir)
        self.proc.start()
        try:
            return await wait_http_ok(
                session, self.url + "/health", HEALTH_TIMEOUT, exited=self.exited
            )
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{exc}; log tail:\n{self.proc.log_tail()}") from exc

    def exited(self) -> str | None:
        """Why the server process is gone (with its log's last line), or None while it runs."""
        if self.proc is None or self.proc.popen is None:
            return None
        code = self.proc.popen.poll()
        if code is None:
            return None
        return f"the server exited with code {code}: {self.proc.log_tail(1)}"

    async def stop(self) -> list[int]:
        """Stop the server; the worker pids still alive afterwards (a leak), killed if so."""
        if self.proc is not None:
            await asyncio.to_thread(self.proc.stop)
            self.port = free_port()  # a restart gets a fresh port
        leaked = [pid for pid in sorted(self.worker_pids) if _is_live_worker(pid)]
        for pid in leaked:
            _signal_group(pid, signal.SIGKILL)  # workers lead their own process group
        return leaked

    async def unload(self, session: aiohttp.ClientSession) -> None:
        """Leave no model loaded."""
        raise NotImplementedError

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """Cumulative {"swaps": n, "loads": n} since the process started."""
        raise NotImplementedError


def router_cpu_s(srv: Server) -> float | None:
    """CPU seconds (user + system) the router process has used so far: its own, not its
    workers' (mlx-serve's run in their own sessions, 0.3.0's are children, not counted)."""
    if isinstance(srv, DirectServer) or srv.proc is None or srv.proc.pid is None:
        return None  # direct mlx_lm has no router
    try:
        times = psutil.Process(srv.proc.pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


class DirectServer(Server):
    kind = DIRECT

    def model_id(self, which: str) -> str:
        return str(self.models[which])  # mlx_lm answers to its model path

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            sys.executable,
            "-m",
            "mlx_lm",
            "server",
            "--model",
            str(self.models["a"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        return argv, {"HF_HUB_OFFLINE": "1"}

    def spawn(self) -> None:
        """Start without waiting (cold start is measured from here)."""
        argv, env = self.command()
        env = {**env, **self.extra_env}
        self.proc = Proc(self.kind, argv, self.logs / f"{self.kind}.log", env=env, cwd=self.workdir)
        self.proc.start()


_SWAP_LINE = re.compile(r"\bswap \S+ to=\S+")
_LOADED_LINE = re.compile(r"\bmodel\.loaded \S+ .*?pid=(\d+)")
_TROUBLE_LINE = re.compile(r"worker\.crashed|worker\.kill|new=failed|Traceback|ERROR|WARNING")


class OursServer(Server):
    """mlx-serve from this repo, started with its CLI and a models.yaml."""

    kind = OURS

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.workdir / "models.yaml"
        lines = [
            "server:",
            "  host: 127.0.0.1",
            f"  port: {self.port}",
            "  idle_timeout: -1",  # nothing unloads on its own during the run
            "  max_loaded_models: 1",
            "  stop_timeout: 5s",
            f"  data_dir: {self.workdir / 'data'}",
            "models:",
        ]
        for which, path in self.models.items():
            lines += [f"  {self.model_id(which)}:", "    type: text", f"    path: {path}"]
        config.write_text("\n".join(lines) + "\n")
        argv = [
            str(VENV_BIN / "mlx-serve"),
            "start",
            "--config",
            str(config),
            "--port",
            str(self.port),
        ]
        # A wide console keeps rich from wrapping the log lines counted by counters().
        return argv, {"COLUMNS": "250", "HF_HUB_OFFLINE": "1"}

    async def unload(self, session: aiohttp.ClientSession) -> None:
        # keep_alive 0 = "unload as soon as this request finishes" (the documented way).
        for entry in await self._models(session):
            if entry.get("status") != "unloaded":
                body = {
                    "model": entry["id"],
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 1,
                    "keep_alive": 0,
                }
                async with session.post(self.url + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
        deadline = time.perf_counter() + 30
        while any(e.get("status") != "unloaded" for e in await self._models(session)):
            if time.perf_counter() > deadline:
                raise TimeoutError("models still loaded 30 s after a keep_alive=0 request")
            await asyncio.sleep(0.02)

    async def _models(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with session.get(self.url + "/v1/models") as resp:
            data: list[dict[str, Any]] = (await resp.json())["data"]
            return data

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, int]:
        text = await asyncio.to_thread(self.proc.log_text) if self.proc else ""
        pids = [int(m.group(1)) for m in _LOADED_LINE.finditer(text)]
        self.worker_pids.update(pids)
        return {"swaps": len(_SWAP_LINE.findall(text)), "loads": len(pids)}

    def trouble(self) -> list[str]:
        text = self.proc.log_text() if self.proc else ""
        return [" ".join(line.split()) for line in text.splitlines() if _TROUBLE_LINE.search(line)]


class LegacyServer(Server):
    """mlx-serve 0.3.0 from PyPI in bench/.venv-030: a models.yaml found via MLX_SERVE_CONFIG
    (a list of {name, type, hf_path}), ``mlx_port`` for its single mlx_lm.server subprocess."""

    kind = LEGACY

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.workdir / "models-030.yaml"
        lines = [
            f"mlx_port: {free_port()}",
            f"manager_port: {self.port}",
            "inactivity_timeout_seconds: 3600",
            "startup_timeout_seconds: 120",
            "failure_cooldown_seconds: 30",
            "monitoring:",
            f"  log_dir: {self.workdir / 'logs-030'}",
            "models:",
        ]
        for which, path in self.models.items():
            lines += [f"  - name: {self.model_id(which)}", "    type: text", f"    hf_path: {path}"]
        config.write_text("\n".join(lines) + "\n")
        # It writes worker stderr to $TMPDIR/mlx-manager-logs. (mlx's CPU backend keeps its
        # compiled-kernel cache under $TMPDIR too; the warm-up requests fill it first.)
        tmp = self.workdir / "tmp-030"
        tmp.mkdir(exist_ok=True)
        argv = [
            str(LEGACY_VENV / "bin" / "mlx-serve"),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        return argv, {"MLX_SERVE_CONFIG": str(config), "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1"}

    async def unload(self, session: aiohttp.ClientSession) -> None:
        async with session.post(self.url + "/v1/models/unload", json={}) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/v1/models/unload answered {resp.status}")

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, int]:
        async def count(kind: str) -> int:
            params = {"type": kind, "last_n": "100000"}
            async with session.get(self.url + "/v1/events", params=params) as resp:
                return len((await resp.json())["events"])

        # model.switch.start is emitted on every respawn while a model is active, including a
        # respawn of the same model; subprocess.spawned counts every mlx_lm.server started.
        return {
            "swaps": await count("model.switch.start"),
            "loads": await count("subprocess.spawned"),
        }


# ------------------------------------------------------------------------------ phases


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


# ------------------------------------------------------------------------------ targets


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


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def describe_source(ref: str | None) -> str:
    """Which mlx-serve code is measured: a commit, or the working tree (and whether dirty)."""
    try:
        if ref:
            return f"git {ref} = {_git('rev-parse', '--short', ref)}"
        dirty = " + uncommitted changes in src/" if _git("status", "--porcelain", "src") else ""
        return f"working tree (HEAD {_git('rev-parse', '--short', 'HEAD')}{dirty})"
    except (OSError, subprocess.SubprocessError):
        return "working tree (not a git checkout?)"


def export_ref(ref: str, dest: Path) -> Path:
    """``src/`` as of ``ref`` (read with git archive) under ``dest``; PYTHONPATH for it.

    Others may be editing the working tree while the benchmark runs; a commit holds still.
    The editable install only appends the working tree's src/ to sys.path, so PYTHONPATH wins.
    """
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    src = dest / "src"
    check = subprocess.run(
        [sys.executable, "-c", "import mlx_serve; print(mlx_serve.__file__)"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=60,
    )
    if not check.stdout.strip().startswith(str(src)):
        raise RuntimeError(f"PYTHONPATH={src} does not win over the installed mlx_serve: {check}")
    return src


def import_seconds(python: Path, runs: int) -> float | None:
    """How long ``import mlx_lm.server`` takes in that interpreter (best of ``runs``): most of
    a worker's start, so it explains cold start and swap times."""
    best: float | None = None
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(
            [str(python), "-c", "import mlx_lm.server"], capture_output=True, check=False
        )
        took = time.perf_counter() - t0
        if done.returncode != 0:
            return None
        best = took if best is None else min(best, took)
    return best


SERVER_CLASSES: dict[str, type[Server]] = {
    DIRECT: DirectServer,
    OURS: OursServer,
    LEGACY: LegacyServer,
}


def ensure_legacy_venv(install: bool, log_path: Path) -> str | None:
    """Make sure mlx-serve 0.3.0 is installed in bench/.venv-030; None, or why it is not."""
    py = LEGACY_VENV / "bin" / "python"
    check = [
        str(py),
        "-c",
        "import mlx_serve, mlx_lm, fastapi, uvicorn; print(mlx_serve.__version__)",
    ]

    def installed() -> str | None:
        if not py.exists():
            return f"{LEGACY_VENV} does not exist"
        out = subprocess.run(check, capture_output=True, text=True, check=False, timeout=120)
        if out.returncode != 0:
            return f"importing it failed: {out.stderr.strip().splitlines()[-1:]}"
        if out.stdout.strip() != LEGACY_VERSION:
            return f"{LEGACY_VENV} holds mlx-serve {out.stdout.strip()}, not {LEGACY_VERSION}"
        if not (LEGACY_VENV / "bin" / "mlx_lm.server").exists():
            return "mlx_lm.server is missing from its venv"
        return None

    problem = installed()
    if problem is None or not install:
        return problem
    console.print(f"[bold]installing mlx-serve {LEGACY_VERSION} into {LEGACY_VENV}[/] ({problem})")
    # The same mlx-lm as ours, so both servers run the very same worker code.
    mlx_lm_version = importlib.metadata.version("mlx-lm")
    steps = [
        [sys.executable, "-m", "venv", str(LEGACY_VENV)],
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            f"mlx-serve=={LEGACY_VERSION}",
            "mlx[cpu]",
            f"mlx-lm=={mlx_lm_version}",
        ],
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        for step in steps:
            done = subprocess.run(
                step, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=900
            )
            if done.returncode != 0:
                return f"`{' '.join(step[-4:])}` failed (exit {done.returncode}), see {log_path}"
    return installed()


# ------------------------------------------------------------------------------ report


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "tok/s":
        return f"{value:.0f} tok/s"
    return f"{value:g}"


def _get(results: dict[str, Any], target: str, *path: str) -> Any:
    node: Any = results.get(target)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _ratio(value: float | None, base: float | None, unit: str) -> str:
    if value is None or base is None or base <= 0:
        return "—"
    text = f"x{value / base:.2f}"
    if unit == "ms":
        text += f" ({value - base:+.1f} ms)"
    elif unit == "s":
        text += f" ({value - base:+.2f} s)"
    return text


def _cell(results: dict[str, Any], skipped: dict[str, str], target: str, phase: str) -> str | None:
    """Why a cell has no number (skipped target or failed phase), else None."""
    if target in skipped:
        return "skipped"
    if _get(results, target, phase, "error"):
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
            v = None if reason else _get(results, t, phase, *path)
            values[t] = v if isinstance(v, int | float) else None
            cells[t] = reason or _fmt(values[t], unit)
        base_value = values[DIRECT]
        if base is not None:
            b = _get(results, DIRECT, base[0], *base[1])
            base_value = b if isinstance(b, int | float) else None
        rows.append(
            [
                label,
                cells[DIRECT],
                cells[OURS],
                _ratio(values[OURS], base_value, unit),
                cells[LEGACY],
                _ratio(values[LEGACY], base_value, unit),
                _ratio(values[OURS], values[LEGACY], unit),
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
            v = _get(results, t, phase, key)
            if reason or v is None:
                cells[t] = reason or "—"
            elif of_total:
                cells[t] = f"{v}/{_get(results, t, phase, 'requests')}"
            else:
                cells[t] = str(v)
        rows.append([label, cells[DIRECT], cells[OURS], "", cells[LEGACY], "", ""])

    cold = _get(results, DIRECT, "cold", "cold_s", "median")
    floor = f"n/a (cold floor {_fmt(cold, 's')})" if isinstance(cold, float) else "n/a"
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
            *(_get(results, target, "leaked_worker_pids") or []),
            *(_get(results, target, "leaked_worker_pids_warm") or []),
        ]
        if leaked:
            out.append(f"{LABELS[target]}: worker processes alive after stop: {leaked}")
        trouble = _get(results, target, "log_trouble")
        if trouble:
            out.append(f"{LABELS[target]}: warnings/errors in its log: " + " | ".join(trouble[:5]))
    out.append(
        "Warm TTFT and tokens/s are measured with all servers up at once, one request to each"
        " in turn (round-robin), so background load on this shared machine hits them alike."
        " Direct mlx_lm has no router: its cold start and burst are timed from the process spawn"
        " (requests retry until its port opens); its swap cells show its cold start as the floor"
        " a swap cannot beat. Routers are timed from the request, with the router already up."
    )
    tokens = {t: _get(results, t, "tps", "tokens") for t in (DIRECT, OURS, LEGACY)}
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
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    lines.append("")
    lines += [f"- {n}" for n in note_lines]
    return "\n".join(lines) + "\n"


def print_table(rows: list[list[str]], note_lines: list[str]) -> None:
    table = Table(title="mlx_lm direct vs mlx-serve (this repo) vs mlx-serve 0.3.0")
    for i, name in enumerate(HEADER):
        table.add_column(
            name,
            justify="left" if i == 0 else "right",
            style="dim" if name in ("vs direct",) else None,
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in note_lines:
        console.print(f"- {line}", markup=False, highlight=False)


# ------------------------------------------------------------------------------ main


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_outputs(out_dir: Path, markdown: str, raw: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.md").write_text(markdown)
    (out_dir / "latest.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")


async def run(args: argparse.Namespace) -> int:
    from mlx_serve.tiny_models import build_text_model

    settings = Settings.make(args.quick)
    out_dir: Path = args.out
    logs = fresh_dir(out_dir / "logs")
    wanted = set(args.only.split(",")) if args.only else {DIRECT, OURS, LEGACY}
    started = time.perf_counter()
    load_before = os.getloadavg()
    skipped: dict[str, str] = {}
    results: dict[str, Any] = {}

    if LEGACY in wanted:
        reason = await asyncio.to_thread(
            ensure_legacy_venv, not args.no_install, logs / "install-0.3.0.log"
        )
        if reason:
            skipped[LEGACY] = reason
            console.print(f"[bold yellow]mlx-serve {LEGACY_VERSION} is skipped:[/] {reason}")
    for target in (DIRECT, OURS, LEGACY):
        if target not in wanted:
            skipped.setdefault(target, "not selected (--only)")
    source = await asyncio.to_thread(describe_source, args.ref)
    console.print(f"mlx-serve (this repo) runs from: {source}")
    # Our worker and direct mlx_lm share .venv; 0.3.0 has its own venv (maybe other packages).
    runs = 1 if args.quick else 2
    import_s = {DIRECT: await asyncio.to_thread(import_seconds, Path(sys.executable), runs)}
    import_s[OURS] = import_s[DIRECT]
    if LEGACY not in skipped:
        import_s[LEGACY] = await asyncio.to_thread(
            import_seconds, LEGACY_VENV / "bin" / "python", runs
        )

    with tempfile.TemporaryDirectory(prefix="mlx-serve-bench-") as tmp:
        workdir = Path(tmp)
        models = {
            "a": build_text_model(workdir / "models" / "tiny-a", seed=1),
            "b": build_text_model(workdir / "models" / "tiny-b", seed=2),
        }
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=settings.request_timeout, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            ctx = Context(settings, workdir, logs, models, session)
            if args.ref:
                src = await asyncio.to_thread(export_ref, args.ref, workdir / "ours-src")
                ctx.envs[OURS] = {"PYTHONPATH": str(src)}
            runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
                DIRECT: lambda: run_direct(ctx),
                OURS: lambda: run_router(ctx, OursServer),
                LEGACY: lambda: run_router(ctx, LegacyServer),
            }
            runner_for = runners.__getitem__
            kinds = [k for k in runners if k not in skipped]
            console.rule("warm: " + ", ".join(LABELS[k] for k in kinds) + " (round-robin)")
            warm = await run_warm_stage(ctx, kinds)
            for target in kinds:
                console.rule(LABELS[target])
                results[target] = {**warm[target], "worker_import_s": import_s.get(target)}
                try:
                    results[target].update(await runner_for(target)())
                except Exception as exc:  # e.g. the server never came up: say why in each cell
                    error = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
                    for phase in ("burst", "cold", "swap", "interleaved"):
                        results[target].setdefault(phase, error)
                    console.print(f"[bold red]{LABELS[target]} failed:[/] {exc}")

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.perf_counter() - started,
        "settings": asdict(settings),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "mlx": importlib.metadata.version("mlx"),
        "mlx_lm": importlib.metadata.version("mlx-lm"),
        "loadavg_1m_before": round(load_before[0], 2),
        "mlx_serve_source": source,
    }
    rows = build_rows(results, skipped)
    note_lines = notes(results, skipped, meta)
    print_table(rows, note_lines)
    raw = {"meta": meta, "skipped": skipped, "results": results}
    write_outputs(out_dir, render_markdown(rows, note_lines), raw)
    console.print(f"\nwrote {out_dir / 'latest.md'} and {out_dir / 'latest.json'}")
    return 1 if OURS in wanted and OURS not in results else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results",
        help="where latest.md, latest.json and logs/ go",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {DIRECT},{OURS},{LEGACY}"
    )
    parser.add_argument(
        "--ref",
        default=None,
        help="measure mlx-serve as of this git revision (e.g. HEAD) instead of the working tree",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help=f"do not create {LEGACY_VENV.name} when it is missing",
    )
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every finally, which stops the servers

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        stop_all()  # idempotent: anything a failure path left running is stopped here


if __name__ == "__main__":
    sys.exit(main())
