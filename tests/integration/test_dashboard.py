"""The dashboard page in a real (headless) Chromium, driven over CDP by ``tests/browser.py``,
against the real router and supervisor.

The workers are fake workers running in the test's own loop
(:mod:`tests.integration.inprocess`): no process is forked, so a test decides when a model
loads, a spare becomes ready or a worker crashes. The machine is fake too
(:class:`FakeMachine`): the app's memory readings (psutil's RSS and system figures) are the
sizes of :data:`MODELS` on a 32 GiB machine, and each model's files declare their weights
(a safetensors header, no data), so estimates, budgets and evictions come out the same on
every machine. Everything else (statuses, estimates, the scheduler's choices, request
metrics, auth, the event stream) is the app's own.

What the page is shown that the app does not produce on demand is emitted on the app's own
event bus, as the supervisor would emit it: a low-memory warning, a crash of an old shape
(no ``reason``, as servers before crash reasons sent), hundreds of events at once.

One test (:func:`test_real_server_history_and_a_killed_worker`) runs the whole server,
``serve()``, with a fake worker as a real process, and kills it with SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mlx_serve.config import ModelType
from mlx_serve.observability import memory
from mlx_serve.observability.history import MemorySample
from mlx_serve.router import management
from mlx_serve.supervisor import Supervisor
from mlx_serve.testing import FakeWorkerDriver
from tests.browser import Browser, PageError, chromium_binary
from tests.conftest import eventually
from tests.integration.conftest import StartApp, StartServer
from tests.integration.inprocess import AppRun, InProcessLauncher, model_yaml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium_binary() is None, reason="needs Chromium (apt-get install chromium)"
    ),
]

GiB = 1024**3
MiB = 1024**2
#: Query string for tests: poll /api/stats every 0.25 s instead of every 2 s.
FAST = "?poll=250"


# ------------------------------------------------------------------- models and the machine


@dataclass(frozen=True)
class FakeModel:
    """A configured model: its worker's RSS once loaded, and the weights its files declare
    (None: a hub repo not downloaded, so no files at all)."""

    name: str
    type: ModelType
    rss: int
    weights: int | None
    aliases: tuple[str, ...] = ()
    pin: bool = False
    args: Mapping[str, object] = field(default_factory=dict)


LLAMA = "mlx-community/Llama-3.2-1B-Instruct:4bit"  # a name with "/" and ":"
MODELS = [
    FakeModel("qwen", ModelType.TEXT, int(0.62 * GiB), 448 * MiB, aliases=("default",)),
    FakeModel(LLAMA, ModelType.TEXT, int(1.31 * GiB), 1024 * MiB, aliases=("llama",)),
    FakeModel("qwen-vl", ModelType.VISION, 2 * GiB, 1536 * MiB),
    FakeModel("minilm", ModelType.EMBEDDING, int(0.18 * GiB), 90 * MiB, pin=True),
    FakeModel("soprano", ModelType.TTS, int(0.35 * GiB), 160 * MiB),
    FakeModel("whisper", ModelType.STT, int(0.25 * GiB), None),
    # Starts and exits at once (as a model whose weights are broken does); planned above
    # the budgets of these tests, so under one it is refused before any start.
    FakeModel("broken", ModelType.TEXT, GiB, 4 * GiB, args={"exit-on-start": 1}),
]
RSS = {m.name: m.rss for m in MODELS}

#: A text or vision model's KV cache: 2 x 8 layers x 8 heads x 64 x 8192 tokens x 2 bytes.
_LLM_CONFIG = {
    "model_type": "llama", "num_hidden_layers": 8, "num_attention_heads": 32,
    "num_key_value_heads": 8, "hidden_size": 2048,
}  # fmt: skip


def model_files(root: Path, model: FakeModel) -> str:
    """A directory with ``model``'s config and a safetensors file whose header declares its
    weights (the data itself is not there: only the header is ever read). Returns the path
    for models.yaml (a hub repo id for a model without files)."""
    if model.weights is None:
        return f"dashboard-test/{model.name}-not-pulled"
    path = root / model.name.replace("/", "--").replace(":", "-")
    path.mkdir(parents=True, exist_ok=True)
    config = _LLM_CONFIG if model.type in (ModelType.TEXT, ModelType.VISION) else {}
    (path / "config.json").write_text(json.dumps(config))
    header = json.dumps(
        {"weight": {"dtype": "U8", "shape": [model.weights], "data_offsets": [0, model.weights]}}
    ).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return str(path)


class FakeMachine:
    """What the app reads of the machine, made up: 32 GiB, 19.5 GiB of it available before
    any model; each model's worker has its :data:`RSS`, a spare what :attr:`spare_rss`
    says; the router 87 MiB."""

    TOTAL = 32 * GiB
    AVAILABLE = int(19.5 * GiB)
    ROUTER = 87 * MiB

    def __init__(self) -> None:
        self.supervisor: Supervisor | None = None
        self.spare_rss: dict[int, int] = {}

    def rss(self, pid: int | None) -> int | None:
        if pid is None:
            return None
        if self.supervisor is not None:
            for name, worker in self.supervisor.workers.items():
                if worker.pid == pid:
                    return RSS[name]
        return self.spare_rss.get(pid)

    def measure(self, pid: int | None, mlx_bytes: int | None = None) -> int | None:
        return self.rss(pid)

    def system(self) -> memory.SystemMemory:
        workers = self.supervisor.workers.values() if self.supervisor is not None else []
        used = sum(self.rss(w.pid) or 0 for w in workers)
        return memory.SystemMemory(self.TOTAL, self.AVAILABLE - used)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Replace the app's readings wherever a module imported them."""
        fakes: dict[str, Callable[..., object]] = {
            "tree_rss_bytes": self.rss,
            "system_memory": self.system,
            "own_rss_bytes": lambda: self.ROUTER,
        }
        real = {name: getattr(memory, name) for name in fakes}
        for module in list(sys.modules.values()):
            if not getattr(module, "__name__", "").startswith("mlx_serve"):
                continue
            for name, fake in fakes.items():
                if getattr(module, name, None) is real[name]:
                    monkeypatch.setattr(module, name, fake)


# -------------------------------------------------------------------------------- the app


@dataclass
class Traffic:
    """What the page asked the app for: ``/api/stats?history=`` requests, and the live event
    streams, as they came (seen by a ``on_response_prepare`` handler of the app)."""

    history_requests: int = 0
    event_streams: list[web.Request] = field(default_factory=list)

    def observe(self, app: web.Application) -> None:
        async def seen(request: web.Request, _: web.StreamResponse) -> None:
            if request.path == "/api/stats" and "history" in request.query:
                self.history_requests += 1
            if request.path == "/api/events" and request.query.get("follow") == "true":
                self.event_streams.append(request)

        app.on_response_prepare.append(seen)


@dataclass
class Dashboard:
    """The real app over in-process fake workers, as the page sees it."""

    run: AppRun
    machine: FakeMachine
    launcher: InProcessLauncher
    models: dict[str, dict[str, Any]]
    server: dict[str, Any]
    traffic: Traffic

    @property
    def url(self) -> str:
        return self.run.url

    async def chat(self, model: str) -> int:
        """A chat request through the OpenAI API (key included if one is configured)."""
        key = self.server.get("api_key")
        headers = {"Authorization": f"Bearer {key}"} if key else None
        status, _ = await self.run.chat(model, max_tokens=4, headers=headers)
        return status

    async def reload(self, **server: Any) -> None:
        """Edit models.yaml's server settings (``None`` removes one) and ``POST /api/reload``."""
        self.server = {k: v for k, v in {**self.server, **server}.items() if v is not None}
        source = self.run.supervisor.config.source
        assert source is not None
        source.write_text(model_yaml(self.models, **self.server))
        async with self.run.http.post("/api/reload", json={}) as r:
            assert r.status == 200, await r.text()

    def drop_event_streams(self) -> None:
        """Close the connections of the live event streams, as a restarting server (or a
        proxy's timeout) would."""
        for request in self.traffic.event_streams:
            if request.transport is not None:
                request.transport.close()

    def spare_pid(self, kind: str) -> int:
        (spare,) = [s for s in self.run.supervisor.spares.to_json() if s["kind"] == kind]
        return int(spare["pid"])


OpenDashboard = Callable[..., Awaitable[Dashboard]]


def seed_history(app: web.Application, seconds: float, interval: float = 5.0) -> None:
    """Memory samples of the last ``seconds``, as a server running before the page was
    opened has them: qwen loaded all along (its RSS wobbling), qwen-vl for the last 40%."""
    history = app[management.HISTORY]
    rng = random.Random(7)
    now = time.time()
    count = int(seconds // interval)
    for i in range(count, 0, -1):
        models = {"qwen": int(0.6 * GiB) + rng.randint(-20, 20) * MiB}
        if i < count * 0.4:
            models["qwen-vl"] = 2 * GiB
        history.record(
            MemorySample(
                t=now - i * interval,
                available_bytes=FakeMachine.AVAILABLE - sum(models.values()),
                total_bytes=FakeMachine.TOTAL,
                router_rss_bytes=FakeMachine.ROUTER,
                models=models,
            )
        )


@pytest.fixture
async def open_dashboard(
    start_app: StartApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> OpenDashboard:
    """Factory: ``await open_dashboard(history_s=None, **server)`` -> :class:`Dashboard`
    (with ``history_s``, that much memory history from before the start)."""
    machine = FakeMachine()
    machine.install(monkeypatch)

    async def start(history_s: float | None = None, **server: Any) -> Dashboard:
        models: dict[str, dict[str, Any]] = {}
        for m in MODELS:
            entry: dict[str, Any] = {"type": m.type.value, "path": model_files(tmp_path, m)}
            if m.aliases:
                entry["aliases"] = list(m.aliases)
            if m.pin:
                entry["pin"] = True
            if m.args:
                entry["args"] = dict(m.args)
            models[m.name] = entry
        launcher = InProcessLauncher()
        traffic = Traffic()

        def before_start(app: web.Application) -> None:
            traffic.observe(app)
            if history_s is not None:
                seed_history(app, history_s)

        run = await start_app(
            models, launcher=launcher, measure=machine.measure, before_start=before_start,
            **server,
        )  # fmt: skip
        machine.supervisor = run.supervisor
        return Dashboard(run, machine, launcher, models, dict(server), traffic)

    return start


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


def unexpected(
    errors: list[PageError], *allowed_statuses: int, stream_cut: bool = False
) -> list[str]:
    """The page's errors, without the browser's own log lines for HTTP errors it expected
    (Chromium logs every 4xx/5xx answer as "Failed to load resource", handled or not) and,
    with ``stream_cut``, for an event stream whose connection was closed under it."""
    return [
        str(e)
        for e in errors
        if not (
            e.source == "network"
            and (
                any(f"status of {status} " in e.text for status in allowed_statuses)
                or (stream_cut and "ERR_INCOMPLETE_CHUNKED_ENCODING" in e.text)
            )
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


LIVE = "document.getElementById('conn').dataset.state === 'live'"


# ---------------------------------------------------------------------------- tests


async def test_dashboard_follows_the_server(
    open_dashboard: OpenDashboard, browser: Browser, tmp_path: Path
) -> None:
    served = await open_dashboard()
    await browser.navigate(f"{served.url}/dashboard{FAST}")

    # Every configured model, in order, all unloaded; the header is filled; the stream is live.
    await browser.wait_for(
        f"document.querySelectorAll('tr.model').length === {len(MODELS)}",
        what="one row per model",
    )
    names = await browser.evaluate(
        "[...document.querySelectorAll('tr.model')].map(r => r.dataset.model)"
    )
    assert names == [m.name for m in MODELS]
    assert (await browser.evaluate("document.getElementById('version').textContent")).startswith(
        "v"
    )
    await browser.wait_for(LIVE, what="live")
    # No memory budget: one model at a time, no bar.
    await browser.wait_for(
        f"{text_of('#budget-text')} === 'no memory budget · one model at a time'",
        what="the residency note",
    )
    assert await browser.evaluate("document.getElementById('budget-bar').hidden")
    assert await browser.evaluate("document.getElementById('last-eviction').hidden")
    # No server.prewarm: no spares, and no strip for them.
    assert await browser.evaluate("window.mlxServeDashboard.spares") == []
    assert await browser.evaluate("document.getElementById('spares').hidden")

    # A request through the OpenAI API, by an alias: its model shows as loaded, the request
    # is logged.
    assert await served.chat("default") == 200
    await wait_status(browser, "qwen", "loaded")
    await wait_event(browser, "model.loaded", "qwen")
    await wait_event(browser, "request", "qwen")
    await browser.wait_for(
        f"{row('qwen')}.querySelector('td:nth-child(8)').textContent.startsWith('1')",
        what="the request count",
    )

    # The Load button: a spinner while it runs, then loaded.
    await click(browser, LLAMA, "load")
    await browser.wait_for(
        f"{row(LLAMA)}.querySelector('button[data-action=load]')"
        ".getAttribute('aria-busy') === 'true' || "
        f"{row(LLAMA)}.dataset.status === 'loaded'",
        what="the load spinner",
    )
    await wait_status(browser, LLAMA, "loaded")
    await wait_event(browser, "model.loaded", LLAMA)
    load_button = f"{row(LLAMA)}.querySelector('button[data-action=load]')"
    assert await browser.evaluate(f"{load_button}.disabled")
    # It took the one slot from the requested model: the eviction is logged and shown.
    evicted = await event_text(browser, "model.evicted", "qwen")
    assert evicted.startswith(f"evicted for {LLAMA}: count, max 1 loaded"), evicted
    await browser.wait_for(
        f"{text_of('#last-eviction')}.startsWith({q(f'evicted qwen for {LLAMA} ')})",
        what="the last eviction",
    )
    assert (await browser.evaluate(text_of("#last-eviction"))).endswith(": count, max 1 loaded")
    # The loaded model's memory: measured now, and what is planned for it.
    footprint = await event_text(browser, "model.footprint", LLAMA)
    assert footprint.startswith("measured 1.31 GiB") and " · planned " in footprint, footprint
    cell = f"{row(LLAMA)}.querySelector('td:nth-child(4)')"
    await browser.wait_for(
        f"{cell}.firstChild.textContent === '1.31 GiB'", what="the measured memory of the model"
    )
    assert (await browser.evaluate(f"{cell}.lastChild.textContent")).startswith("plan ")
    # The Unload button.
    await click(browser, LLAMA, "unload")
    await wait_status(browser, LLAMA, "unloaded")
    await wait_event(browser, "model.unloaded", LLAMA)
    await browser.wait_for(
        f"!{row(LLAMA)}.querySelector('button[data-action=load]').disabled",
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
    open_dashboard: OpenDashboard, browser: Browser
) -> None:
    served = await open_dashboard(api_key="s3cret-key")
    await browser.navigate(f"{served.url}/dashboard{FAST}")

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
        f"document.querySelectorAll('tr.model').length === {len(MODELS)}",
        what="the models, with the key",
    )
    assert not await browser.evaluate("document.getElementById('key-dialog').open")
    await browser.wait_for(LIVE, what="live")
    # The 401s before the key was given are in the log (the server logs each as an event).
    await wait_event(browser, "auth.failed")
    assert unexpected(browser.errors, 401) == []


async def test_failures_reconnects_and_dark_mode(
    open_dashboard: OpenDashboard, browser: Browser, tmp_path: Path
) -> None:
    """A failing load, an event stream that ends, every event kind, dark mode."""
    served = await open_dashboard()
    await browser.navigate(f"{served.url}/{FAST}")  # "/" serves the page too
    await wait_status(browser, "broken", "unloaded")

    # A load that fails: the error is shown inline under the row, and can be dismissed.
    await click(browser, "broken", "load")
    await wait_status(browser, "broken", "failed")
    error_row = "document.querySelector('tr.err-row[data-error-for=\"broken\"]')"
    await browser.wait_for(
        f"!{error_row}.hidden && {error_row}.textContent.includes('exited with code 1')",
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
    await browser.wait_for(LIVE, what="live")
    assert len(served.traffic.event_streams) == 1
    served.drop_event_streams()
    await browser.wait_for(f"!({LIVE})", what="the drop to be noticed")
    await browser.wait_for(LIVE, 5, what="a reconnection")
    assert len(served.traffic.event_streams) == 2
    await served.reload()  # models.yaml as it was: "no changes"
    await wait_event(browser, "config.reload")

    # Traffic and every other kind of event, for the picture.
    for model in ["qwen", "qwen", "qwen-vl", "qwen-vl", "qwen", "qwen"]:
        assert await served.chat(model) == 200
    served.run.emit("memory.low", available_bytes=int(1.2 * GiB), threshold_bytes=2 * GiB)
    served.run.emit("auth.failed", path="/v1/models", remote="192.168.1.20", reason="wrong key")
    served.run.emit("worker.crashed", "minilm", exit_code=-9, log_tail="Killed\n")
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
        served.run.emit("memory.ok", available_bytes=i * GiB, total_bytes=32 * GiB)
    await browser.wait_for(
        "document.querySelector('#events li[data-kind=\"memory.ok\"] .ev-text')"
        "?.textContent.startsWith('available 249 GiB')",
        what="the newest event on top",
    )
    await browser.wait_for(
        "document.querySelectorAll('#events li.ev').length === 200",
        what="the log trimmed to 200 events",
    )
    # The failed load's answer, and the stream cut (a server's stream never ends cleanly).
    assert unexpected(browser.errors, 503, stream_cut=True) == []


async def test_model_names_are_encoded_per_path_segment(
    open_dashboard: OpenDashboard, browser: Browser
) -> None:
    served = await open_dashboard()
    await browser.navigate(f"{served.url}/dashboard")
    path = await browser.evaluate("window.mlxServeDashboard.modelPath('org/na me:4bit?x#y%')")
    assert path == "org/na%20me%3A4bit%3Fx%23y%25"


async def test_memory_budget_on_a_laptop_screen(
    open_dashboard: OpenDashboard, tmp_path: Path
) -> None:
    """A budget that holds about two models, at 1024 px: the bar fills per loaded model,
    evictions say why, a pinned model is marked and never evicted, one that never fits is
    refused, nothing overflows."""
    served = await open_dashboard(memory_budget="3.5GiB")
    async with Browser.launch(width=1024, height=768) as browser:
        await browser.navigate(f"{served.url}/dashboard{FAST}")
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
        # Planned memory before any load: estimates ("~"), or "≥" without the weights (its
        # type's overhead only).
        plan = "querySelector('td:nth-child(4) .mem-plan').textContent"
        assert await browser.evaluate(f"{row('qwen')}.{plan}") == "plan ~704 MiB"
        assert await browser.evaluate(f"{row('whisper')}.{plan}") == "plan ≥320 MiB"

        # qwen and llama fit together; qwen-vl does not fit beside both: qwen (least recently
        # used) is evicted for it; the pinned minilm then pushes llama out, and stays.
        for name in ("qwen", "llama", "qwen-vl"):
            assert await served.chat(name) == 200
        await served.run.load("minilm")
        await wait_status(browser, "minilm", "loaded")
        assert set(served.run.supervisor.loaded()) == {"qwen-vl", "minilm"}
        await browser.wait_for(
            "[...document.querySelectorAll('#budget-bar span')].map(s => s.dataset.model)"
            ".join() === 'qwen-vl,minilm'",
            what="one bar segment per loaded model",
        )
        evicted = await event_text(browser, "model.evicted", "qwen")
        assert evicted.startswith("evicted for qwen-vl: memory, needed 1.81 GiB, free "), evicted
        await browser.wait_for(
            f"{text_of('#last-eviction')}.startsWith({q(f'evicted {LLAMA} for minilm ')})",
            what="the last eviction",
        )
        last_eviction = await browser.evaluate(text_of("#last-eviction"))
        assert ": memory, needed 250 MiB, free " in last_eviction, last_eviction
        # Loaded: measured now, and planned from this load's peak (no "~" any more).
        cell = f"{row('qwen-vl')}.querySelector('td:nth-child(4)')"
        await browser.wait_for(f"{cell}.firstChild.textContent === '2.00 GiB'", what="measured")
        assert await browser.evaluate(f"{cell}.lastChild.textContent") == "plan 2.00 GiB"
        footprint = await event_text(browser, "model.footprint", "qwen-vl")
        assert footprint == "measured 2.00 GiB · estimated 1.81 GiB (+10%) · planned 2.00 GiB"
        # A model planned above the whole budget is refused before any start.
        assert await served.chat("broken") == 507
        refused = await event_text(browser, "model.refused", "broken")
        # (needs: its weights, KV cache and the text overhead learned so far: about 4.3 GiB)
        assert refused.startswith("refused: needs 4."), refused
        assert " GiB of a 3.50 GiB budget · " in refused, refused
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
        assert title.startswith(f"evicted {LLAMA} for minilm ")
        await settle(browser)
        check_png(await browser.screenshot(tmp_path / "dashboard-budget.png", full_page=True))

        # A budget lowered below what the pinned model needs (a config reload): qwen-vl is
        # given back, the pinned minilm stays, and the budget shows as overrun.
        await served.reload(memory_budget="200MiB")
        await served.run.event("model.unloaded", "qwen-vl")
        await browser.wait_for(
            "document.getElementById('budget-bar').classList.contains('over')", what="over"
        )
        assert "over by " in await browser.evaluate(text_of("#budget-text"))
        assert served.run.supervisor.loaded() == ["minilm"]
        assert unexpected(browser.errors, 507) == []


def spare_chip(kind: str) -> str:
    """JS expression: the chip of the spare of ``kind`` in the spares strip (or null)."""
    return f"document.querySelector('#spares-list .spare[data-type={q(kind)}]')"


async def test_spares_beside_the_budget_on_a_laptop_screen(
    open_dashboard: OpenDashboard, tmp_path: Path
) -> None:
    """Pre-warmed spares (``server.prewarm``, turned on and off by config reloads) at
    1024 px: a chip per spare under the budget strip (type, pid, RSS or "starting"), what
    they reserve of the budget, never a row of the models table; a load adopts one; their
    failures; nothing overflows."""
    served = await open_dashboard(memory_budget="3.5GiB")
    launcher = served.launcher
    async with Browser.launch(width=1024, height=768) as browser:
        await browser.navigate(f"{served.url}/dashboard{FAST}")
        await wait_status(browser, "qwen", "unloaded")
        assert await browser.evaluate("document.getElementById('spares').hidden")

        # The pool starts one spare at a time: stt first (kinds in order), ready at once;
        # then text, held "importing" until the test lets it listen.
        text_importing = launcher.hold("spare-text")
        await served.reload(prewarm=["text", "stt"])
        stt = (await served.run.event("spare.ready", "stt")).data["pid"]
        text = (await served.run.event("spare.starting", "text")).data["pid"]
        await browser.wait_for(
            "!document.getElementById('spares').hidden && "
            "document.querySelectorAll('#spares-list .spare').length === 2",
            what="two spare chips",
        )
        assert await browser.evaluate(f"{spare_chip('text')}.dataset.s") == "starting"
        assert await browser.evaluate(f"{spare_chip('text')}.textContent") == (
            f"textpid {text}starting"
        )
        # The default overhead of each kind until its spare is measured.
        assert await browser.evaluate(text_of("#spares-note")) == "448 MiB reserved from the budget"
        served.machine.spare_rss[text] = 86 * MiB
        text_importing.set()
        await browser.wait_for(f"{spare_chip('text')}.dataset.s === 'spare'", what="a ready spare")
        chip = await browser.evaluate(
            f"[...{spare_chip('text')}.children].map(c => c.textContent).filter(Boolean)"
        )
        assert chip == ["text", f"pid {text}", "86.0 MiB"]
        # The footprint sampler's round (every 5 s), now: stt is measured too.
        served.machine.spare_rss[stt] = 250 * MiB
        served.run.supervisor.spares.sample()
        served.run.supervisor.refresh_limits()
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
        ) == [m.name for m in MODELS]
        assert not await browser.evaluate(
            f"document.getElementById('models').textContent.includes('pid {text}')"
        )
        assert (await event_text(browser, "spare.starting", "stt")).startswith("starting · pid ")
        ready = await event_text(browser, "spare.ready", "text")
        assert ready.startswith("ready in ") and f"· 86.0 MiB · pid {text}" in ready, ready

        # Every kind: the strip wraps, nothing overflows.
        vision_importing = launcher.hold("spare-vision")
        await served.reload(prewarm=True)
        await served.run.event("spare.starting", "vision")
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
        vision_importing.set()
        await served.run.event("spare.ready", "vision")

        # A load of a text model adopts the text spare: same pid, "from spare" in the log.
        launcher.hold("spare-text")  # its replacement stays "starting"
        assert await served.chat("qwen") == 200
        await wait_status(browser, "qwen", "loaded")
        taken = await event_text(browser, "spare.taken", "text")
        qwen_path = served.models["qwen"]["path"]
        assert taken == f"taken by {qwen_path} · pid {text}", taken
        loaded = await event_text(browser, "model.loaded", "qwen")
        assert loaded.endswith(f"· pid {text} · from spare"), loaded
        await browser.wait_for(
            f"{spare_chip('text')}?.textContent.includes('pid {text}') !== true",
            what="the taken spare gone",
        )

        # A spare that dies is a warning while the pool retries (an error once it gives up).
        tts = launcher.by_pid(served.spare_pid("tts"))
        assert tts is not None
        tts.log("Traceback (most recent call last):\n  ...\nMemoryError")
        tts.exit(1)
        failed = await event_text(browser, "spare.failed", "tts")
        assert failed == "the spare exited with code 1", failed
        li = "document.querySelector('#events li[data-kind=\"spare.failed\"]')"
        assert not await browser.evaluate(f"{li}.classList.contains('is-error')")
        assert "Traceback" in await browser.evaluate(f"{li}.querySelector('.ev-text').title")
        served.run.emit(
            "spare.failed", "tts", reason="not ready after 120s", failures=3, gave_up=True,
            log_tail="",
        )  # fmt: skip
        await browser.wait_for(
            f"{li}.querySelector('.ev-text').textContent === "
            "'not ready after 120s · 3 in a row · gave up' && "
            f"{li}.classList.contains('is-error')",
            what="the given-up spare",
        )

        # The spares stop (prewarm turned off): the strip goes away.
        await served.reload(prewarm=None)
        await browser.wait_for("document.getElementById('spares').hidden", what="no spares")
        stopped = await event_text(browser, "spare.stopped", "vision")
        assert stopped.startswith("stopped (not wanted any more) · pid "), stopped
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
    open_dashboard: OpenDashboard, tmp_path: Path
) -> None:
    """Every panel filled (a budget, an eviction, two spares, long model names, requests, a
    crash with its log): at 1400, 1024 and 390 px nothing scrolls sideways, leaves the
    viewport, overlaps or spills, and every Load/Unload button is wholly visible. The models
    table drops the columns shown elsewhere as it narrows, and is cards on a phone."""
    served = await open_dashboard(history_s=600, memory_budget="3.5GiB")
    for name in ("qwen", "llama", "qwen", "qwen-vl", "qwen-vl", "llama"):
        assert await served.chat(name) == 200
    # A crash of the pinned minilm, with a long line in its log.
    await served.run.load("minilm")
    minilm = served.run.worker("minilm")
    minilm.log("loading weights\n" + "x" * 300)
    minilm.exit(-signal.SIGKILL)
    await served.run.event("worker.crashed", "minilm")
    # A ready text spare and an embedding one still starting (the pool starts them in turn).
    await served.reload(prewarm=["text"])
    text_spare = await served.run.event("spare.ready", "text")
    served.machine.spare_rss[text_spare.data["pid"]] = 86 * MiB
    served.launcher.hold("spare-embedding")
    await served.reload(prewarm=["text", "embedding"])
    await served.run.event("spare.starting", "embedding")
    async with Browser.launch(width=1400, height=900) as browser:
        await browser.navigate(f"{served.url}/dashboard{FAST}")
        await wait_status(browser, LLAMA, "loaded")
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
    open_dashboard: OpenDashboard, browser: Browser
) -> None:
    """The server's last ten minutes come with the first stats (``?history=``), once; the
    chart stacks each model's RSS on an axis scaled to them (3 GiB here, on a 32 GiB
    machine) with the budget line when it is in range; "System" is the old view."""
    served = await open_dashboard(history_s=600)
    assert await served.chat("qwen") == 200
    assert await served.chat("qwen-vl") == 200  # evicts qwen: one model at a time
    await browser.navigate(f"{served.url}/dashboard{FAST}")
    await browser.wait_for("window.mlxServeDashboard.samples.length >= 100", what="the history")
    # The first stats brought ten minutes back (the page has been open for a second).
    oldest = await browser.evaluate("Date.now() - window.mlxServeDashboard.samples[0].t")
    assert 9 * 60_000 < oldest < 11 * 60_000
    assert served.traffic.history_requests == 1
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
    assert served.traffic.history_requests == 1

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
    open_dashboard: OpenDashboard, browser: Browser
) -> None:
    served = await open_dashboard(history_s=300, memory_budget="3.5GiB")
    await browser.navigate(f"{served.url}/dashboard{FAST}")
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
    open_dashboard: OpenDashboard, browser: Browser
) -> None:
    """A crash reads as the event's reason ("killed by SIGKILL"), or what its exit code says
    when it has none (the shape of servers before crash reasons); the worker's last log lines
    (this start's, not blank) are under it, folded, never an unrelated line in place of the
    reason. The events are emitted as the supervisor emits a crash, with tails of every
    shape."""
    served = await open_dashboard()
    await browser.navigate(f"{served.url}/dashboard{FAST}")
    await browser.wait_for(LIVE, what="live")
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
    served.run.emit(
        "worker.crashed", "qwen", exit_code=-9, signal="SIGKILL", reason="killed by SIGKILL",
        pid=4242, log_tail=tail,
    )  # fmt: skip
    served.run.emit("worker.crashed", LLAMA, exit_code=-11, log_tail="")  # no reason
    served.run.emit("worker.crashed", "minilm", exit_code=3, log_tail="Traceback...\nValueError")
    assert await event_text(browser, "worker.crashed", "qwen") == "killed by SIGKILL · pid 4242"
    assert await event_text(browser, "worker.crashed", LLAMA) == "killed by SIGSEGV"
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
    assert await browser.evaluate(f"{crash_li(LLAMA)}.querySelector('details')") is None
    assert await browser.evaluate(f"{crash_li('minilm')}.classList.contains('is-error')")
    # Opened folds stay open while new events arrive (the rows are kept, not rebuilt).
    served.run.emit("memory.ok", available_bytes=GiB, total_bytes=32 * GiB)
    await wait_event(browser, "memory.ok")
    assert await browser.evaluate(f"{details}.open") is True
    assert unexpected(browser.errors) == []


async def test_real_server_history_and_a_killed_worker(
    start_server: StartServer, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole server, ``serve()``, with a fake worker as a real process: it samples memory
    from startup, serves the samples with ``?history=`` (400 for a bad duration), the page
    starts with them; a worker killed with SIGKILL reads as such in the log, with its log
    lines folded under it."""
    monkeypatch.setattr(management, "HISTORY_INTERVAL", 0.1)
    run = await start_server(
        {"a": {"path": "fake/a"}}, drivers={ModelType.TEXT: FakeWorkerDriver()}
    )
    async with run.http.post("/api/models/a/load", json={}) as r:
        assert r.status == 200, await r.text()

    async def history(value: str) -> tuple[int, Any]:
        async with run.http.get("/api/stats", params={"history": value}) as r:
            return r.status, await r.json()

    async def samples_with_a() -> list[dict[str, Any]] | None:
        status, body = await history("1m")
        assert status == 200, body
        samples: list[dict[str, Any]] = body["history"]["samples"]
        return samples if sum("a" in s["models"] for s in samples) >= 5 else None

    samples = await eventually(samples_with_a, 20, "samples of the loaded model")
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
