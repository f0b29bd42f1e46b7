"""Memory-aware residency with real workers: a voice turn (STT -> chat -> TTS) on tiny models.

Budgets are derived from the footprints the server itself measured, in MiB, so the tiny
models contend exactly as big ones would on a laptop: first a budget that fits all three (warm
turns start nothing), then one that fits any two (the least recently used idle model goes,
never a busy one), then one smaller than a single model (507 before any worker starts).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile
import yaml

from mlx_serve.supervisor.states import RESIDENT
from mlx_serve.tiny_models.audio import build_stt_model, build_tts_model
from tests.conftest import eventually
from tests.integration.conftest import Running, StartServer

pytestmark = pytest.mark.slow

MiB = 2**20


@pytest.fixture(scope="session")
def voice_models(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("voice")
    return {
        "hear": {"type": "stt", "path": str(build_stt_model(root / "stt"))},
        "chat": {"type": "text", "path": str(tiny_models["a"])},
        "speak": {"type": "tts", "path": str(build_tts_model(root / "tts"))},
    }


def wav_bytes(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, 0.2 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buf.getvalue()


async def voice_turn(run: Running, audio: bytes) -> None:
    form = aiohttp.FormData()
    form.add_field("file", audio, filename="turn.wav", content_type="audio/wav")
    form.add_field("model", "hear")
    async with run.http.post("/v1/audio/transcriptions", data=form) as r:
        assert r.status == 200, await r.text()
    status, body = await run.chat("chat", max_tokens=4, temperature=0)
    assert status == 200, body
    async with run.http.post("/v1/audio/speech", json={"model": "speak", "input": "Hi."}) as r:
        assert r.status == 200, await r.text()
        await r.read()


def resident(run: Running) -> set[str]:
    return {n for n, w in run.supervisor.workers.items() if w.state in RESIDENT}


async def planned(run: Running) -> dict[str, int]:
    async with run.http.get("/api/models") as r:
        models = (await r.json())["models"]
    return {m["name"]: m["memory"]["planned_bytes"] for m in models}


async def reload_with_budget(run: Running, budget: str) -> None:
    path = run.supervisor.config.source
    assert path is not None
    config = yaml.safe_load(path.read_text())
    config["server"]["memory_budget"] = budget
    path.write_text(yaml.safe_dump(config))
    async with run.http.post("/api/reload", json={}) as r:
        result = await r.json()
        assert r.status == 200 and "memory_budget" in result["server_changed"], result


async def test_voice_turns_under_a_budget(
    start_server: StartServer, voice_models: dict[str, dict[str, Any]]
) -> None:
    run = await start_server(voice_models, memory_budget="90%", watch_config=False)
    audio = wav_bytes()

    # 1. A budget that fits all three: after the cold turn, warm turns start no worker.
    await voice_turn(run, audio)
    assert resident(run) == {"hear", "chat", "speak"}
    await voice_turn(run, audio)
    starts = len(run.kinds("model.loaded"))
    for _ in range(2):
        await voice_turn(run, audio)
    assert len(run.kinds("model.loaded")) == starts == 3, "warm turns started a worker"
    assert run.kinds("model.evicted") == []

    # Every model was measured; /v1/models and /api/models show estimate and measurement.
    async with run.http.get("/v1/models") as r:
        entries = {m["id"]: m for m in (await r.json())["data"]}
    for name in voice_models:
        memory = entries[name]["memory"]
        assert memory["estimate_bytes"] > 0 and memory["measured_bytes"] > 0, memory
    sizes = await planned(run)

    # 2. A budget that fits any two but not three: the least recently used idle one goes.
    budget = sum(sizes.values()) - min(sizes.values()) // 2
    seen = run.mark()
    await reload_with_budget(run, str(budget))
    await run.event("model.unloaded", after=seen, timeout=30)  # one model given back
    assert resident(run) == {"chat", "speak"}, "hear was the least recently used"
    assert run.kinds("model.evicted")[-1].data["reason"] == "over_budget"

    # A long generation keeps "chat" busy; it is the least recently *released* model, yet the
    # idle "speak" is the one evicted when "hear" needs room.
    async with run.http.post("/v1/audio/speech", json={"model": "speak", "input": "Hi."}) as r:
        assert r.status == 200
        await r.read()
    streamed = asyncio.create_task(
        run.stream("chat", max_tokens=3000, temperature=0, keep_alive=-1)
    )
    await eventually(lambda: run.supervisor.workers["chat"].inflight > 0, what="chat busy")
    form = aiohttp.FormData()
    form.add_field("file", audio, filename="turn.wav", content_type="audio/wav")
    form.add_field("model", "hear")
    async with run.http.post("/v1/audio/transcriptions", data=form) as r:
        assert r.status == 200, await r.text()
    evicted = run.kinds("model.evicted")[-1].data
    assert run.kinds("model.evicted")[-1].model == "speak"
    assert evicted["reason"] == "memory" and evicted["for_model"] == "hear"
    assert evicted["budget_bytes"] == budget
    assert evicted["needed_bytes"] > evicted["free_bytes"]
    status, lines = await streamed
    assert status == 200 and lines[-1] == b"[DONE]", "the busy model's stream was cut"
    assert resident(run) == {"chat", "hear"}

    # 3. A budget smaller than one model: 507 naming both numbers, no worker started.
    smallest = min(sizes.values())
    await reload_with_budget(run, str(smallest // 2))
    loads = len(run.kinds("model.loaded"))
    async with run.http.post("/v1/audio/speech", json={"model": "speak", "input": "Hi."}) as r:
        body = await r.json()
        assert r.status == 507, body
    message = body["error"]["message"]
    assert str(smallest // 2) in message and "memory budget" in message, message
    assert body["error"]["code"] == "insufficient_memory"
    assert len(run.kinds("model.loaded")) == loads
    async with run.http.get("/api/stats") as r:
        memory = (await r.json())["memory"]
    assert memory["budget_bytes"] == smallest // 2
    assert memory["last_eviction"]["kind"] == "model.evicted"


async def test_pinned_model_survives_and_metrics_show_the_budget(
    start_server: StartServer, voice_models: dict[str, dict[str, Any]]
) -> None:
    models = {name: dict(spec) for name, spec in voice_models.items() if name != "speak"}
    models["chat"]["pin"] = True
    run = await start_server(models, memory_budget="90%", max_loaded_models=1)
    status, body = await run.chat("chat", max_tokens=2)
    assert status == 200, body
    # The pinned model holds the only slot: the other model is refused, not swapped in.
    form = aiohttp.FormData()
    form.add_field("file", wav_bytes(), filename="x.wav", content_type="audio/wav")
    form.add_field("model", "hear")
    async with run.http.post("/v1/audio/transcriptions", data=form) as r:
        body = await r.json()
        assert r.status == 507, body
        assert "pinned" in body["error"]["message"]
    assert resident(run) == {"chat"}
    async with run.http.get("/metrics") as r:
        text = await r.text()
    assert "mlx_serve_memory_budget_bytes" in text
    assert 'mlx_serve_model_memory_planned_bytes{model="chat"}' in text
    assert 'mlx_serve_model_memory_measured_bytes{model="chat"}' in text
