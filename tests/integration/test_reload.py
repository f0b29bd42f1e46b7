"""Hot reload of models.yaml: file edits, /api/reload and SIGHUP; loaded models that did not
change keep their worker (same pid) through every step."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlx_serve.config import ModelType
from mlx_serve.supervisor.events import Event
from mlx_serve.testing import FakeWorkerDriver
from mlx_serve.workers.process import free_port
from tests.conftest import eventually
from tests.integration.conftest import Running, StartServer, cli_server

pytestmark = pytest.mark.slow

FAKE = {ModelType.TEXT: FakeWorkerDriver()}


def write(path: Path, models: dict[str, Any], **server: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump({"server": server, "models": models}))
    tmp.replace(path)  # like an editor that saves by renaming


async def next_reload(run: Running, after: int) -> Event:
    """The reload after the first ``after`` ones (waiting for it if need be)."""
    return await run.event("config.reload", count=after + 1, timeout=15)


async def test_file_edits_apply_without_touching_unchanged_models(
    start_server: StartServer,
) -> None:
    models: dict[str, Any] = {"a": {"path": "fake/a"}, "b": {"path": "fake/b"}}
    run = await start_server(models, drivers=FAKE)
    source = run.supervisor.config.source
    assert source is not None
    server = run.supervisor.config.server.model_dump(mode="json", exclude={"data_dir"})
    server["data_dir"] = str(run.supervisor.data_dir)
    assert (await run.chat("a"))[0] == 200
    pid = run.supervisor.workers["a"].pid

    # 1. add a model
    write(source, {**models, "c": {"path": "fake/c"}}, **server)
    event = await next_reload(run, 0)
    assert event.data["status"] == "ok" and event.data["added"] == ["c"]
    assert (await run.chat("c"))[0] == 200  # swaps a out (max_loaded_models: 1) ...
    assert (await run.chat("a"))[0] == 200  # ... and back
    pid = run.supervisor.workers["a"].pid

    # 2. change a model that is not loaded, and a router-only setting of the loaded one
    models = {
        "a": {"path": "fake/a", "aliases": ["alpha"]},
        "b": {"path": "fake/b", "args": {"tokens": 3}},
    }
    write(source, {**models, "c": {"path": "fake/c"}}, **server)
    event = await next_reload(run, 1)
    assert event.data["restarted"] == ["b"] and event.data["updated"] == ["a"]
    assert run.supervisor.workers["a"].pid == pid
    assert (await run.chat("alpha"))[0] == 200  # the new alias works at once
    assert run.supervisor.workers["a"].pid == pid

    # 3. remove a model
    write(source, models, **server)
    event = await next_reload(run, 2)
    assert event.data["removed"] == ["c"]
    assert (await run.chat("c"))[0] == 404
    assert run.supervisor.workers["a"].pid == pid

    # 4. invalid YAML: reported with its line, nothing changes
    source.write_text("models:\n  a: {path: fake/a}\n  b: {path: fake/b, colour: red}\n")
    event = await next_reload(run, 3)
    assert event.data["status"] == "invalid"
    assert f"{source.name}:3" in event.data["error"] and "models.b.colour" in event.data["error"]
    assert (await run.chat("alpha"))[0] == 200
    assert run.supervisor.workers["a"].pid == pid

    # 5. a process-level change to the loaded model restarts it once idle
    write(
        source,
        {"a": {"path": "fake/a", "aliases": ["alpha"], "args": {"tokens": 2}}, "b": models["b"]},
        **server,
    )
    event = await next_reload(run, 4)
    assert event.data["restarted"] == ["a"]
    status, data = await run.chat("alpha")
    assert status == 200 and data["usage"]["completion_tokens"] == 2  # new args in force
    assert run.supervisor.workers["a"].pid != pid


async def test_api_reload_reports_the_diff(start_server: StartServer) -> None:
    run = await start_server({"a": {"path": "fake/a"}}, drivers=FAKE, watch_config=False)
    source = run.supervisor.config.source
    assert source is not None
    server = {"port": run.supervisor.config.server.port, "watch_config": False}
    write(
        source,
        {"a": {"path": "fake/a"}, "z": {"path": "fake/z"}},
        **server,
        idle_timeout="5m",
        host="0.0.0.0",
    )
    async with run.http.post("/api/reload", json={}) as r:
        data = await r.json()
    assert r.status == 200 and "z" in data["added"]
    assert data["restart_needed"] == ["host"] and "idle_timeout" in data["server_changed"]
    assert run.supervisor.config.server.host == "127.0.0.1"  # needs a restart: unchanged
    assert run.supervisor.config.server.idle_timeout == 300
    source.write_text("server: {port: nope}\n")
    async with run.http.post("/api/reload", json={}) as r:
        data = await r.json()
    assert r.status == 422 and data["status"] == "invalid" and "server.port" in data["error"]


async def test_sighup_reloads(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    port = free_port()
    config = tmp_path / "models.yaml"
    server = {"port": port, "data_dir": str(tmp_path / "data")}
    write(config, {"tiny": {"path": str(tiny_models["a"])}}, **server)
    async with cli_server(config, port, tmp_path) as proc:
        # Change the file in place while the watcher is paused by nothing: SIGHUP must reload
        # even if the file watcher were off, so check the event log for the sighup trigger.
        write(
            config,
            {"tiny": {"path": str(tiny_models["a"])}, "more": {"path": str(tiny_models["b"])}},
            **server,
        )
        proc.send_signal(signal.SIGHUP)
        events_file = tmp_path / "data" / "events.jsonl"

        def reloaded_by_sighup() -> bool:
            return events_file.exists() and '"trigger":"sighup"' in events_file.read_text()

        await eventually(reloaded_by_sighup, timeout=20, what="a SIGHUP reload event")
        assert proc.poll() is None


async def test_reload_can_turn_the_api_key_on(start_server: StartServer) -> None:
    run = await start_server({"a": {"path": "fake/a"}}, drivers=FAKE, watch_config=False)
    source = run.supervisor.config.source
    assert source is not None
    port = run.supervisor.config.server.port
    assert (await run.chat("a"))[0] == 200
    write(source, {"a": {"path": "fake/a"}}, port=port, watch_config=False, api_key="new-key")
    async with run.http.post("/api/reload", json={}) as r:
        assert r.status == 200  # no key was needed when the request arrived
    assert (await run.chat("a"))[0] == 401
    async with run.http.get("/api/stats", headers={"Authorization": "Bearer new-key"}) as r:
        assert r.status == 200
