"""Ollama's API through the official ``ollama`` Python client, against one real server.

The models: a real ``mlx_lm`` text model (``real``) and the real embedding model (``embed``);
fake workers registered as *vision* models (so a vision model's image parts can be seen):
``echo`` answers with the OpenAI body it received (what the dialect translated), ``caller``
calls a tool, ``plain`` streams ``tok0 tok1 ...``, ``crasher`` dies after two tokens;
``victim`` is a copy of a model in a temporary directory, never loaded, for deletion.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ollama
import pytest
import pytest_asyncio

from mlx_serve.config import ModelType
from mlx_serve.supervisor.states import WorkerState
from mlx_serve.testing import FakeWorkerDriver
from mlx_serve.tiny_models.embedding import embedding_model_dir
from tests.integration.conftest import Running, server_factory

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

JSON = {"Content-Type": "application/json"}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}"


def png_base64() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def fake_model_dir(root: Path) -> Path:
    """A directory the fake workers are "loaded" from: a config and a chat template that
    mentions tools (what /api/show reads)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "fakearch"}))
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": TOOL_TEMPLATE}))
    return root


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> AsyncIterator[Running]:
    root = tmp_path_factory.mktemp("ollama")
    fake_dir = str(fake_model_dir(root / "fake"))
    victim = shutil.copytree(tiny_models["a"], root / "victim")
    server_dir = root / "server"
    server_dir.mkdir()
    async with server_factory(server_dir) as start:
        yield await start(
            {
                "real": {"type": "text", "path": str(tiny_models["a"])},
                "embed": {"type": "embedding", "path": str(embedding_model_dir())},
                "echo": {"type": "vision", "path": fake_dir, "args": {"echo": True}},
                "caller": {
                    "type": "vision",
                    "path": fake_dir,
                    "args": {"tool_call": json.dumps(CALL)},
                },
                "plain": {"type": "vision", "path": "fake/plain", "defaults": {"temperature": 0.5}},
                "victim": {"type": "text", "path": str(victim)},
                "crasher": {
                    "type": "vision",
                    "path": "fake/crasher",
                    "args": {"crash_after_tokens": 2},
                },
            },
            drivers={ModelType.VISION: FakeWorkerDriver()},
            max_loaded_models=6,
            startup_timeout="120s",
        )


@pytest_asyncio.fixture(loop_scope="module")
async def client(run: Running) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=run.url) as api:
        yield api


def last_request(run: Running) -> dict[str, Any]:
    return run.kinds("request")[-1].data


# ----------------------------------------------------------------------------- listings


async def test_version_tags_and_show(run: Running, client: ollama.AsyncClient) -> None:
    async with run.http.get("/api/version") as r:
        assert r.status == 200 and isinstance((await r.json())["version"], str)

    listed = await client.list()
    by_name = {m.model: m for m in listed.models}
    assert set(by_name) == set(run.supervisor.workers)
    real = by_name["real"]
    assert real.size and real.size > 0 and real.modified_at is not None
    assert real.details is not None and real.details.format == "mlx"
    assert real.details.family == "llama" and real.details.parameter_size
    assert by_name["plain"].size == 0  # not on disk: still listed
    assert real.digest and len(real.digest) == 64

    shown = await client.show("real")
    assert shown.capabilities == ["completion"]
    assert shown.template and "messages" in shown.template
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert isinstance(shown.modelinfo["llama.context_length"], int)
    assert shown.modelfile and "FROM " in shown.modelfile
    assert (await client.show("echo")).capabilities == ["completion", "vision", "tools"]
    assert (await client.show("embed")).capabilities == ["embedding"]
    plain = await client.show("plain:latest")  # a tag, and defaults as parameters
    assert plain.parameters == "temperature 0.5"


# --------------------------------------------------------------------------------- chat


async def test_chat_translates_every_field(run: Running, client: ollama.AsyncClient) -> None:
    image = png_base64()
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    reply = await client.chat(
        model="echo",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is this?", "images": [image]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "X"}}}],
            },
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
        tools=[WEATHER_TOOL],
        format=schema,
        options={
            "temperature": 0.1,
            "top_p": 0.8,
            "top_k": 5,
            "seed": 3,
            "num_predict": 9,
            "stop": ["END"],
            "num_ctx": 1024,
        },
        keep_alive="5m",
        think=False,
        stream=False,
    )
    assert reply.model == "echo" and reply.done and reply.done_reason == "length"
    received = json.loads(reply.message.content or "")
    assert received["messages"][1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}},
    ]
    assert received["messages"][2]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "X"}'},
        }
    ]
    assert received["messages"][3] == {
        "role": "tool", "content": "sunny", "tool_call_id": "call_1", "name": "get_weather",
    }  # fmt: skip
    assert received["tools"] == [WEATHER_TOOL]
    assert received["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": schema},
    }  # fmt: skip
    for key, value in {"temperature": 0.1, "top_p": 0.8, "top_k": 5, "seed": 3,
                       "max_tokens": 9, "stop": ["END"]}.items():  # fmt: skip
        assert received[key] == value, key
    assert received["stream"] is True and received["stream_options"] == {"include_usage": True}
    assert not {"num_ctx", "keep_alive", "think", "options", "format"} & set(received)
    assert run.supervisor.workers["echo"].keep_alive == 300
    assert reply.eval_count == 1 and reply.prompt_eval_count == 3
    assert reply.total_duration and reply.total_duration > 0
    assert last_request(run)["endpoint"] == "/api/chat"
    assert last_request(run)["status"] == 200


async def test_chat_streams_ndjson(run: Running, client: ollama.AsyncClient) -> None:
    parts = [
        part
        async for part in await client.chat(
            model="plain", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    *pieces, final = parts
    assert all(not p.done and p.message.role == "assistant" for p in pieces)
    assert "".join(p.message.content or "" for p in pieces) == "".join(f"tok{i} " for i in range(8))
    assert final.done and final.done_reason == "length" and final.message.content == ""
    assert final.eval_count == 8 and final.prompt_eval_count == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int), key
    assert last_request(run)["endpoint"] == "/api/chat"


async def test_stream_is_the_default(run: Running) -> None:
    body = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
    async with run.http.post("/api/chat", json=body) as r:
        assert r.status == 200 and r.content_type == "application/x-ndjson"
        lines = [json.loads(line) async for line in r.content if line.strip()]
    assert len(lines) == 9 and lines[-1]["done"] is True


async def test_a_worker_dying_mid_stream_ends_the_stream_with_an_error_line(
    run: Running, client: ollama.AsyncClient
) -> None:
    pieces: list[str] = []
    with pytest.raises(ollama.ResponseError) as err:
        async for part in await client.chat(
            model="crasher", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pieces.append(part.message.content or "")
    assert pieces == ["tok0 ", "tok1 "]
    assert "crasher" in err.value.error
    assert last_request(run)["endpoint"] == "/api/chat"
    assert last_request(run)["status"] == 502


async def test_tool_calls_come_back_in_ollama_shape(client: ollama.AsyncClient) -> None:
    messages = [{"role": "user", "content": "weather in Paris?"}]
    whole = await client.chat(model="caller", messages=messages, tools=[WEATHER_TOOL])
    assert whole.done_reason == "stop"
    calls = whole.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    streamed = [
        p
        async for p in await client.chat(
            model="caller", messages=messages, tools=[WEATHER_TOOL], stream=True
        )
    ]
    calls = [c for p in streamed for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert streamed[-1].done


async def test_a_tag_resolves_and_answers_under_the_name_sent(
    run: Running, client: ollama.AsyncClient
) -> None:
    reply = await client.chat(model="plain:latest", messages=[{"role": "user", "content": "x"}])
    assert reply.model == "plain:latest"
    assert (await client.chat(model="plain:7b", messages=[{"role": "user", "content": "x"}])).done
    assert last_request(run)["endpoint"] == "/api/chat"


# ----------------------------------------------------------------------------- generate


async def test_generate_with_a_real_model(run: Running, client: ollama.AsyncClient) -> None:
    whole = await client.generate(
        model="real", prompt="Once upon a time", options={"num_predict": 4, "seed": 1}
    )
    assert isinstance(whole.response, str) and whole.done
    assert whole.done_reason in ("stop", "length")
    assert whole.eval_count is not None and 0 < whole.eval_count <= 4
    assert whole.prompt_eval_count and whole.prompt_eval_count > 0
    assert last_request(run)["endpoint"] == "/api/generate"

    streamed = [
        p
        async for p in await client.generate(
            model="real", prompt="hi", system="be brief", options={"num_predict": 3}, stream=True
        )
    ]
    assert streamed[-1].done and streamed[-1].eval_count and streamed[-1].eval_count <= 3
    assert all(not p.done for p in streamed[:-1])

    raw = await client.generate(model="real", prompt="The", raw=True, options={"num_predict": 2})
    assert raw.done and raw.eval_count is not None and raw.eval_count <= 2


async def test_generate_sends_system_and_prompt_as_a_chat(client: ollama.AsyncClient) -> None:
    reply = await client.generate(model="echo", prompt="hi", system="be brief", format="json")
    received = json.loads(reply.response or "")
    assert received["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert received["response_format"] == {"type": "json_object"}


async def test_an_empty_prompt_loads_and_keep_alive_0_unloads(
    run: Running, client: ollama.AsyncClient
) -> None:
    worker = run.supervisor.workers["plain"]

    def state() -> WorkerState:
        return worker.state

    await client.generate(model="plain", keep_alive=0)  # whatever its state was
    assert state() is WorkerState.STOPPED

    loaded = await client.generate(model="plain", keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert state() is WorkerState.READY and worker.keep_alive == 600

    ps = await client.ps()
    [entry] = [m for m in ps.models if m.model == "plain"]
    assert entry.expires_at is not None
    expires_in = entry.expires_at - datetime.now(UTC)
    assert timedelta(minutes=9) < expires_in <= timedelta(minutes=10, seconds=5)
    assert entry.details is not None and entry.details.format == "mlx"

    unloaded = await client.generate(model="plain", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert state() is WorkerState.STOPPED and "plain" not in run.supervisor.loaded()
    assert "plain" not in {m.model for m in (await client.ps()).models}

    chat_load = await client.chat(model="plain", messages=[])
    assert chat_load.done_reason == "load" and state() is WorkerState.READY


# --------------------------------------------------------------------------- embeddings


async def test_embed_and_the_older_embeddings(run: Running, client: ollama.AsyncClient) -> None:
    batch = await client.embed(model="embed", input=["cat", "kitten", "stock market"])
    assert batch.model == "embed" and len(batch.embeddings) == 3
    cat, kitten, stocks = (list(v) for v in batch.embeddings)
    assert len(cat) == 384

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert dot(cat, kitten) > dot(cat, stocks)
    assert batch.prompt_eval_count and batch.prompt_eval_count > 0
    assert last_request(run)["endpoint"] == "/api/embed"

    single = await client.embeddings(model="embed:latest", prompt="cat")
    assert len(single.embedding) == 384
    assert dot(list(single.embedding), cat) == pytest.approx(1.0, abs=1e-3)
    assert last_request(run)["endpoint"] == "/api/embeddings"


# ------------------------------------------------------------------------------- errors


async def test_an_unknown_model_is_a_404(client: ollama.AsyncClient) -> None:
    for call in (
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}]),
        client.generate(model="nope:latest", prompt="x"),
        client.embed(model="nope", input="x"),
        client.show("nope"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            await call
        assert err.value.status_code == 404
        assert "nope" in err.value.error and "not found" in err.value.error


async def test_client_mistakes_are_400s(run: Running, client: ollama.AsyncClient) -> None:
    image = png_base64()
    mistakes = [
        client.chat(model="embed", messages=[{"role": "user", "content": "x"}]),
        client.embed(model="real", input="x"),
        client.chat(model="real", messages=[{"role": "user", "content": "x", "images": [image]}]),
        client.generate(model="real", prompt="def f(", suffix="return 1"),
        client.generate(model="echo", prompt="x", raw=True),
        client.chat(model="plain", messages=[{"role": "user", "content": "x"}], keep_alive="soon"),
    ]
    for call in mistakes:
        with pytest.raises(ollama.ResponseError) as err:
            await call
        assert err.value.status_code == 400, err.value.error
    # Ollama's error shape, also for the origin rules every /api/ POST follows.
    async with run.http.post("/api/chat", data="{}", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415 and isinstance((await r.json())["error"], str)


async def test_unsupported_endpoints_say_so(run: Running, client: ollama.AsyncClient) -> None:
    for call in (
        client.copy("plain", "plain2"),
        client.create(model="x", from_="plain"),
        client.push("plain"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            await call
        assert err.value.status_code == 501
        assert "mlx-serve does not support" in err.value.error
    async with run.http.head("/api/blobs/sha256:abc") as r:
        assert r.status == 501


# ------------------------------------------------------------------------ delete, pull


async def test_delete(run: Running, client: ollama.AsyncClient) -> None:
    victim = Path(run.supervisor.workers["victim"].model.path)
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("victim")  # a local directory: only when asked explicitly
    assert err.value.status_code == 400 and "local" in err.value.error
    await client.generate(model="plain")  # loaded: refused
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("plain")
    assert err.value.status_code == 409
    async with run.http.delete("/api/delete", json={"model": "victim", "local": True}) as r:
        body = await r.json()
        assert r.status == 200, body
    assert body["status"] == "success" and body["freed_bytes"] > 0
    assert not await asyncio.to_thread(victim.exists)


async def test_pull_speaks_the_clients_progress(
    run: Running,
    client: ollama.AsyncClient,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlx_serve.testing.fake_hub import FakeHub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    async with FakeHub({"tiny-org/tiny-llama": tiny_models["b"]}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        progress = [p async for p in await client.pull("tiny-org/tiny-llama", stream=True)]
        assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
        assert any(p.completed and p.total for p in progress)
        whole = await client.pull("tiny-org/tiny-llama")  # stream: false, cached by now
        assert whole.status == "success"
        with pytest.raises(ollama.ResponseError) as err:
            await client.pull("nobody/nothing")
        assert err.value.status_code == 404
