"""The management API, metrics, events and stats against the real server (fake workers where
the model does not matter, a real mlx_lm worker where it does)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlx_serve.config import ModelType
from mlx_serve.testing import FakeWorkerDriver
from tests.conftest import eventually
from tests.integration.conftest import Running, StartServer

#: Every state-changing management call must be JSON (see router/origin.py).
JSON = {"Content-Type": "application/json"}

pytestmark = pytest.mark.slow

FAKE = {ModelType.TEXT: FakeWorkerDriver()}
MSGS = [{"role": "user", "content": "hi"}]


async def fake_server(start_server: StartServer, **server: Any) -> Running:
    return await start_server(
        {
            "a": {"path": "fake/a", "aliases": ["alpha"]},
            "b": {"path": "fake/b", "args": {"token_delay": 0.02}},
            "org/c:latest": {"path": "fake/c"},
        },
        drivers=FAKE,
        **server,
    )


async def get_json(run: Running, path: str) -> tuple[int, Any]:
    async with run.http.get(path) as r:
        return r.status, await r.json()


async def post_json(run: Running, path: str, body: Any = None) -> tuple[int, Any]:
    async with run.http.post(path, json={} if body is None else body) as r:
        return r.status, await r.json()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_models_list_load_and_unload(start_server: StartServer) -> None:
    run = await fake_server(start_server)
    status, data = await get_json(run, "/api/models")
    assert status == 200
    entry = {m["name"]: m for m in data["models"]}["a"]
    assert entry["status"] == "unloaded" and entry["pid"] is None and entry["requests"] == 0

    status, data = await post_json(run, "/api/models/alpha/load", {"keep_alive": -1})
    assert status == 200 and data["status"] == "loaded" and data["name"] == "a"
    _, data = await get_json(run, "/api/models")
    entry = {m["name"]: m for m in data["models"]}["a"]
    assert entry["status"] == "loaded" and entry["pid"] and entry["port"]
    assert entry["keep_alive_s"] == -1 and entry["rss_bytes"] > 0 and entry["loaded_at"]

    # A name with a slash and a colon routes fine.
    status, data = await post_json(run, "/api/models/org/c:latest/load")
    assert status == 200 and data["name"] == "org/c:latest"

    status, data = await post_json(run, "/api/models/org/c:latest/unload")
    assert status == 200 and data["status"] == "unloaded"
    assert run.supervisor.workers["org/c:latest"].pid is None


async def test_load_streams_progress(start_server: StartServer) -> None:
    run = await fake_server(start_server)
    async with run.http.post("/api/models/a/load?stream=true", json={}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in r.content if line.strip()]
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "queued" and statuses[-1] == "success"
    assert "loading" in statuses and "loaded" in statuses


async def test_unload_waits_for_in_flight_unless_forced(start_server: StartServer) -> None:
    run = await fake_server(start_server)
    stream = asyncio.create_task(run.stream("b", max_tokens=40))
    await eventually(lambda: run.supervisor.workers["b"].inflight == 1, what="b in flight")
    status, _ = await post_json(run, "/api/models/b/unload")
    assert status == 200
    code, lines = await stream
    assert code == 200 and lines[-1] == b"[DONE]", "a graceful unload never cuts a stream"

    # Forced while the stream runs (its first event came back): the client gets an SSE error.
    body = {"model": "b", "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
    lines = []
    async with run.http.post("/v1/chat/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            lines.append(line[6:].strip())
            if len(lines) == 1:
                status, data = await post_json(run, "/api/models/b/unload?force=true")
                assert status == 200 and data["forced"] is True
    assert lines[-1] != b"[DONE]"
    assert "force-unloaded" in json.loads(lines[-1])["error"]["message"]


async def test_bad_names(start_server: StartServer) -> None:
    run = await fake_server(start_server)
    for name in ("../x", "a/../../etc", "%2Fetc%2Fpasswd"):
        async with run.http.delete(f"/api/models/{name}/files", headers=JSON) as r:
            assert r.status in (400, 404), name
            assert "error" in await r.json()
    async with run.http.delete("/api/models/..%2Fx/files", headers=JSON) as r:
        assert r.status == 400
    status, data = await post_json(run, "/api/models/nope/load")
    assert status == 404 and data["error"]["code"] == "model_not_found"


async def test_delete_is_refused_while_loaded(start_server: StartServer) -> None:
    run = await fake_server(start_server)
    await post_json(run, "/api/models/a/load")
    async with run.http.delete("/api/models/a/files", headers=JSON) as r:
        assert r.status == 409 and (await r.json())["error"]["code"] == "model_loaded"


async def test_events_query_and_follow(start_server: StartServer) -> None:
    run = await fake_server(start_server)
    follow = await run.http.get("/api/events?follow=true&model=a")
    assert follow.status == 200
    assert (await run.chat("a"))[0] == 200
    kinds: list[str] = []
    while "request" not in kinds:
        line = await asyncio.wait_for(follow.content.readline(), 10)
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            assert event["model"] == "a"
            kinds.append(event["kind"])
    follow.close()
    assert "model.loaded" in kinds
    _, data = await get_json(run, "/api/events?type=worker&model=a")
    assert data["events"] and all(e["kind"].startswith("worker") for e in data["events"])
    status, _ = await get_json(run, "/api/events?since=yesterday")
    assert status == 400
    # The same events are on disk, as JSON lines (written by a thread, so shortly after).
    path = run.supervisor.data_dir / "events.jsonl"

    def on_disk() -> bool:
        lines = path.read_text().splitlines() if path.exists() else []
        return any(json.loads(line)["kind"] == "model.loaded" for line in lines)

    await eventually(on_disk, what="model.loaded in events.jsonl")


async def test_stats_and_metrics_move_with_requests(start_server: StartServer) -> None:
    run = await fake_server(start_server)
    async with run.http.get("/metrics") as r:
        before = samples(await r.text())
    for _ in range(3):
        assert (await run.chat("a", max_tokens=4))[0] == 200
    assert (await run.chat("b", max_tokens=4))[0] == 200  # a swap
    async with run.http.get("/metrics") as r:
        assert r.status == 200
        after = samples(await r.text())
    key = (
        "mlx_serve_requests_total",
        (("endpoint", "/v1/chat/completions"), ("model", "a"), ("status", "200")),
    )
    assert after[key] - before.get(key, 0) == 3
    assert after[("mlx_serve_swaps_total", ())] >= 1
    assert after[("mlx_serve_loads_total", (("model", "b"),))] == 1
    assert after[("mlx_serve_time_to_first_token_seconds_count", (("model", "a"),))] == 3
    assert after[("mlx_serve_loaded_models", ())] == 1
    assert after[("mlx_serve_system_available_memory_bytes", ())] > 0
    assert after[("mlx_serve_worker_rss_bytes", (("model", "b"),))] > 0

    status, stats = await get_json(run, "/api/stats")
    assert status == 200 and stats["version"] and stats["uptime_s"] >= 0
    assert (
        stats["memory"]["system_available_bytes"] > 0 and stats["memory"]["workers_rss_bytes"] > 0
    )
    a = {m["name"]: m for m in stats["models"]}["a"]
    assert a["metrics"]["count"] == 3 and a["metrics"]["ttft_p50_s"] is not None
    assert stats["events"]


async def test_memory_guard_refuses_a_model_that_cannot_fit(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_serve import hub

    monkeypatch.setattr(hub, "estimated_size_bytes", lambda *_a, **_k: 10**15)
    run = await fake_server(start_server)
    status, data = await post_json(run, "/api/models/a/load")
    assert status == 507 and data["error"]["code"] == "insufficient_memory"
    status, data = await run.chat("a")
    assert status == 507 and "exceed the memory available" in data["error"]["message"]
    assert run.supervisor.workers["a"].pid is None


async def test_management_is_behind_the_api_key(start_server: StartServer) -> None:
    run = await fake_server(start_server, api_key="k3y")
    for path in ("/api/models", "/api/stats", "/api/events", "/metrics", "/api/models/a"):
        async with run.http.get(path) as r:
            assert r.status == 401, path
    async with run.http.post("/api/models/a/load", json={}) as r:
        assert r.status == 401
    async with run.http.get("/api/stats", headers={"Authorization": "Bearer k3y"}) as r:
        assert r.status == 200
    async with run.http.get("/") as r:  # the page itself is static and asks for the key
        assert r.status == 200 and "text/html" in r.headers["Content-Type"]


async def test_show_a_local_model(start_server: StartServer, tiny_models: dict[str, Path]) -> None:
    run = await start_server({"tiny": {"path": str(tiny_models["a"])}})
    status, data = await get_json(run, "/api/models/tiny")
    assert status == 200, data
    assert data["config"]["path"] == str(tiny_models["a"])
    details = data["details"]
    assert details["source"] == "local" and details["size_bytes"] > 0
    assert details["architecture"] and details["has_tokenizer"] and details["has_chat_template"]


async def test_pull_from_a_local_fake_hub_then_load_and_answer(
    start_server: StartServer,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlx_serve.testing.fake_hub import FakeHub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    async with FakeHub({"tiny-org/tiny-llama": tiny_models["a"]}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        run = await start_server({"pulled": {"path": "tiny-org/tiny-llama"}})
        async with run.http.post("/api/pull", json={"model": "tiny-org/tiny-llama"}) as r:
            assert r.status == 200
            lines = [json.loads(line) async for line in r.content if line.strip()]
        statuses = [line["status"] for line in lines]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success", statuses
        weights = [
            x
            for x in lines
            if x.get("file") == "model.safetensors" and x["status"] == "downloading"
        ]
        assert weights and weights[-1]["completed"] == weights[-1]["total"] > 0
        async with run.http.post("/api/pull", json={"model": "../etc"}) as r:
            assert r.status == 400
        async with run.http.post("/api/pull", json={"model": "nobody/nothing"}) as r:
            assert r.status == 404
    # The hub is gone: the model now loads from the cache, offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, data = await run.chat("pulled", max_tokens=2)
    assert status == 200, data
    _, shown = await get_json(run, "/api/models/pulled")
    assert shown["details"]["source"] == "hub" and shown["details"]["cached"]
    # Deleting it is refused while loaded, then frees the cache.
    async with run.http.delete("/api/models/pulled/files", headers=JSON) as r:
        assert r.status == 409
    await post_json(run, "/api/models/pulled/unload")
    async with run.http.delete("/api/models/pulled/files", headers=JSON) as r:
        data = await r.json()
        assert r.status == 200 and data["freed_bytes"] > 0
