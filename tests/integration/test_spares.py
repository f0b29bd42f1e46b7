"""Pre-warmed spare workers (``server.prewarm``), with real mlx_lm and embedding workers.

Not timed: what is checked is that a spare is adopted on a load and on a swap, replaced after
use, never shown or counted as a loaded model, that a dead spare costs no request, and that
without ``prewarm`` nothing changes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import ModelType
from mlx_serve.tiny_models.embedding import embedding_model_dir
from tests.integration.conftest import Running, StartServer

pytestmark = pytest.mark.slow


def ready_spare(run: Running, kind: ModelType) -> int | None:
    spare = run.supervisor.spares.spares.get(kind)
    return spare.proc.pid if spare is not None and spare.ready else None


async def spare_ready(run: Running, kind: str, nth: int, timeout: float = 60) -> int:
    """The pid of the ``nth`` spare of ``kind`` to become ready (waiting for it)."""
    event = await run.event("spare.ready", kind, count=nth, timeout=timeout)
    return int(event.data["pid"])


async def stats(run: Running) -> dict[str, Any]:
    async with run.http.get("/api/stats") as r:
        assert r.status == 200
        data: dict[str, Any] = await r.json()
        return data


async def test_text_spares_are_adopted_replaced_and_never_listed_as_models(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    models = {
        "a": {"type": "text", "path": str(tiny_models["a"])},
        "b": {"type": "text", "path": str(tiny_models["b"])},
        "flagged": {"type": "text", "path": str(tiny_models["a"]), "args": {"max_tokens": 64}},
    }
    run = await start_server(models, prewarm=True, startup_timeout="120s")
    first = await spare_ready(run, "text", 1)

    # A spare is not a model: nothing is loaded, /v1/models lists it apart.
    async with run.http.get("/v1/models") as r:
        listing = await r.json()
    assert {m["status"] for m in listing["data"]} == {"unloaded"}
    assert [(s["kind"], s["status"], s["pid"]) for s in listing["spares"]] == [
        ("text", "spare", first)
    ]
    assert run.supervisor.loaded() == []
    body = await stats(run)
    assert body["spares"][0]["rss_bytes"] > 0
    assert body["memory"]["spares_bytes"] > 0

    # The first load adopts the spare: same process.
    status, answer = await run.chat("a", max_tokens=3)
    assert status == 200, answer
    loaded = run.kinds("model.loaded")[-1]
    assert loaded.data["spare"] is True and loaded.data["pid"] == first

    # ...and a new spare replaces it once the load is done.
    second = await spare_ready(run, "text", 2)
    assert second != first

    # A swap adopts the replacement.
    status, answer = await run.chat("b", max_tokens=3)
    assert status == 200, answer
    loaded = run.kinds("model.loaded")[-1]
    assert loaded.model == "b" and loaded.data["pid"] == second
    assert run.supervisor.workers["a"].pid is None  # swapped out, one at a time as always

    # A spare that dies costs no request: the next load starts cold (or on a new spare).
    third = await spare_ready(run, "text", 3)
    assert third not in (first, second)
    os.kill(third, signal.SIGKILL)
    await run.event("spare.failed", "text")  # the dead spare is dropped
    assert ready_spare(run, ModelType.TEXT) != third
    status, answer = await run.chat("a", max_tokens=3)
    assert status == 200, answer
    assert run.kinds("spare.failed"), "the spare's death was reported"

    # A model started with its own flags cannot use a flag-less spare: it starts cold.
    spare = await spare_ready(run, "text", 4)
    status, answer = await run.chat("flagged", max_tokens=3)
    assert status == 200, answer
    loaded = run.kinds("model.loaded")[-1]
    assert loaded.model == "flagged" and "spare" not in loaded.data
    assert ready_spare(run, ModelType.TEXT) == spare, "the spare was left alone"


async def test_embedding_spare_loads_the_model_it_is_given(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    models = {
        "chat": {"type": "text", "path": str(tiny_models["a"])},
        "embed": {"type": "embedding", "path": str(embedding_model_dir())},
    }
    run = await start_server(models, prewarm=["embedding"], startup_timeout="120s")
    spare = await spare_ready(run, "embedding", 1, timeout=90)
    assert ready_spare(run, ModelType.TEXT) is None, "only the kinds asked for"
    async with run.http.post("/v1/embeddings", json={"model": "embed", "input": "cat"}) as r:
        body = await r.json()
        assert r.status == 200, body
    assert len(body["data"][0]["embedding"]) == 384
    loaded = run.kinds("model.loaded")[-1]
    assert loaded.data["spare"] is True and loaded.data["pid"] == spare
    assert {"import_s", "load_s"} <= set(loaded.data)


async def test_without_prewarm_there_are_no_spares(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server({"a": {"type": "text", "path": str(tiny_models["a"])}})
    status, _ = await run.chat("a", max_tokens=2)
    assert status == 200
    assert run.supervisor.spares.spares == {}
    assert "spare" not in run.kinds("model.loaded")[-1].data
    assert (await stats(run))["spares"] == []
