"""The dashboard page in a real (headless) Chromium, driven over CDP by ``tests/browser.py``.

The page is tested against a *target*: a server that speaks the management API contract
(``GET /api/stats`` with its ``?history=``, ``GET /api/events?follow=true``,
``POST /api/models/{name}/load|unload``)
plus ``POST /v1/chat/completions``. Two targets exist:

* ``stub``: :class:`StubServer` below, an aiohttp app implementing the contract with fake
  models. It is a contract test of the page: it can fail loads, drop the event stream and name
  models with ``/`` and ``:``, which a real server can't do on demand.
* ``real``: the real mlx-serve with two tiny random-weight text models.

Tests that only need the contract take ``start_target``; stub-only behaviours take ``stub``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import mlx_serve
from mlx_serve.config import ModelType, parse_duration
from mlx_serve.router import management
from mlx_serve.testing import FakeWorkerDriver
from tests.browser import Browser, PageError, chromium_binary
from tests.conftest import POLL_INTERVAL
from tests.integration.conftest import StartServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium_binary() is None, reason="needs Chromium (apt-get install chromium)"
    ),
]

DASHBOARD = Path(mlx_serve.__file__).parent / "router" / "static" / "dashboard.html"
GiB = 1024**3
MiB = 1024**2
#: Query string for tests: poll /api/stats every 0.25 s instead of every 2 s.
FAST = "?poll=250"


# ---------------------------------------------------------------------------- the stub server

#: Supervisor state names (what ``worker.state`` events carry) -> the API's status names.
API_STATUS = {
    "stopped": "unloaded",
    "starting": "loading",
    "ready": "loaded",
    "draining": "draining",
    "stopping": "unloading",
    "failed": "failed",
}


@dataclass
class StubModel:
    name: str
    type: str
    path: str
    rss: int
    aliases: list[str] = field(default_factory=list)
    fails: str | None = None  # loading fails with this message
    pin: bool = False
    on_disk: bool = True  # False: the estimate has no weights (a hub repo not pulled yet)
    state: str = "stopped"
    error: str | None = None
    pid: int | None = None
    port: int | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    keep_alive_s: float | None = None
    inflight: int = 0
    ttfts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    speeds: list[float] = field(default_factory=list)
    errors: int = 0
    learned: int | None = None  # the peak of the last load
    measured: int | None = None  # while loaded
    peak: int | None = None  # of the current load

    @property
    def status(self) -> str:
        return API_STATUS[self.state]

    def estimate(self) -> dict[str, Any]:
        """The estimate keys of ``memory`` (``Estimate.to_json``): a little under what the
        model measures, as estimates of real models are."""
        weights = int(self.rss * 0.7) if self.on_disk else None
        kv_cache, tokens = (128 * MiB, 8192) if self.type in ("text", "vision") else (0, None)
        if not self.on_disk:
            kv_cache, tokens = 0, None
        overhead = 400 * MiB if self.type == "vision" else 250 * MiB
        return {
            "estimate_bytes": (weights or 0) + kv_cache + overhead,
            "weights_bytes": weights,
            "kv_cache_bytes": kv_cache,
            "overhead_bytes": overhead,
            "context_tokens": tokens,
        }

    @property
    def planned(self) -> int:
        """What the scheduler counts: the largest of estimate, learned and this load's peak."""
        return max(self.estimate()["estimate_bytes"], self.learned or 0, self.peak or 0)

    def memory(self) -> dict[str, Any]:
        return {
            **self.estimate(),
            "learned_bytes": self.learned,
            "measured_bytes": self.measured,
            "peak_bytes": self.peak,
            "planned_bytes": self.planned,
        }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


#: What a spare still starting reserves of the budget (the real server: its type's default
#: overhead).
SPARE_OVERHEAD = 250 * MiB


class StubServer:
    """The management API contract over fake models; one loaded model at a time, or as many
    as fit in ``budget`` bytes (least recently used evicted first, pinned ones never).

    Spares (``server.prewarm``) exist only when a test starts them (:meth:`start_spare`): a
    load adopts a ready spare of its model's type, as the real server does, and they come off
    the budget."""

    IDLE_TIMEOUT = 600.0

    def __init__(
        self, api_key: str | None = None, load_delay: float = 0.3, budget: int | None = None
    ) -> None:
        self.api_key = api_key
        self.load_delay = load_delay
        self.budget = budget
        # As the real server: no budget means one model at a time, a budget no count limit.
        self.max_loaded: int | None = None if budget is not None else 1
        self.started_at = time.time()
        self.models = {
            m.name: m
            for m in [
                StubModel(
                    "qwen",
                    "text",
                    "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
                    int(0.62 * GiB),
                    ["default"],
                ),
                StubModel(
                    "mlx-community/Llama-3.2-1B-Instruct:4bit",
                    "text",
                    "mlx-community/Llama-3.2-1B-Instruct-4bit",
                    int(1.31 * GiB),
                    ["llama"],
                ),
                StubModel("qwen-vl", "vision", "mlx-community/Qwen2-VL-2B-Instruct-4bit", 2 * GiB),
                StubModel(
                    "minilm", "embedding", "~/models/all-MiniLM-L6-v2", int(0.18 * GiB), pin=True
                ),
                StubModel("soprano", "tts", "ekwek/Soprano-80M", int(0.35 * GiB)),
                StubModel(
                    "whisper", "stt", "mlx-community/whisper-tiny", int(0.25 * GiB), on_disk=False
                ),
                StubModel(
                    "broken",
                    "text",
                    "~/models/missing",
                    GiB,
                    fails="not ready after startup_timeout=120s: config.json not found",
                ),
            ]
        }
        self.events: list[dict[str, Any]] = []
        self.spares: list[dict[str, Any]] = []  # as ``Spare.to_json``
        self.history: list[dict[str, Any]] = []  # as ``MemorySample.to_json``, oldest first
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.stream_connections = 0
        self.history_requests = 0
        self.auth_failures = 0
        self.url = ""
        self._seq = 0
        self._next_pid = 41000
        self._lock = asyncio.Lock()
        self._rng = random.Random(7)

    # -------------------------------------------------------------- behaviour

    def emit(self, kind: str, model: str | None = None, **data: Any) -> dict[str, Any]:
        self._seq += 1
        event = {"seq": self._seq, "ts": time.time(), "kind": kind, "model": model, **data}
        self.events.append(event)
        for queue in self.subscribers:
            queue.put_nowait(event)
        return event

    def _state(self, m: StubModel, new: str, **data: Any) -> None:
        old, m.state = m.state, new
        self.emit("worker.state", m.name, old=old, new=new, **data)

    def _resident(self) -> list[StubModel]:
        return [x for x in self.models.values() if x.state in ("starting", "ready")]

    def start_spare(self, kind: str) -> dict[str, Any]:
        """A spare of ``kind`` starts (its imports run): ``spare.starting``."""
        self._next_pid += 1
        spare = {
            "kind": kind,
            "pid": self._next_pid,
            "port": 50000 + self._next_pid % 1000,
            "status": "starting",
            "rss_bytes": None,
            "started_at": time.time(),
        }
        self.spares.append(spare)
        self.emit("spare.starting", kind, pid=spare["pid"])
        return spare

    def spare_ready(self, kind: str, rss: int) -> None:
        (spare,) = [x for x in self.spares if x["kind"] == kind]
        spare["status"], spare["rss_bytes"] = "spare", rss
        duration = round(time.time() - spare["started_at"], 3)
        self.emit("spare.ready", kind, pid=spare["pid"], duration_s=duration, rss_bytes=rss)

    def stop_spare(self, kind: str, reason: str = "not wanted any more") -> None:
        (spare,) = [x for x in self.spares if x["kind"] == kind]
        self.spares.remove(spare)
        self.emit("spare.stopped", kind, pid=spare["pid"], reason=reason)

    def _take_spare(self, m: StubModel) -> dict[str, Any] | None:
        for spare in self.spares:
            if spare["kind"] == m.type and spare["status"] == "spare":
                self.spares.remove(spare)
                self.emit("spare.taken", m.type, pid=spare["pid"], by=m.path)
                return spare
        return None

    def _spares_bytes(self) -> int:
        return sum(x["rss_bytes"] or SPARE_OVERHEAD for x in self.spares)

    def _room_for(self, m: StubModel) -> str | None:
        """Why ``m`` does not fit beside the resident models ("memory", "count"), or None."""
        used = sum(x.planned for x in self._resident())
        if self.budget is not None and used + m.planned > self.budget - self._spares_bytes():
            return "memory"
        if self.max_loaded is not None and len(self._resident()) >= self.max_loaded:
            return "count"
        return None

    async def load(self, m: StubModel, keep_alive: float | None = None) -> None:
        """Load ``m`` (after evicting what it does not fit beside); raises on a failing model
        and, with HTTP 507, on one that can never fit."""
        async with self._lock:
            if m.state == "ready":
                return
            while (reason := self._room_for(m)) is not None:
                victims = [x for x in self._resident() if not x.pin]
                if not victims:
                    why = "it does not fit beside the pinned models"
                    self.emit(
                        "model.refused",
                        m.name,
                        reason=why,
                        needed_bytes=m.planned,
                        budget_bytes=self.budget,
                    )
                    raise web.HTTPInsufficientStorage(
                        text=json.dumps(_error(f"model '{m.name}' cannot be loaded: {why}", 507)),
                        content_type="application/json",
                    )
                victim = min(victims, key=lambda x: x.last_used or 0)
                used = sum(x.planned for x in self._resident())
                self.emit(
                    "model.evicted",
                    victim.name,
                    victim_bytes=victim.planned,
                    budget_bytes=self.budget,
                    max_loaded=self.max_loaded,
                    reason=reason,
                    for_model=m.name,
                    needed_bytes=m.planned,
                    used_bytes=used,
                    free_bytes=None if self.budget is None else self.budget - used,
                    resident=len(self._resident()),
                )
                self.emit("swap", victim.name, to=m.name)
                await self._unload(victim, "swap")
            self._state(m, "starting")
            started = time.monotonic()
            spare = self._take_spare(m)
            await asyncio.sleep(self.load_delay)
            if m.fails:
                m.error = m.fails
                self._state(m, "failed", reason=m.fails)
                raise web.HTTPServiceUnavailable(
                    text=json.dumps(_error(f"model '{m.name}' failed to start: {m.fails}", 503)),
                    content_type="application/json",
                )
            if spare is not None:  # the same process, now with the model
                m.pid, m.port = spare["pid"], spare["port"]
            else:
                self._next_pid += 1
                m.pid, m.port = self._next_pid, 50000 + self._next_pid % 1000
            m.error = None
            m.loaded_at = m.last_used = time.time()
            m.keep_alive_s = keep_alive
            self._state(m, "ready", pid=m.pid, port=m.port)
            from_spare = {"spare": True, "spare_pid": m.pid} if spare is not None else {}
            self.emit(
                "model.loaded",
                m.name,
                duration_s=round(time.monotonic() - started, 4),
                pid=m.pid,
                type=m.type,
                **from_spare,
            )
            m.measured = m.peak = m.rss
            self.emit(
                "model.footprint",
                m.name,
                measured_bytes=m.rss,
                estimate_bytes=m.estimate()["estimate_bytes"],
                planned_bytes=m.planned,
            )

    async def unload(self, m: StubModel, reason: str = "requested") -> None:
        async with self._lock:
            await self._unload(m, reason)

    async def _unload(self, m: StubModel, reason: str) -> None:
        if m.state != "ready":
            return
        self._state(m, "stopping", reason=reason)
        await asyncio.sleep(self.load_delay / 3)
        m.pid = m.port = m.loaded_at = m.keep_alive_s = None
        m.learned, m.measured, m.peak = m.peak or m.learned, None, None
        self._state(m, "stopped", exit_code=0)
        self.emit("model.unloaded", m.name, reason=reason, was="ready", duration_s=0.2)

    def seed_history(self, seconds: float, interval: float = 5.0) -> None:
        """Memory samples of the last ``seconds``, as a server running before the page was
        opened has them: qwen loaded all along (its RSS wobbling), qwen-vl for the last 40%."""
        now = time.time()
        count = int(seconds // interval)
        self.history = []
        for i in range(count, 0, -1):
            models = {"qwen": int(0.6 * GiB) + self._rng.randint(-20, 20) * MiB}
            if i < count * 0.4:
                models["qwen-vl"] = 2 * GiB
            self.history.append(
                {
                    "t": now - i * interval,
                    "available_bytes": int(19.5 * GiB) - sum(models.values()),
                    "total_bytes": 32 * GiB,
                    "workers_rss_bytes": sum(models.values()),
                    "router_rss_bytes": 87 * MiB,
                    "models": models,
                }
            )

    async def drop_streams(self) -> None:
        """End every open event stream cleanly (as a restarting server would)."""
        for queue in list(self.subscribers):
            queue.put_nowait(None)

    def stats(self) -> dict[str, Any]:
        now = time.time()
        loaded = [m for m in self.models.values() if m.state == "ready"]
        workers = sum(m.rss for m in loaded)
        wobble = int(self._rng.uniform(-0.15, 0.15) * GiB)
        planned = sum(m.planned for m in self._resident())
        evictions = [e for e in self.events if e["kind"] == "model.evicted"]
        return {
            "version": "0.4.0.dev0",
            "uptime_s": now - self.started_at,
            "config_path": "/Users/dev/.mlx-serve/models.yaml",
            "started_at": self.started_at,
            "memory": {
                "system_total_bytes": 32 * GiB,
                "system_available_bytes": int(19.5 * GiB) - workers + wobble,
                "workers_rss_bytes": workers,
                "router_rss_bytes": 87 * 1024**2,
                "budget_bytes": self.budget,
                "budget_source": "configured" if self.budget is not None else None,
                "max_loaded_models": self.max_loaded,
                "planned_bytes": planned,
                "measured_bytes": sum(m.measured or 0 for m in self._resident()),
                "free_bytes": None if self.budget is None else self.budget - planned,
                "last_eviction": evictions[-1] if evictions else None,
                "spares_bytes": self._spares_bytes(),
            },
            "queue": {"waiting": 0},
            "models": [self._model_json(m, now) for m in self.models.values()],
            "spares": [dict(x) for x in self.spares],
            "events": self.events[-50:],
        }

    def _model_json(self, m: StubModel, now: float) -> dict[str, Any]:
        ready = m.state == "ready"
        timeout = m.keep_alive_s if m.keep_alive_s is not None else self.IDLE_TIMEOUT
        expires = None
        if ready and timeout >= 0 and m.inflight == 0:
            expires = max(0.0, (m.last_used or now) + timeout - now)
        return {
            "name": m.name,
            "type": m.type,
            "path": m.path,
            "aliases": m.aliases,
            "status": m.status,
            "error": m.error,
            "pid": m.pid,
            "port": m.port,
            "rss_bytes": m.rss if ready else None,
            "loaded_at": m.loaded_at,
            "last_used": m.last_used,
            "idle_timeout_s": self.IDLE_TIMEOUT,
            "expires_in_s": expires,
            "keep_alive_s": m.keep_alive_s,
            "requests": len(m.latencies),
            "inflight": m.inflight,
            "waiting": 0,
            "pinned": m.pin,
            "memory": m.memory(),
            "metrics": {
                "count": len(m.latencies),
                "errors": m.errors,
                "ttft_p50_s": _pct(m.ttfts, 0.5),
                "ttft_p95_s": _pct(m.ttfts, 0.95),
                "latency_p50_s": _pct(m.latencies, 0.5),
                "latency_p95_s": _pct(m.latencies, 0.95),
                "tokens_per_s_p50": _pct(m.speeds, 0.5),
            },
        }

    def _find(self, name: str) -> StubModel:
        for m in self.models.values():
            if name == m.name or name in m.aliases:
                return m
        raise web.HTTPNotFound(
            text=json.dumps(_error(f"model '{name}' not found", 404, "model_not_found")),
            content_type="application/json",
        )

    # -------------------------------------------------------------- HTTP

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/dashboard", self._page)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/models/{name:.+}/load", self._load)
        app.router.add_post("/api/models/{name:.+}/unload", self._unload_route)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.on_shutdown.append(lambda _: self.drop_streams())
        return app

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.api_key and request.path.startswith(("/api/", "/v1/")):
            header = request.headers.get("Authorization", "")
            if header != f"Bearer {self.api_key}":
                self.auth_failures += 1
                self.emit(
                    "auth.failed", path=request.path, reason="wrong key" if header else "missing"
                )
                return web.json_response(
                    _error("a valid API key is required", 401, "invalid_api_key"),
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    async def _page(self, _: web.Request) -> web.StreamResponse:
        return web.FileResponse(DASHBOARD, headers={"Cache-Control": "no-cache"})

    async def _stats(self, request: web.Request) -> web.Response:
        body = self.stats()
        if "history" in request.query:  # as management.history_window: a positive duration
            try:
                seconds = parse_duration(request.query["history"])
            except ValueError:
                seconds = 0
            if seconds <= 0:
                return web.json_response(
                    _error("bad 'history'", 400, "invalid_history"), status=400
                )
            self.history_requests += 1
            start = time.time() - seconds
            body["history"] = {
                "window_s": seconds,
                "interval_s": 5.0,
                "retention_s": 1800.0,
                "samples": [x for x in self.history if x["t"] >= start],
            }
        return web.json_response(body)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.subscribers.add(queue)
        self.stream_connections += 1
        try:
            await response.write(b": ping\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if event is None:
                    break
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.discard(queue)
        return response

    async def _load(self, request: web.Request) -> web.Response:
        m = self._find(request.match_info["name"])
        body = await request.json() if request.can_read_body else {}
        keep = body.get("keep_alive")
        await self.load(m, None if keep is None else float(keep))
        return web.json_response({"name": m.name, "status": m.status})

    async def _unload_route(self, request: web.Request) -> web.Response:
        m = self._find(request.match_info["name"])
        await self.unload(m)
        return web.json_response({"name": m.name, "status": m.status})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = await self.chat(body["model"], stream=bool(body.get("stream")))
        message = {"role": "assistant", "content": "stub"}
        return web.json_response(
            {"object": "chat.completion", "model": name, "choices": [{"message": message}]}
        )

    async def chat(self, model: str, *, stream: bool = False) -> str:
        """Serve one fake chat request for ``model`` (a name or an alias): load, record, log."""
        m = self._find(model)
        await self.load(m)
        m.inflight += 1
        slow = 2 if m.type == "vision" else 1
        ttft = self._rng.uniform(0.04, 0.25) * slow
        tokens = self._rng.randint(16, 96)
        speed = self._rng.uniform(38, 72) / slow
        latency = ttft + tokens / speed
        m.inflight -= 1
        m.last_used = time.time()
        m.ttfts.append(ttft)
        m.latencies.append(latency)
        m.speeds.append(speed)
        self.emit(
            "request",
            m.name,
            endpoint="/v1/chat/completions",
            stream=stream,
            status=200,
            queued_s=0.0,
            ttft_s=round(ttft, 4),
            latency_s=round(latency, 4),
            prompt_tokens=12,
            completion_tokens=tokens,
            tokens_per_s=round(speed, 2),
            retries=0,
            error=None,
        )
        return m.name


def _error(message: str, status: int, code: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# ---------------------------------------------------------------------------- targets


@dataclass
class Target:
    """What a test needs from a server: where it is and how to send it a request."""

    url: str
    api_key: str | None
    models: list[str]  # every configured model, in the API's order
    requested: str  # the model the test makes a chat request to (its row)
    request_as: str  # the name that request uses (may be an alias)
    clicked: str  # a model the test loads and unloads with the buttons
    http: aiohttp.ClientSession
    load_timeout: float = 10.0

    async def chat(self, model: str) -> int:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        async with self.http.post(
            f"{self.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            await response.read()
            return response.status


StartTarget = Callable[..., Awaitable[Target]]


@pytest.fixture
async def stub_factory() -> AsyncIterator[Callable[..., Awaitable[StubServer]]]:
    """Factory: ``await stub_factory(api_key=..., budget=...)`` -> a running
    :class:`StubServer`."""
    runners: list[web.AppRunner] = []

    async def start(api_key: str | None = None, budget: int | None = None) -> StubServer:
        server = StubServer(api_key, budget=budget)
        runner = web.AppRunner(server.app(), shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        server.url = f"http://{host}:{port}"
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def stub(stub_factory: Callable[..., Awaitable[StubServer]]) -> StubServer:
    return await stub_factory()


@pytest.fixture(params=["stub", "real"])
async def start_target(
    request: pytest.FixtureRequest,
    stub_factory: Callable[..., Awaitable[StubServer]],
    start_server: Callable[..., Awaitable[Any]],
    tmp_path: Path,
) -> AsyncIterator[StartTarget]:
    """Factory: ``await start_target(api_key=None)`` -> a :class:`Target` (stub or real)."""
    async with aiohttp.ClientSession() as http:
        if request.param == "stub":

            async def start(api_key: str | None = None) -> Target:
                server = await stub_factory(api_key)
                return Target(
                    server.url,
                    api_key,
                    list(server.models),
                    requested="qwen",
                    request_as="default",  # an alias
                    clicked="mlx-community/Llama-3.2-1B-Instruct:4bit",
                    http=http,
                )

            yield start
            return

        async def start_real(api_key: str | None = None) -> Target:
            from mlx_serve.tiny_models import build_text_model

            models = {
                name: {"path": str(build_text_model(tmp_path / name, seed=seed))}
                for seed, name in enumerate(["tiny-a", "tiny-b"], 1)
            }
            settings = {"api_key": api_key} if api_key else {}
            running = await start_server(models=models, **settings)
            return Target(
                running.url,
                api_key,
                ["tiny-a", "tiny-b"],
                requested="tiny-a",
                request_as="tiny-a",
                clicked="tiny-b",
                http=http,
                load_timeout=60.0,
            )

        yield start_real


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with Browser.launch() as b:
        yield b


# ---------------------------------------------------------------------------- helpers


def q(value: str) -> str:
    """A JavaScript string literal."""
    return json.dumps(value)


def row(name: str) -> str:
    """JS expression: the table row of model ``name`` (CSS.escape copes with / and :)."""
    return f"document.querySelector('tr.model[data-model=\"' + CSS.escape({q(name)}) + '\"]')"


def text_of(selector: str) -> str:
    """JS expression: the text of the element ``selector`` (a CSS selector)."""
    return f"document.querySelector({q(selector)}).textContent"


async def event_text(browser: Browser, kind: str, model: str | None = None) -> str:
    """The text of the newest logged event of ``kind`` (of ``model``)."""
    await wait_event(browser, kind, model)
    found = await browser.evaluate(
        f"[...document.querySelectorAll('#events li[data-kind={q(kind)}]')]"
        f".find((li) => !{q(model or '')} || li.querySelector('.ev-model').textContent === "
        f"{q(model or '')}).querySelector('.ev-text').textContent"
    )
    return str(found)


async def status_of(browser: Browser, name: str) -> str | None:
    value = await browser.evaluate(f"{row(name)}?.dataset.status ?? null")
    return None if value is None else str(value)


async def wait_status(browser: Browser, name: str, status: str, timeout: float = 10.0) -> None:
    await browser.wait_for(
        f"{row(name)}?.dataset.status === {q(status)}", timeout, what=f"{name} to be {status}"
    )


async def click(browser: Browser, name: str, action: str) -> None:
    await browser.wait_for(
        f"!{row(name)}.querySelector('button[data-action={action}]').disabled",
        what=f"the {action} button of {name} to be enabled",
    )
    await browser.evaluate(f"{row(name)}.querySelector('button[data-action={action}]').click()")


async def wait_event(browser: Browser, kind: str, model: str | None = None) -> None:
    model_check = f" && li.querySelector('.ev-model').textContent === {q(model)}" if model else ""
    await browser.wait_for(
        f"[...document.querySelectorAll('#events li[data-kind={q(kind)}]')]"
        f".some((li) => !li.hidden{model_check})",
        what=f"a {kind} event{f' of {model}' if model else ''} in the log",
    )


async def set_filter(browser: Browser, text: str) -> None:
    await browser.evaluate(
        f"{{ const f = document.getElementById('log-filter'); f.value = {q(text)};"
        " f.dispatchEvent(new Event('input')); }"
    )


def unexpected(errors: list[PageError], *allowed_statuses: int) -> list[str]:
    """The page's errors, without the browser's own log lines for HTTP errors it expected
    (Chromium logs every 4xx/5xx answer as "Failed to load resource", handled or not)."""
    return [
        str(e)
        for e in errors
        if not (
            e.source == "network"
            and any(f"status of {status} " in e.text for status in allowed_statuses)
        )
    ]


async def settle(browser: Browser) -> None:
    """Wait for one-shot animations (new-row highlights, color transitions after a theme
    switch) to end, for stable screenshots. Spinners loop forever and bars glide to each new
    sample: those don't count."""
    await browser.wait_for(
        "document.getAnimations().every(a => a.playState !== 'running'"
        " || a.effect.getComputedTiming().iterations === Infinity"
        " || (a instanceof CSSTransition && a.transitionProperty === 'width'))",
        what="animations to finish",
    )


def check_png(path: Path, min_bytes: int = 20_000, min_width: int = 1000) -> tuple[int, int]:
    """Assert ``path`` is a real, non-trivial PNG; return its size in pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_width and height >= 600, (width, height)
    assert len(data) > min_bytes, f"suspiciously small screenshot: {len(data)} bytes"
    return width, height


# ---------------------------------------------------------------------------- tests


async def test_dashboard_follows_the_server(
    start_target: StartTarget, browser: Browser, tmp_path: Path
) -> None:
    target = await start_target()
    await browser.navigate(f"{target.url}/dashboard{FAST}")

    # Every configured model, in order, all unloaded; the header is filled; the stream is live.
    await browser.wait_for(
        f"document.querySelectorAll('tr.model').length === {len(target.models)}",
        what="one row per model",
    )
    names = await browser.evaluate(
        "[...document.querySelectorAll('tr.model')].map(r => r.dataset.model)"
    )
    assert names == target.models
    assert (await browser.evaluate("document.getElementById('version').textContent")).startswith(
        "v"
    )
    await browser.wait_for("document.getElementById('conn').dataset.state === 'live'", what="live")
    # No memory budget on either target: one model at a time, no bar.
    await browser.wait_for(
        f"{text_of('#budget-text')} === 'no memory budget · one model at a time'",
        what="the residency note",
    )
    assert await browser.evaluate("document.getElementById('budget-bar').hidden")
    assert await browser.evaluate("document.getElementById('last-eviction').hidden")
    # No server.prewarm: no spares, and no strip for them.
    assert await browser.evaluate("window.mlxServeDashboard.spares") == []
    assert await browser.evaluate("document.getElementById('spares').hidden")

    # A request through the OpenAI API: its model shows as loaded, the request is logged.
    assert await target.chat(target.request_as) == 200
    requested = target.requested
    await wait_status(browser, requested, "loaded", target.load_timeout)
    await wait_event(browser, "model.loaded", requested)
    await wait_event(browser, "request", requested)
    await browser.wait_for(
        f"{row(requested)}.querySelector('td:nth-child(8)').textContent.startsWith('1')",
        what="the request count",
    )

    # The Load button: a spinner while it runs, then loaded.
    await click(browser, target.clicked, "load")
    await browser.wait_for(
        f"{row(target.clicked)}.querySelector('button[data-action=load]')"
        ".getAttribute('aria-busy') === 'true' || "
        f"{row(target.clicked)}.dataset.status === 'loaded'",
        what="the load spinner",
    )
    await wait_status(browser, target.clicked, "loaded", target.load_timeout)
    await wait_event(browser, "model.loaded", target.clicked)
    assert await browser.evaluate(
        f"{row(target.clicked)}.querySelector('button[data-action=load]').disabled"
    )
    # It took the one slot from the requested model: the eviction is logged and shown.
    evicted = await event_text(browser, "model.evicted", requested)
    assert evicted.startswith(f"evicted for {target.clicked}: count, max 1 loaded")
    await browser.wait_for(
        f"{text_of('#last-eviction')}.startsWith("
        f"{q(f'evicted {requested} for {target.clicked} ')})",
        what="the last eviction",
    )
    assert (await browser.evaluate(text_of("#last-eviction"))).endswith(": count, max 1 loaded")
    # The loaded model's memory: measured now, and what is planned for it.
    await wait_event(browser, "model.footprint", target.clicked)
    footprint = await event_text(browser, "model.footprint", target.clicked)
    assert footprint.startswith("measured ") and " · planned " in footprint
    cell = f"{row(target.clicked)}.querySelector('td:nth-child(4)')"
    await browser.wait_for(
        f"{cell}.firstChild.textContent !== '—'", what="the measured memory of the loaded model"
    )
    assert (await browser.evaluate(f"{cell}.lastChild.textContent")).startswith("plan ")
    # The Unload button.
    await click(browser, target.clicked, "unload")
    await wait_status(browser, target.clicked, "unloaded", target.load_timeout)
    await wait_event(browser, "model.unloaded", target.clicked)
    await browser.wait_for(
        f"!{row(target.clicked)}.querySelector('button[data-action=load]').disabled",
        what="Load to be enabled again",
    )

    # Every button has an accessible name.
    assert await browser.evaluate(
        "[...document.querySelectorAll('button')]"
        ".every(b => (b.getAttribute('aria-label') || b.textContent).trim().length > 0)"
    )

    # Let the memory chart collect a few samples, then take the picture.
    await browser.wait_for("window.mlxServeDashboard.samples.length >= 3", what="samples")
    await settle(browser)
    shot = await browser.screenshot(tmp_path / "dashboard.png", full_page=True)
    check_png(shot)
    assert unexpected(browser.errors) == []


async def test_api_key_is_asked_for_and_remembered(
    start_target: StartTarget, browser: Browser
) -> None:
    target = await start_target(api_key="s3cret-key")
    await browser.navigate(f"{target.url}/dashboard{FAST}")

    # 401 -> the key dialog opens; nothing is shown.
    await browser.wait_for("document.getElementById('key-dialog').open", what="the key dialog")
    assert await browser.evaluate("document.querySelectorAll('tr.model').length") == 0
    assert await browser.evaluate("document.getElementById('conn').dataset.state") == "locked"

    # A wrong key typed into the dialog is rejected: the dialog comes back and says so.
    await browser.evaluate(
        "document.getElementById('key-input').value = 'wrong';"
        "document.getElementById('key-form').requestSubmit()"
    )
    await browser.wait_for(
        "document.getElementById('key-dialog').open && "
        "document.getElementById('key-msg').textContent.includes('rejected')",
        what="the rejected-key message",
    )

    # The right key, kept in localStorage, is sent on every call (also after a reload).
    await browser.evaluate("localStorage.setItem('mlx-serve.apiKey', 's3cret-key')")
    await browser.reload()
    await browser.wait_for(
        f"document.querySelectorAll('tr.model').length === {len(target.models)}",
        what="the models, with the key",
    )
    assert not await browser.evaluate("document.getElementById('key-dialog').open")
    await browser.wait_for("document.getElementById('conn').dataset.state === 'live'", what="live")
    # The 401s before the key was given are in the log (the server logs each as an event).
    await wait_event(browser, "auth.failed")
    assert unexpected(browser.errors, 401) == []


async def test_failures_reconnects_and_dark_mode(
    stub: StubServer, browser: Browser, tmp_path: Path
) -> None:
    """Stub-only: a failing load, an event stream that ends, every event kind, dark mode."""
    await browser.navigate(f"{stub.url}/{FAST}")  # "/" serves the page too
    await wait_status(browser, "broken", "unloaded")

    # A load that fails: the error is shown inline under the row, and can be dismissed.
    await click(browser, "broken", "load")
    await wait_status(browser, "broken", "failed")
    error_row = "document.querySelector('tr.err-row[data-error-for=\"broken\"]')"
    await browser.wait_for(
        f"!{error_row}.hidden && {error_row}.textContent.includes('config.json not found')",
        what="the inline load error",
    )
    await browser.evaluate(f"{error_row}.querySelector('button[data-action=dismiss]').click()")
    # The model's own error (status failed) stays; Load is offered again.
    await browser.wait_for(
        f"{error_row}.querySelector('button[data-action=dismiss]').hidden", what="dismissed"
    )
    assert not await browser.evaluate(
        f"{row('broken')}.querySelector('[data-action=load]').disabled"
    )

    # The event stream ends (server restart, proxy timeout): the page connects again.
    await browser.wait_for("document.getElementById('conn').dataset.state === 'live'", what="live")
    assert stub.stream_connections == 1
    await stub.drop_streams()
    await browser.wait_for(
        "document.getElementById('conn').dataset.state !== 'live'", what="the drop to be noticed"
    )
    await browser.wait_for(
        "document.getElementById('conn').dataset.state === 'live'", 5, what="a reconnection"
    )
    assert stub.stream_connections == 2
    stub.emit("config.reload", added=["phi"], removed=[], changed=["qwen"])
    await wait_event(browser, "config.reload")

    # Traffic and every other kind of event, for the picture.
    for model in ["qwen", "qwen", "qwen-vl", "qwen-vl", "qwen", "qwen"]:
        await stub.chat(model)
    stub.emit("memory.low", available_bytes=int(1.2 * GiB), threshold_bytes=2 * GiB)
    stub.emit("auth.failed", path="/v1/models", remote="192.168.1.20", reason="wrong key")
    stub.emit("worker.crashed", "minilm", exit_code=-9, log_tail="Killed\n")
    for kind in ("memory.low", "auth.failed", "worker.crashed", "swap"):
        await wait_event(browser, kind)
    await browser.wait_for(
        "document.querySelectorAll('#perf .perf-row').length === 2", what="performance rows"
    )
    await browser.wait_for("window.mlxServeDashboard.samples.length >= 4", what="samples")

    # Filtering the log.
    await set_filter(browser, "qwen-vl")
    assert await browser.evaluate(
        "[...document.querySelectorAll('#events li.ev:not([hidden])')]"
        ".every(li => li.dataset.search.includes('qwen-vl'))"
    )
    await set_filter(browser, "")

    # The chart's time window.
    await browser.click("#window button[data-window='60']")
    pressed = "document.querySelector('#window [aria-pressed=true]').textContent"
    assert await browser.evaluate(pressed) == "1m"

    await settle(browser)
    check_png(await browser.screenshot(tmp_path / "dashboard-light.png", full_page=True))
    await browser.emulate_color_scheme("dark")
    assert await browser.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    await settle(browser)
    check_png(await browser.screenshot(tmp_path / "dashboard-dark.png", full_page=True))

    # The log keeps the newest 200 events.
    for i in range(250):
        stub.emit("memory.ok", available_bytes=i * GiB, total_bytes=32 * GiB)
    await browser.wait_for(
        "document.querySelector('#events li[data-kind=\"memory.ok\"] .ev-text')"
        "?.textContent.startsWith('available 249 GiB')",
        what="the newest event on top",
    )
    await browser.wait_for(
        "document.querySelectorAll('#events li.ev').length === 200",
        what="the log trimmed to 200 events",
    )
    assert unexpected(browser.errors, 503) == []  # the failed load's answer


async def test_model_names_are_encoded_per_path_segment(stub: StubServer, browser: Browser) -> None:
    await browser.navigate(f"{stub.url}/dashboard")
    path = await browser.evaluate("window.mlxServeDashboard.modelPath('org/na me:4bit?x#y%')")
    assert path == "org/na%20me%3A4bit%3Fx%23y%25"


async def test_memory_budget_on_a_laptop_screen(
    stub_factory: Callable[..., Awaitable[StubServer]], tmp_path: Path
) -> None:
    """Stub-only: a budget that holds about two models, at 1024 px: the bar fills per loaded
    model, evictions say why, a pinned model is marked and never evicted, nothing overflows."""
    stub = await stub_factory(budget=int(3.5 * GiB))
    async with Browser.launch(width=1024, height=768) as browser:
        await browser.navigate(f"{stub.url}/dashboard{FAST}")
        await wait_status(browser, "qwen", "unloaded")
        await browser.wait_for(
            f"{text_of('#budget-text')} === '0 B planned of 3.50 GiB · 3.50 GiB free'",
            what="the empty budget",
        )
        assert await browser.evaluate(text_of("#budget-source")) == "(configured)"
        assert not await browser.evaluate("document.getElementById('budget-bar').hidden")

        # The pin marker: on the pinned model only.
        pins = await browser.evaluate(
            "[...document.querySelectorAll('tr.model')].filter(r => !r.querySelector('.pin')"
            ".hidden).map(r => r.dataset.model)"
        )
        assert pins == ["minilm"]
        # Planned memory before any load: estimates ("~"), or "≥" without the weights.
        plan = "querySelector('td:nth-child(4) .mem-plan').textContent"
        assert (await browser.evaluate(f"{row('qwen')}.{plan}")).startswith("plan ~")
        assert await browser.evaluate(f"{row('whisper')}.{plan}") == "plan ≥250 MiB"

        # qwen and llama fit together; qwen-vl does not fit beside both: qwen (least recently
        # used) is evicted for it; the pinned minilm then pushes llama out, and stays.
        for name in ("qwen", "llama", "qwen-vl", "minilm"):
            await stub.chat(name)
        await wait_status(browser, "minilm", "loaded")
        assert {m.name for m in stub.models.values() if m.state == "ready"} == {
            "qwen-vl",
            "minilm",
        }
        await browser.wait_for(
            "[...document.querySelectorAll('#budget-bar span')].map(s => s.dataset.model)"
            ".join() === 'qwen-vl,minilm'",
            what="one bar segment per loaded model",
        )
        evicted = await event_text(browser, "model.evicted", "qwen")
        assert evicted.startswith("evicted for qwen-vl: memory, needed 1.92 GiB, free ")
        await browser.wait_for(
            f"{text_of('#last-eviction')}"
            ".startsWith('evicted mlx-community/Llama-3.2-1B-Instruct:4bit for minilm ')",
            what="the last eviction",
        )
        assert ": memory, needed 379 MiB, free " in await browser.evaluate(
            text_of("#last-eviction")
        )
        # Loaded: measured now, and planned from this load's peak (no "~" any more).
        cell = f"{row('qwen-vl')}.querySelector('td:nth-child(4)')"
        await browser.wait_for(f"{cell}.firstChild.textContent === '2.00 GiB'", what="measured")
        assert await browser.evaluate(f"{cell}.lastChild.textContent") == "plan 2.00 GiB"
        footprint = await event_text(browser, "model.footprint", "qwen-vl")
        assert footprint == "measured 2.00 GiB · estimated 1.92 GiB (+4%) · planned 2.00 GiB"
        stub.emit(
            "model.refused",
            "broken",
            reason="its planned footprint (4.00 GiB) exceeds the whole memory budget (3.50 GiB)",
            needed_bytes=4 * GiB,
            budget_bytes=int(3.5 * GiB),
        )
        refused = await event_text(browser, "model.refused", "broken")
        assert refused.startswith("refused: needs 4.00 GiB of a 3.50 GiB budget · its planned")
        assert await browser.evaluate(
            "document.querySelector('#events li[data-kind=\"model.refused\"]')"
            ".classList.contains('is-error')"
        )

        # At 1024 px the page does not scroll sideways and the budget strip fits (the models
        # table scrolls inside its panel, as it did before the memory figures); the eviction,
        # cut to fit, is whole in its tooltip.
        overflowing = await browser.evaluate(
            "[document.documentElement, document.getElementById('budget')]"
            ".filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.id || 'page')"
        )
        assert overflowing == []
        title = await browser.evaluate("document.getElementById('last-eviction').title")
        assert title.startswith("evicted mlx-community/Llama-3.2-1B-Instruct:4bit for minilm ")
        await settle(browser)
        check_png(await browser.screenshot(tmp_path / "dashboard-budget.png", full_page=True))

        # A budget lowered below what is loaded (a config reload): shown as over budget.
        stub.budget = 2 * GiB
        await browser.wait_for(
            "document.getElementById('budget-bar').classList.contains('over')", what="over"
        )
        assert "over by " in await browser.evaluate(text_of("#budget-text"))
        assert unexpected(browser.errors) == []


def spare_chip(kind: str) -> str:
    """JS expression: the chip of the spare of ``kind`` in the spares strip (or null)."""
    return f"document.querySelector('#spares-list .spare[data-type={q(kind)}]')"


async def test_spares_beside_the_budget_on_a_laptop_screen(
    stub_factory: Callable[..., Awaitable[StubServer]], tmp_path: Path
) -> None:
    """Stub-only: pre-warmed spares (``server.prewarm``) at 1024 px: a chip per spare under the
    budget strip (type, pid, RSS or "starting"), what they reserve of the budget, never a row
    of the models table; a load adopts one; their events; nothing overflows."""
    stub = await stub_factory(budget=int(3.5 * GiB))
    async with Browser.launch(width=1024, height=768) as browser:
        await browser.navigate(f"{stub.url}/dashboard{FAST}")
        await wait_status(browser, "qwen", "unloaded")
        assert await browser.evaluate("document.getElementById('spares').hidden")

        text = stub.start_spare("text")
        stub.start_spare("stt")
        await browser.wait_for(
            "!document.getElementById('spares').hidden && "
            "document.querySelectorAll('#spares-list .spare').length === 2",
            what="two spare chips",
        )
        assert await browser.evaluate(f"{spare_chip('text')}.dataset.s") == "starting"
        assert await browser.evaluate(f"{spare_chip('text')}.textContent") == (
            f"textpid {text['pid']}starting"
        )
        assert await browser.evaluate(text_of("#spares-note")) == "500 MiB reserved from the budget"
        stub.spare_ready("text", 86 * MiB)
        await browser.wait_for(f"{spare_chip('text')}.dataset.s === 'spare'", what="a ready spare")
        chip = await browser.evaluate(
            f"[...{spare_chip('text')}.children].map(c => c.textContent).filter(Boolean)"
        )
        assert chip == ["text", f"pid {text['pid']}", "86.0 MiB"]
        await browser.wait_for(
            f"{text_of('#spares-note')} === '336 MiB reserved from the budget'",
            what="the reserved total",
        )
        # What they reserve is a hatched segment of the budget bar.
        assert await browser.evaluate(
            "document.querySelector('#budget-bar .spares-seg').title.includes('336 MiB')"
        )
        # Spares are not models: the table has the configured models only.
        assert await browser.evaluate(
            "[...document.querySelectorAll('#models tbody tr.model')].map(r => r.dataset.model)"
        ) == list(stub.models)
        assert not await browser.evaluate(
            f"document.getElementById('models').textContent.includes('pid {text['pid']}')"
        )
        assert (await event_text(browser, "spare.starting", "stt")).startswith("starting · pid ")
        ready = await event_text(browser, "spare.ready", "text")
        assert ready.startswith("ready in ") and f"· 86.0 MiB · pid {text['pid']}" in ready

        # Every kind at once, still ready or starting: the strip wraps, nothing overflows.
        for kind in ("vision", "embedding", "tts"):
            stub.start_spare(kind)
        stub.spare_ready("vision", 240 * MiB)
        await browser.wait_for(
            "document.querySelectorAll('#spares-list .spare').length === 5", what="five spares"
        )
        overflowing = await browser.evaluate(
            "[document.documentElement, ...['budget', 'spares', 'spares-list']"
            ".map(id => document.getElementById(id))]"
            ".filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.id || 'page')"
        )
        assert overflowing == []
        await settle(browser)
        check_png(await browser.screenshot(tmp_path / "dashboard-spares.png", full_page=True))

        # A load of a text model adopts the text spare: same pid, "from spare" in the log.
        await stub.chat("qwen")
        await wait_status(browser, "qwen", "loaded")
        taken = await event_text(browser, "spare.taken", "text")
        assert taken == f"taken by mlx-community/Qwen2.5-0.5B-Instruct-4bit · pid {text['pid']}"
        loaded = await event_text(browser, "model.loaded", "qwen")
        assert loaded.endswith(f"· pid {text['pid']} · from spare")
        await browser.wait_for(f"{spare_chip('text')} === null", what="the taken spare gone")

        # Failures: a warning while it retries, an error once the pool gives up.
        stub.emit(
            "spare.failed",
            "tts",
            reason="the spare exited with code 1",
            failures=1,
            gave_up=False,
            log_tail="Traceback (most recent call last):\n  ...",
        )
        failed = await event_text(browser, "spare.failed", "tts")
        assert failed == "the spare exited with code 1"
        li = "document.querySelector('#events li[data-kind=\"spare.failed\"]')"
        assert not await browser.evaluate(f"{li}.classList.contains('is-error')")
        assert "Traceback" in await browser.evaluate(f"{li}.querySelector('.ev-text').title")
        stub.emit(
            "spare.failed",
            "tts",
            reason="not ready after 120s",
            failures=3,
            gave_up=True,
            log_tail="",
        )
        await browser.wait_for(
            f"{li}.querySelector('.ev-text').textContent === "
            "'not ready after 120s · 3 in a row · gave up' && "
            f"{li}.classList.contains('is-error')",
            what="the given-up spare",
        )

        # The spares stop (prewarm turned off): the strip goes away.
        for spare in list(stub.spares):
            stub.stop_spare(spare["kind"])
        await browser.wait_for("document.getElementById('spares').hidden", what="no spares")
        stopped = await event_text(browser, "spare.stopped", "vision")
        assert stopped.startswith("stopped (not wanted any more) · pid ")
        assert await browser.evaluate("document.querySelector('#budget-bar .spares-seg')") is None
        assert unexpected(browser.errors) == []


# ---------------------------------------------------------------------------- layout

#: JS (``dashboard_layout.js``): ``{problems, measures}`` of the page at the current width.
#: ``problems`` lists what is wrong with the layout, by kind (all empty when it fits); boxes
#: are compared, not pixels:
#:
#: * ``page``: the document scrolls sideways;
#: * ``beyond``: a visible element whose box leaves the viewport;
#: * ``panels``: two of the header and the panels intersect;
#: * ``overlaps``: two visible children of a row of parts (a performance row, a panel head,
#:   the budget strip, a table row, an event...) intersect;
#: * ``spills``: an element whose content is wider than its box and is not cut with an
#:   ellipsis (the whole text is then in its tooltip): it scrolls sideways, or draws over
#:   its neighbours;
#: * ``buttons``: a Load/Unload button not wholly visible (outside the viewport or the
#:   table's box, or covered: the hit test at its edges finds something else).
#:
#: ``measures``: the widths the layout is made of (page, models table and its box, panels),
#: the table's visible columns, and whether the models are cards.
LAYOUT = (Path(__file__).parent / "dashboard_layout.js").read_text()


async def test_fits_a_wide_screen_a_laptop_and_a_phone(
    stub_factory: Callable[..., Awaitable[StubServer]], tmp_path: Path
) -> None:
    """Stub-only, every panel filled (a budget, an eviction, two spares, long model names,
    requests, a crash with its log): at 1400, 1024 and 390 px nothing scrolls sideways, leaves
    the viewport, overlaps or spills, and every Load/Unload button is wholly visible. The
    models table drops the columns shown elsewhere as it narrows, and is cards on a phone."""
    stub = await stub_factory(budget=int(3.5 * GiB))
    stub.seed_history(600)
    for name in ("qwen", "llama", "qwen", "qwen-vl", "qwen-vl", "llama"):
        await stub.chat(name)
    stub.start_spare("text")
    stub.spare_ready("text", 86 * MiB)
    stub.start_spare("embedding")
    stub.emit(
        "worker.crashed",
        "minilm",
        exit_code=-9,
        reason="killed by SIGKILL",
        signal="SIGKILL",
        pid=41999,
        log_tail="=== mlx-serve: starting minilm\nloading weights\n" + "x" * 300 + "\n",
    )
    async with Browser.launch(width=1400, height=900) as browser:
        await browser.navigate(f"{stub.url}/dashboard{FAST}")
        await wait_status(browser, "qwen-vl", "loaded")
        await browser.wait_for(
            "document.querySelectorAll('#perf .perf-row').length === 3", what="performance rows"
        )
        await wait_event(browser, "worker.crashed")
        await browser.wait_for(
            "document.querySelectorAll('#spares-list .spare').length === 2", what="spares"
        )
        measured: dict[int, Any] = {}
        for width, height in ((1400, 900), (1024, 768), (390, 844)):
            await browser.resize(width, height)
            layout = await browser.evaluate(LAYOUT)
            problems = layout["problems"]
            assert problems == {k: [] for k in problems}, f"at {width} px: {problems}"
            measured[width] = layout["measures"]
            await settle(browser)
            shot = await browser.screenshot(tmp_path / f"dashboard-{width}.png", full_page=True)
            check_png(shot, min_width=width)
        # The crash's log, opened, must fit too (its long line wraps).
        await browser.evaluate("document.querySelector('#events .ev-more').open = true")
        problems = (await browser.evaluate(LAYOUT))["problems"]
        assert problems == {k: [] for k in problems}, f"with the log open: {problems}"
    # Every column on a wide screen; at 1024 px those shown elsewhere go (Loaded: the status
    # tooltip; TTFT and tok/s: the Performance panel); a phone gets cards.
    all_columns = ["model", "type", "status", "mem", "loaded", "used", "idle", "req", "ttft"]
    assert measured[1400]["columns"] == [*all_columns, "tps", "actions"]
    assert measured[1024]["columns"] == [
        "model", "type", "status", "mem", "used", "idle", "req", "actions"
    ]  # fmt: skip
    assert not measured[1024]["cards"] and measured[390]["cards"]
    for width, m in measured.items():
        assert m["page"] <= width and m["table"] <= m["table_box"], (width, m)
    assert unexpected(browser.errors) == []


async def test_memory_chart_is_filled_on_load_and_scaled_to_the_models(
    stub: StubServer, browser: Browser
) -> None:
    """Stub-only: the server's last ten minutes come with the first stats (``?history=``),
    once; the chart stacks each model's RSS on an axis scaled to them (4 GiB here, on a
    32 GiB machine) with the budget line when it is in range; "System" is the old view."""
    stub.seed_history(600)
    await stub.chat("qwen")
    await stub.chat("qwen-vl")  # evicts qwen: one model at a time
    await browser.navigate(f"{stub.url}/dashboard{FAST}")
    await browser.wait_for("window.mlxServeDashboard.samples.length >= 100", what="the history")
    # The first stats brought ten minutes back (the page has been open for a second).
    oldest = await browser.evaluate("Date.now() - window.mlxServeDashboard.samples[0].t")
    assert 9 * 60_000 < oldest < 11 * 60_000
    assert stub.history_requests == 1
    await browser.wait_for(
        "window.mlxServeDashboard.chart?.names.join() === 'qwen,qwen-vl'", what="two series"
    )
    chart = await browser.evaluate("window.mlxServeDashboard.chart")
    assert chart["mode"] == "models" and chart["budget"] is None
    assert 2.5 * GiB < chart["dataMax"] < 2.7 * GiB  # qwen and qwen-vl stacked
    assert chart["yMax"] == 3 * GiB  # scaled to the data, not to the 32 GiB machine
    legend = await browser.evaluate(
        "[...document.querySelectorAll('#legend > span')].map(s => s.textContent)"
    )
    # qwen was evicted: nothing now.
    assert legend == ["qwen—", "qwen-vl2.00 GiB", "total2.00 GiB"]
    # Hovering: the models at that moment, the top of the stack first, and their total.
    canvas = "document.getElementById('memchart')"
    await browser.evaluate(
        f"(() => {{ const r = {canvas}.getBoundingClientRect(); {canvas}.dispatchEvent("
        "new MouseEvent('mousemove', {clientX: r.right - 60, clientY: r.top + 40})); })()"
    )
    tip = await browser.evaluate(
        "[...document.getElementById('chart-tip').children].slice(1)"
        ".map(d => [d.firstChild.textContent, d.lastChild.textContent])"
    )
    assert [label for label, _ in tip] == ["qwen-vl", "qwen", "total"], tip
    assert tip[0][1] == "2.00 GiB" and tip[2][1].endswith(" GiB"), tip
    assert 2.5 < float(tip[2][1].split()[0]) < 2.7, tip  # qwen-vl's 2 GiB on qwen's 0.6
    await browser.evaluate(
        "document.getElementById('memchart').dispatchEvent(new MouseEvent('mouseleave'))"
    )
    assert await browser.evaluate("document.getElementById('chart-tip').hidden")

    # Polls add the page's own samples; the history is not asked for again.
    count = await browser.evaluate("window.mlxServeDashboard.samples.length")
    await browser.wait_for(
        f"window.mlxServeDashboard.samples.length >= {count + 3}", what="more samples"
    )
    assert stub.history_requests == 1

    # The system view: available memory and workers against the machine's total.
    await browser.click("#chart-mode button[data-mode=system]")
    chart = await browser.evaluate("window.mlxServeDashboard.chart")
    assert chart["mode"] == "system" and chart["yMax"] >= 32 * GiB
    assert await browser.evaluate(
        "[...document.querySelectorAll('#legend > span')].map(s => s.firstChild.className)"
    ) == ["avail", "workers"]
    # Remembered across a reload, like the window.
    await browser.reload()
    await browser.wait_for("window.mlxServeDashboard.chart?.mode === 'system'", what="system")
    await browser.click("#chart-mode button[data-mode=models]")
    assert await browser.evaluate("window.mlxServeDashboard.chart.mode") == "models"
    assert unexpected(browser.errors) == []


async def test_memory_chart_shows_the_budget_when_it_is_in_range(
    stub_factory: Callable[..., Awaitable[StubServer]], browser: Browser
) -> None:
    stub = await stub_factory(budget=int(3.5 * GiB))
    stub.seed_history(300)
    await browser.navigate(f"{stub.url}/dashboard{FAST}")
    await browser.wait_for(
        "window.mlxServeDashboard.chart?.budget > 0", what="the budget on the chart"
    )
    chart = await browser.evaluate("window.mlxServeDashboard.chart")
    assert chart["budget"] == int(3.5 * GiB) and chart["yMax"] == 4 * GiB
    assert unexpected(browser.errors) == []


def crash_li(model: str) -> str:
    """JS expression: the newest worker.crashed entry of ``model`` in the log."""
    return (
        "[...document.querySelectorAll('#events li[data-kind=\"worker.crashed\"]')]"
        f".find(li => li.querySelector('.ev-model').textContent === {q(model)})"
    )


async def test_crash_events_say_why_and_keep_the_log_folded(
    stub: StubServer, browser: Browser
) -> None:
    """Stub-only: a crash reads as the event's reason ("killed by SIGKILL"), or what its exit
    code says when it has none; the worker's last log lines (this start's, not blank) are
    under it, folded, never an unrelated line in place of the reason."""
    await browser.navigate(f"{stub.url}/dashboard{FAST}")
    await browser.wait_for("document.getElementById('conn').dataset.state === 'live'", what="live")
    tail = "\n".join(
        [
            "=== mlx-serve: starting qwen: python -m mlx_serve.workers.text",
            "an earlier start's line",
            "=== mlx-serve: starting qwen: python -m mlx_serve.workers.text",
            "loading weights",
            "",
            'INFO:     127.0.0.1:50312 - "GET /health HTTP/1.1" 200 OK',
        ]
    )
    stub.emit(
        "worker.crashed", "qwen", exit_code=-9, signal="SIGKILL", reason="killed by SIGKILL",
        pid=4242, log_tail=tail,
    )  # fmt: skip
    stub.emit("worker.crashed", "llama", exit_code=-11, log_tail="")  # no reason: from the code
    stub.emit("worker.crashed", "minilm", exit_code=3, log_tail="Traceback...\nValueError: x\n")
    assert await event_text(browser, "worker.crashed", "qwen") == "killed by SIGKILL · pid 4242"
    assert await event_text(browser, "worker.crashed", "llama") == "killed by SIGSEGV"
    assert await event_text(browser, "worker.crashed", "minilm") == "exited with code 3"

    details = f"{crash_li('qwen')}.querySelector('details.ev-more')"
    assert await browser.evaluate(f"{details}.open") is False  # folded
    assert await browser.evaluate(f"{details}.querySelector('summary').textContent") == (
        "last 2 log lines"
    )
    assert await browser.evaluate(f"{details}.querySelector('pre').checkVisibility()") is False
    await browser.evaluate(f"{details}.querySelector('summary').click()")
    assert await browser.evaluate(f"{details}.querySelector('pre').checkVisibility()") is True
    assert await browser.evaluate(f"{details}.querySelector('pre').textContent") == (
        'loading weights\nINFO:     127.0.0.1:50312 - "GET /health HTTP/1.1" 200 OK'
    )
    # No log: no fold. An error row in red, like every failure.
    assert await browser.evaluate(f"{crash_li('llama')}.querySelector('details')") is None
    assert await browser.evaluate(f"{crash_li('minilm')}.classList.contains('is-error')")
    # Opened folds stay open while new events arrive (the rows are kept, not rebuilt).
    stub.emit("memory.ok", available_bytes=GiB, total_bytes=32 * GiB)
    await wait_event(browser, "memory.ok")
    assert await browser.evaluate(f"{details}.open") is True
    assert unexpected(browser.errors) == []


async def test_real_server_history_and_a_killed_worker(
    start_server: StartServer, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real server (a fake worker): it samples memory from startup, serves the samples
    with ``?history=`` (400 for a bad duration), the page starts with them; a worker killed
    with SIGKILL reads as such in the log, with its log lines folded under it."""
    monkeypatch.setattr(management, "HISTORY_INTERVAL", 0.1)
    run = await start_server(
        {"a": {"path": "fake/a"}}, drivers={ModelType.TEXT: FakeWorkerDriver()}
    )
    async with run.http.post("/api/models/a/load", json={}) as r:
        assert r.status == 200, await r.text()

    async def history(value: str) -> tuple[int, Any]:
        async with run.http.get("/api/stats", params={"history": value}) as r:
            return r.status, await r.json()

    samples: list[dict[str, Any]] = []

    async def loaded_samples() -> int:
        nonlocal samples
        status, body = await history("1m")
        assert status == 200, body
        samples = body["history"]["samples"]
        return sum("a" in s["models"] for s in samples)

    deadline = time.monotonic() + 20
    while await loaded_samples() < 5:
        assert time.monotonic() < deadline, "no samples of the loaded model"
        await asyncio.sleep(POLL_INTERVAL)
    with_a = [s for s in samples if "a" in s["models"]]
    assert all(s["models"]["a"] > 0 for s in with_a)
    assert all(s["workers_rss_bytes"] == sum(s["models"].values()) for s in samples)
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    for bad in ("soon", "0", "-1m", ""):
        status, body = await history(bad)
        assert status == 400, (bad, body)
        error = body["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "history"
        assert error["code"] == "invalid_history" and "history" in error["message"]
    async with run.http.get("/api/stats") as r:  # without it: no history in the answer
        assert "history" not in await r.json()

    # The page starts with the server's samples, on an axis scaled to the worker's RSS.
    await browser.navigate(f"{run.url}/dashboard{FAST}")
    await wait_status(browser, "a", "loaded")
    await browser.wait_for(
        "window.mlxServeDashboard.samples.filter(s => s.server).length >= 5",
        what="the server's samples",
    )
    await browser.wait_for("window.mlxServeDashboard.chart?.names.join() === 'a'", what="a")
    chart = await browser.evaluate("window.mlxServeDashboard.chart")
    total = samples[-1]["total_bytes"]
    assert chart["dataMax"] <= chart["yMax"] < max(4 * chart["dataMax"], 64 * MiB) < total

    # kill -9 the worker: the crash says so, its log lines are folded under it.
    pid = run.supervisor.workers["a"].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    text = await event_text(browser, "worker.crashed", "a")
    assert "SIGKILL" in text, text
    details = f"{crash_li('a')}.querySelector('details.ev-more')"
    assert await browser.evaluate(f"{details}.open") is False
    log = await browser.evaluate(f"{details}.querySelector('pre').textContent")
    assert f"fake worker pid {pid}" in log, log
    await wait_status(browser, "a", "failed")
    assert unexpected(browser.errors) == []
