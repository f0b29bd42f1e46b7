"""All five model types behind one server, swapped under max_loaded_models: 1.

Real workers: mlx_lm (text), mlx_vlm (vision), and mlx-serve's own embedding / tts / stt
servers, on tiny local models (the embedding model is the real all-MiniLM-L6-v2).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openai
import psutil
import pytest
import soundfile

from mlx_serve.supervisor.events import Event
from mlx_serve.tiny_models.audio import build_stt_model, build_tts_model
from mlx_serve.tiny_models.embedding import embedding_model_dir
from mlx_serve.tiny_models.vision import build_vision_model
from tests.conftest import eventually, sdk_resources_imported
from tests.integration.conftest import Running, StartServer, cli_server

if TYPE_CHECKING:  # the SDK's request types, only for the checker
    from openai.types.chat import (
        ChatCompletionContentPartImageParam,
        ChatCompletionContentPartTextParam,
    )

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def five_models(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("five")
    return {
        "chat": {"type": "text", "path": str(tiny_models["a"])},
        "see": {"type": "vision", "path": str(build_vision_model(root / "vision"))},
        "embed": {"type": "embedding", "path": str(embedding_model_dir())},
        "speak": {"type": "tts", "path": str(build_tts_model(root / "tts"))},
        "hear": {"type": "stt", "path": str(build_stt_model(root / "stt"))},
    }


def png_data_url(color: tuple[int, int, int] = (200, 30, 30)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def watch_residency(run: Running) -> list[int]:
    """Record, at every event, how many worker processes of this server are alive."""
    seen: list[int] = []

    def record(_: Event) -> None:
        alive = 0
        for worker in run.supervisor.workers.values():
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    alive += psutil.Process(worker.proc.pid).status() != psutil.STATUS_ZOMBIE
        seen.append(alive)

    run.supervisor.events.add_listener(record)
    return seen


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_every_type_with_the_openai_sdk(
    start_server: StartServer, five_models: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    run = await start_server(five_models, startup_timeout="120s")
    residency = watch_residency(run)
    client = openai.AsyncOpenAI(base_url=run.url + "/v1", api_key="unused", max_retries=0)
    await sdk_resources_imported(client)
    try:
        # text
        chat = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert isinstance(chat.choices[0].message.content, str)

        # vision: one image, then two, then streamed
        image: ChatCompletionContentPartImageParam = {
            "type": "image_url", "image_url": {"url": png_data_url()}
        }  # fmt: skip
        text: ChatCompletionContentPartTextParam = {"type": "text", "text": "What color is this?"}
        seen = await client.chat.completions.create(
            model="see", messages=[{"role": "user", "content": [text, image]}], max_tokens=4
        )
        assert seen.model == "see" and isinstance(seen.choices[0].message.content, str)
        two = await client.chat.completions.create(
            model="see",
            messages=[{"role": "user", "content": [text, image, image]}],
            max_tokens=4,
        )
        assert isinstance(two.choices[0].message.content, str)
        stream = await client.chat.completions.create(
            model="see", messages=[{"role": "user", "content": [text, image]}], max_tokens=4,
            stream=True,
        )  # fmt: skip
        assert [c async for c in stream]

        # embeddings: the SDK sends base64 by default; float explicitly; meaning is preserved
        vectors = await client.embeddings.create(
            model="embed", input=["cat", "kitten", "stock market"]
        )
        cat, kitten, stocks = (d.embedding for d in vectors.data)
        assert len(cat) == 384
        assert cosine(cat, kitten) > cosine(cat, stocks)
        floats = await client.embeddings.create(model="embed", input="cat", encoding_format="float")
        assert math.isclose(cosine(floats.data[0].embedding, cat), 1.0, abs_tol=1e-4)
        assert vectors.usage.prompt_tokens > 0

        # speech, then transcribe what was spoken
        speech = await client.audio.speech.create(
            model="speak", voice="alloy", input="Hello there."
        )
        wav = tmp_path / "hello.wav"
        wav.write_bytes(speech.content)
        samples, rate = soundfile.read(wav)
        assert rate > 0 and len(samples) / rate > 0

        with wav.open("rb") as f:
            as_json = await client.audio.transcriptions.create(model="hear", file=f)
        assert isinstance(as_json.text, str)
        with wav.open("rb") as f:
            as_text = await client.audio.transcriptions.create(
                model="hear", file=f, response_format="text"
            )
        assert isinstance(as_text, str)
        with wav.open("rb") as f:
            verbose = await client.audio.transcriptions.create(
                model="hear", file=f, response_format="verbose_json"
            )
        assert verbose.duration is not None and verbose.duration > 0
        assert isinstance(verbose.segments, list)
    finally:
        await client.close()

    loads = [e.model for e in run.kinds("model.loaded")]
    assert loads == ["chat", "see", "embed", "speak", "hear"]
    assert max(residency) == 1, f"max_loaded_models: 1 was exceeded: {residency}"
    for event in run.kinds("model.loaded")[2:]:
        assert {"import_s", "load_s"} <= set(event.data), event
    # Every unload really ended its process.
    for name in ("chat", "see", "embed", "speak"):
        assert run.supervisor.workers[name].pid is None
    await eventually(lambda: sum(residency[-1:]) <= 1, what="one resident worker")


async def test_wrong_endpoint_for_each_type_is_a_clear_400(
    start_server: StartServer, five_models: dict[str, dict[str, Any]]
) -> None:
    run = await start_server(five_models)
    async with run.http.post("/v1/embeddings", json={"model": "chat", "input": "x"}) as r:
        data = await r.json()
        assert r.status == 400 and "/v1/chat/completions" in data["error"]["message"]
    async with run.http.post("/v1/audio/speech", json={"model": "embed", "input": "x"}) as r:
        data = await r.json()
        assert r.status == 400 and "/v1/embeddings" in data["error"]["message"]
    assert run.supervisor.loaded() == []


async def test_server_memory_returns_after_every_unload(
    five_models: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The router process itself never holds a model: its RSS after all the loads and unloads
    stays within 30 MB of where it was before the first load (workers take theirs along).
    The server runs as ``mlx-serve start`` runs it, on uvloop's event loop, and its text and
    vision streams arrive whole (a fast stream is relayed in steps: ``proxy._relay_stream``)."""

    import aiohttp
    import yaml

    from mlx_serve.workers.process import free_port

    port = free_port()
    config = tmp_path / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {"server": {"port": port, "data_dir": str(tmp_path / "data")}, "models": five_models}
        )
    )
    log = tmp_path / "server.log"
    async with cli_server(config, port, tmp_path, log) as proc:
        server = psutil.Process(proc.pid)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base_url=url) as http:
            async with http.get("/v1/models") as r:
                assert r.status == 200
            before = server.memory_info().rss
            image = {"type": "image_url", "image_url": {"url": png_data_url()}}
            requests: list[tuple[str, dict[str, Any]]] = [
                ("/v1/chat/completions", {"model": "chat", "max_tokens": 2,
                                          "messages": [{"role": "user", "content": "hi"}]}),
                ("/v1/chat/completions", {"model": "see", "max_tokens": 2,
                                          "messages": [{"role": "user", "content": [image]}]}),
                ("/v1/embeddings", {"model": "embed", "input": ["a", "b"]}),
                ("/v1/audio/speech", {"model": "speak", "input": "Hi."}),
            ]  # fmt: skip
            for path, body in requests:
                async with http.post(path, json=body) as r:
                    assert r.status == 200, await r.text()
                    audio = await r.read()
            streams = (("chat", "Tell me a story.", 64), ("see", [image], 16))
            for model, content, max_tokens in streams:
                body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": content}]}  # fmt: skip
                async with http.post("/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    whole = (await r.json())["choices"][0]["message"]["content"]
                async with http.post("/v1/chat/completions", json={**body, "stream": True}) as r:
                    assert r.status == 200, await r.text()
                    raw = (await r.read()).decode()
                events = raw.split("\n\n")  # (mlx_lm's ": keepalive" comments aside)
                data = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
                assert data[-1] == "[DONE]", raw[-300:]
                chunks = [json.loads(d) for d in data[:-1]]
                streamed = "".join(
                    c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
                )
                # (mlx_vlm strips the answer it returns whole, not the one it streams)
                assert streamed.strip() == whole.strip() and whole, (model, streamed, whole)
            form = aiohttp.FormData()
            form.add_field("file", audio, filename="hi.wav", content_type="audio/wav")
            form.add_field("model", "hear")
            form.add_field("keep_alive", "0")
            async with http.post("/v1/audio/transcriptions", data=form) as r:
                assert r.status == 200, await r.text()

            def nothing_loaded() -> bool:
                return not [
                    c for c in server.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE
                ]

            await eventually(nothing_loaded, timeout=30, what="every worker gone")
            after = server.memory_info().rss
        assert after - before < 30 * 2**20, f"router RSS grew by {(after - before) / 2**20:.1f} MiB"
    assert "uvloop event loop" in log.read_text()
