"""First run with a model that is not downloaded: the real server, real workers, and a fake
hub for ``server.auto_pull`` (no network: the hub is :class:`FakeHub` on localhost)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.testing.fake_hub import FakeHub
from tests.conftest import eventually
from tests.integration.conftest import Running, StartServer

pytestmark = pytest.mark.slow

REPO = "first-run/tiny-llama"
#: No file check, process or probe is slow: a refusal comes well within this.
AT_ONCE_S = 2.0


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face home and cache of this test's own, empty."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cache = tmp_path.resolve() / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
async def hub(
    tiny_models: dict[str, Path], hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FakeHub]:
    """The fake hub serving the tiny model as ``REPO``, with downloads allowed."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    async with FakeHub({REPO: tiny_models["a"]}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def assert_nothing_started(run: Running, name: str) -> None:
    worker = run.supervisor.workers[name]
    assert worker.pid is None and worker.proc is None, "no worker process was started"
    assert [e for e in run.kinds("worker.state") if e.model == name] == []
    assert (worker.failures, worker.retry_at) == (0, 0.0), "not a crash: no backoff"


async def timed_chat(run: Running, model: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, body = await run.chat(model)
    return status, body, time.monotonic() - started


async def test_a_model_that_is_not_downloaded_is_refused_at_once(
    start_server: StartServer, hf_cache: Path
) -> None:
    run = await start_server({"first": {"path": REPO}})  # the real text driver
    for _ in range(2):  # the second answer is the same: no crash-loop backoff
        status, body, took = await timed_chat(run, "first")
        assert status == 404, body
        error = body["error"]
        assert error["code"] == "model_not_downloaded"
        assert error["message"].startswith(f"model 'first' ({REPO}) is not downloaded")
        assert f"run: mlx-serve models pull {REPO}" in error["message"]
        assert "auto_pull" in error["message"] and str(hf_cache) in error["message"]
        assert "Traceback" not in error["message"]
        assert took < AT_ONCE_S, f"answered after {took:.1f}s"
    assert_nothing_started(run, "first")
    missing = run.kinds("model.missing_files")
    assert len(missing) == 2 and missing[0].data["repo"] == REPO
    async with run.http.get("/v1/models/first") as r:
        entry = await r.json()
    assert entry["status"] == "unloaded" and "error" not in entry


async def test_a_missing_local_directory_is_refused_at_once(
    start_server: StartServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "models" / "mine"
    shutil.copytree(tiny_models["a"], model)
    run = await start_server({"mine": {"path": str(model)}})
    shutil.rmtree(model)  # gone after the config was loaded
    status, body, took = await timed_chat(run, "mine")
    assert status == 404, body
    assert body["error"]["code"] == "model_files_missing"
    assert f"the local directory {model} does not exist" in body["error"]["message"]
    assert took < AT_ONCE_S
    assert_nothing_started(run, "mine")


async def test_auto_pull_downloads_on_first_use_then_serves(
    start_server: StartServer, hub: FakeHub
) -> None:
    hub.slow_bytes_per_s = 200_000  # ~3 s for the tiny model: long enough to watch
    run = await start_server({"first": {"path": REPO}}, auto_pull=True)
    worker = run.supervisor.workers["first"]
    seen: list[dict[str, Any]] = []

    def downloading() -> bool:
        if worker.pull_progress is not None:
            seen.append(dict(worker.pull_progress))
        return any((p.get("completed_bytes") or 0) > 0 for p in seen)

    request = asyncio.create_task(run.chat("first", max_tokens=2))
    await eventually(downloading, timeout=30, what="the pull to make progress")
    assert run.supervisor.scheduler.waiting("first") == 1, "the request waits in the queue"
    assert worker.pid is None, "no worker before the files are there"
    # Status views show it (the dashboard and `mlx-serve status` read /api/stats).
    async with run.http.get("/api/stats") as r:
        shown = {m["name"]: m for m in (await r.json())["models"]}["first"]
    assert shown["pull"]["repo"] == REPO and shown["waiting"] == 1, shown
    async with run.http.get("/v1/models/first") as r:
        assert (await r.json())["pull"]["repo"] == REPO
    status, body = await request
    assert status == 200, body

    progress = seen[-1]
    assert progress["repo"] == REPO and progress["total_bytes"] > 0
    assert 0 < progress["completed_bytes"] <= progress["total_bytes"]
    pulls = [e.data for e in run.kinds("model.pull") if e.model == "first"]
    statuses = [p["status"] for p in pulls]
    assert statuses[:3] == ["started", "pulling manifest", "downloading"], statuses
    assert statuses[-1] == "success" and pulls[-1]["downloaded_bytes"] > 0
    kinds = [e.kind for e in run.events if e.model == "first"]
    assert kinds.index("model.loaded") > max(i for i, k in enumerate(kinds) if k == "model.pull")
    assert worker.pull_progress is None
    assert len(hub.file_gets("model.safetensors")) == 1
    # Now it is in the cache: the next request is served without another pull.
    assert (await run.chat("first", max_tokens=2))[0] == 200
    assert len(hub.file_gets("model.safetensors")) == 1


async def test_a_failed_auto_pull_fails_the_request_clearly(
    start_server: StartServer, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: no network
    run = await start_server({"first": {"path": REPO}}, auto_pull=True)
    status, body, took = await timed_chat(run, "first")
    assert status == 503, body
    error = body["error"]
    assert error["code"] == "hub_offline"
    assert error["message"].startswith(f"model 'first' ({REPO}) is not downloaded, and")
    assert "HF_HUB_OFFLINE" in error["message"]
    assert took < AT_ONCE_S
    assert_nothing_started(run, "first")
    assert [e.data["status"] for e in run.kinds("model.pull")] == ["started", "error"]

    # Online, but the hub has no such repo: the hub's answer, as a 404.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    async with FakeHub({}) as empty:
        monkeypatch.setenv("HF_ENDPOINT", empty.url)
        status, body = await run.chat("first")
    assert status == 404, body
    assert body["error"]["code"] == "repo_not_found"
    assert_nothing_started(run, "first")
