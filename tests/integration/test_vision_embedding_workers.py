"""The vision and embedding workers as real processes, spoken to directly (no router).

The embedding worker is mlx-serve's own server on the real all-MiniLM-L6-v2; the vision
worker is ``mlx_vlm.server`` on a tiny random-weight Qwen2-VL. Both are started through
their drivers' ``launch_spec`` and proven ready by their drivers' ``probe``, exactly as the
supervisor does. The vision tests also pin down what mlx_vlm does with image references
the router has to guard against (remote URLs, local paths, non-image data URLs).
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from mlx_serve.config import ModelConfig, ModelType
from mlx_serve.tiny_models.embedding import embedding_model_dir
from mlx_serve.tiny_models.vision import build_vision_model
from mlx_serve.workers.base import LaunchContext, WorkerDriver
from mlx_serve.workers.process import (
    SubprocessLauncher,
    WorkerProcess,
    end_group,
    free_port,
    read_log_tail,
)
from mlx_serve.workers.registry import default_drivers
from mlx_serve.workers.vision import VisionDriver
from tests.conftest import eventually, sdk_resources_imported

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

STARTUP_DEADLINE = 90.0
STOP_GRACE = 5.0


@dataclass
class Worker:
    """A worker process started through its driver, and what its start cost."""

    proc: WorkerProcess
    url: str
    model: ModelConfig
    log: Path
    ready_s: float
    details: dict[str, Any]
    http: aiohttp.ClientSession

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.post(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


async def start_worker(
    driver: WorkerDriver, model: ModelConfig, log: Path, http: aiohttp.ClientSession
) -> Worker:
    """Launch like the supervisor does, then probe with a deadline until ready."""
    port = free_port()
    ctx = LaunchContext("test", model, "127.0.0.1", port, log, sys.executable)
    started = time.monotonic()
    proc = await SubprocessLauncher().launch(driver.launch_spec(ctx))
    url = f"http://127.0.0.1:{port}"

    async def ready() -> tuple[dict[str, Any]] | None:
        if proc.returncode is not None:
            raise AssertionError(f"worker exited with {proc.returncode}")
        details = await driver.probe(http, url, model, timeout=10)
        return None if details is None else (details,)  # ({},): ready, nothing to tell

    try:
        (details,) = await eventually(ready, STARTUP_DEADLINE, "the worker to answer its probe")
    except AssertionError as exc:
        await stop_worker(proc)
        raise AssertionError(f"{exc}:\n{read_log_tail(log)}") from None
    return Worker(proc, url, model, log, time.monotonic() - started, details, http)


async def stop_worker(proc: WorkerProcess) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period (and whatever it forked)."""
    await end_group(proc, STOP_GRACE)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


# --------------------------------------------------------------------------- embeddings


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def embedder(
    http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    # Small request limits (passed as models.yaml ``args``) so the limit tests stay cheap.
    model = ModelConfig(
        type="embedding",
        path=str(embedding_model_dir()),
        args={"max_items": 64, "max_item_chars": 5000, "max_total_chars": 20000},
    )
    log = tmp_path_factory.mktemp("embedding") / "worker.log"
    worker = await start_worker(default_drivers()[ModelType.EMBEDDING], model, log, http)
    print(f"\nembedding worker ready in {worker.ready_s:.2f}s: {worker.details}")
    yield worker
    await stop_worker(worker.proc)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """MiniLM's tokenizer, loaded outside the tests' event loop (it reads and parses a file)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(embedding_model_dir() / "tokenizer.json"))
    tok.no_padding()  # the shipped tokenizer.json pads everything to 128
    return tok


def vectors(body: dict[str, Any]) -> np.ndarray[Any, Any]:
    """The embeddings of a response, in index order, base64 or float."""
    rows = sorted(body["data"], key=lambda d: d["index"])
    out = []
    for row in rows:
        assert row["object"] == "embedding"
        value = row["embedding"]
        if isinstance(value, str):
            out.append(np.frombuffer(base64.b64decode(value), dtype="<f4"))
        else:
            out.append(np.array(value, dtype=np.float32))
    return np.stack(out)


async def test_embedding_health_reports_load_details(embedder: Worker) -> None:
    assert {"import_s", "load_s", "peak_rss_bytes"} <= set(embedder.details)


async def test_embed_a_string(embedder: Worker) -> None:
    status, body = await embedder.post(
        "/v1/embeddings", {"model": embedder.model.path, "input": "cat"}
    )
    assert status == 200, body
    assert body["object"] == "list"
    assert body["model"] == embedder.model.path
    [row] = body["data"]
    assert row["index"] == 0
    assert isinstance(row["embedding"], list) and len(row["embedding"]) == 384
    assert math.isclose(float(np.linalg.norm(row["embedding"])), 1.0, rel_tol=1e-5)
    # [CLS] cat [SEP]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_similarity_is_meaningful(embedder: Worker, tokenizer: Any) -> None:
    texts = ["cat", "kitten", "stock market"]
    status, body = await embedder.post("/v1/embeddings", {"model": "m", "input": texts})
    assert status == 200, body
    cat, kitten, stocks = vectors(body)
    assert float(cat @ kitten) > float(cat @ stocks) + 0.3
    expected = sum(len(tokenizer.encode(t).ids) for t in texts)
    assert body["usage"]["prompt_tokens"] == expected


async def test_base64_is_little_endian_float32_of_the_same_vectors(embedder: Worker) -> None:
    texts = ["first text", "second one"]
    _, as_float = await embedder.post("/v1/embeddings", {"model": "m", "input": texts})
    status, as_b64 = await embedder.post(
        "/v1/embeddings", {"model": "m", "input": texts, "encoding_format": "base64"}
    )
    assert status == 200, as_b64
    assert all(isinstance(d["embedding"], str) for d in as_b64["data"])
    np.testing.assert_array_equal(vectors(as_b64), vectors(as_float))


async def test_dimensions_truncate_and_renormalize(embedder: Worker) -> None:
    _, full = await embedder.post("/v1/embeddings", {"model": "m", "input": "dimensions"})
    status, short = await embedder.post(
        "/v1/embeddings", {"model": "m", "input": "dimensions", "dimensions": 64}
    )
    assert status == 200, short
    [vector] = vectors(short)
    prefix = vectors(full)[0][:64]
    assert vector.shape == (64,)
    np.testing.assert_allclose(vector, prefix / np.linalg.norm(prefix), rtol=1e-5, atol=1e-6)


async def test_token_ids_are_this_models_tokens(embedder: Worker, tokenizer: Any) -> None:
    ids = tokenizer.encode("a sleeping kitten", add_special_tokens=False).ids
    _, by_text = await embedder.post("/v1/embeddings", {"model": "m", "input": "a sleeping kitten"})
    status, flat = await embedder.post("/v1/embeddings", {"model": "m", "input": ids})
    assert status == 200, flat
    _, nested = await embedder.post("/v1/embeddings", {"model": "m", "input": [ids, ids[:1]]})
    np.testing.assert_allclose(vectors(flat)[0], vectors(by_text)[0], atol=1e-6)
    np.testing.assert_allclose(vectors(nested)[0], vectors(by_text)[0], atol=1e-6)
    assert flat["usage"] == by_text["usage"]


async def test_batches_keep_input_order(embedder: Worker) -> None:
    # More inputs than one batch (32), lengths shuffled so length-sorting reorders them.
    # Short ones: MLX's CPU backend (Linux) runs MiniLM at only a few GFLOP/s.
    texts = [("word " * ((i * 3) % 5)) + str(i) for i in range(36)]
    status, body = await embedder.post("/v1/embeddings", {"model": "m", "input": texts})
    assert status == 200, body
    batched = vectors(body)
    for i in (0, 13, 35):
        _, single = await embedder.post("/v1/embeddings", {"model": "m", "input": texts[i]})
        np.testing.assert_allclose(batched[i], vectors(single)[0], atol=1e-5)


async def test_openai_sdk_round_trip(embedder: Worker) -> None:
    # (imported with this module, not on the test's loop: the SDK's import held it 351 ms
    # under load; its resources likewise, see sdk_resources_imported)
    client = openai.AsyncOpenAI(base_url=embedder.url + "/v1", api_key="unused", max_retries=0)
    await sdk_resources_imported(client)
    try:
        # The SDK asks for base64 unless told otherwise, and decodes it.
        result = await client.embeddings.create(model="m", input=["cat", "dog"])
    finally:
        await client.close()
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens == 6


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "m"}, 400, "'input' is required"),
        ({"model": "m", "input": ""}, 400, "empty string"),
        ({"model": "m", "input": []}, 400, "empty list"),
        ({"model": "m", "input": ["ok", ""]}, 400, "input[1] is an empty string"),
        ({"model": "m", "input": [[]]}, 400, "input[0] is an empty token list"),
        ({"model": "m", "input": 42}, 400, "must be a string or a list"),
        ({"model": "m", "input": {"text": "x"}}, 400, "must be a string or a list"),
        ({"model": "m", "input": ["ok", 3]}, 400, "input[1] must be a string"),
        ({"model": "m", "input": ["ok", None]}, 400, "input[1] must be a string"),
        ({"model": "m", "input": [["nested", "strings"]]}, 400, "input[0] must be"),
        ({"model": "m", "input": [True, False]}, 400, "input[0] must be"),
        ({"model": "m", "input": ["ok", [101]]}, 400, "mixes strings and token lists"),
        ({"model": "m", "input": [1, 2, 10**9]}, 400, "outside this model's vocabulary"),
        ({"model": "m", "input": [-1]}, 400, "outside this model's vocabulary"),
        ({"model": "m", "input": ["a"] * 65}, 400, "at most 64"),
        ({"model": "m", "input": "x" * 5001}, 400, "at most 5000"),
        ({"model": "m", "input": ["x" * 5000] * 5}, 413, "at most 20000"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, 400, "positive integer"),
        ({"model": "m", "input": "x", "dimensions": "8"}, 400, "positive integer"),
        ({"model": "m", "input": "x", "dimensions": True}, 400, "positive integer"),
        ({"model": "m", "input": "x", "dimensions": 385}, 400, "have 384"),
        (["not", "an", "object"], 400, "JSON object"),
        (b"{not json", 400, "not valid JSON"),
    ],
)
async def test_bad_input_is_a_json_client_error(
    embedder: Worker, body: Any, status: int, needle: str
) -> None:
    got, answer = await embedder.post("/v1/embeddings", body)
    assert got == status, answer
    assert isinstance(answer, dict) and set(answer["error"]) == {"message", "type", "param", "code"}
    assert needle in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"


async def test_worker_keeps_serving_after_bad_input(embedder: Worker) -> None:
    for body in ({"input": ""}, b"][", {"input": [None]}):
        status, _ = await embedder.post("/v1/embeddings", body)
        assert status == 400
    status, body = await embedder.post("/v1/embeddings", {"model": "m", "input": "still here"})
    assert status == 200, body
    assert embedder.proc.returncode is None


# -------------------------------------------------------------------------------- vision


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def vision(
    http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    root = tmp_path_factory.mktemp("vision")
    path = build_vision_model(root / "model")
    model = ModelConfig(type="vision", path=str(path))
    worker = await start_worker(VisionDriver(), model, root / "worker.log", http)
    print(f"\nvision worker ready in {worker.ready_s:.2f}s")
    yield worker
    await stop_worker(worker.proc)


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_url(payload: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


def chat(worker: Worker, *parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    content = [{"type": "text", "text": "What is in this picture?"}, *parts]
    return {
        "model": worker.model.path,  # what the router forwards: VisionDriver.upstream_model
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


async def test_vision_health_names_the_preloaded_model(vision: Worker) -> None:
    async with vision.http.get(vision.url + "/health") as resp:
        health = await resp.json()
    assert health["loaded_model"] == VisionDriver().upstream_model(vision.model)


async def test_one_image_as_a_data_url(vision: Worker) -> None:
    _, text_only = await vision.post("/v1/chat/completions", chat(vision))
    status, body = await vision.post(
        "/v1/chat/completions", chat(vision, image_part(data_url(png_bytes())))
    )
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] >= 1
    # The image became vision tokens in the prompt.
    assert body["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"]


async def test_two_images(vision: Worker) -> None:
    one = data_url(png_bytes(seed=1))
    two = data_url(png_bytes(96, 64, seed=2))
    _, single = await vision.post("/v1/chat/completions", chat(vision, image_part(one)))
    status, body = await vision.post(
        "/v1/chat/completions", chat(vision, image_part(one), image_part(two))
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"]


async def test_streaming_is_openai_sse_ending_with_done(vision: Worker) -> None:
    body = chat(
        vision,
        image_part(data_url(png_bytes())),
        stream=True,
        stream_options={"include_usage": True},
    )
    events: list[str] = []
    async with vision.http.post(vision.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].decode().strip())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


async def test_non_image_data_url_is_a_500_not_a_hang(vision: Worker) -> None:
    """mlx_vlm only decodes URLs starting with ``data:image/``; anything else is opened as
    a file path and fails. It answers 500 with FastAPI's ``{"detail": ...}`` at once."""
    for url in (
        data_url(b"hello, not an image", "text/plain"),
        data_url(png_bytes(), "application/octet-stream"),  # a real PNG, wrong mime
        data_url(b"not a png at all"),  # right mime, undecodable bytes
    ):
        started = time.monotonic()
        status, body = await vision.post("/v1/chat/completions", chat(vision, image_part(url)))
        assert status == 500, body
        assert "Failed to load image" in body["detail"]
        assert time.monotonic() - started < 10
    # Streaming fails the same way, before the stream starts.
    status, body = await vision.post(
        "/v1/chat/completions",
        chat(vision, image_part(data_url(b"x", "text/plain")), stream=True),
    )
    assert status == 500, body
    status, body = await vision.post("/v1/chat/completions", chat(vision))
    assert status == 200, body


@pytest_asyncio.fixture(loop_scope="module")
async def image_host() -> AsyncIterator[tuple[str, list[str]]]:
    """A local HTTP server with one PNG, recording every path requested from it."""
    requested: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        requested.append(request.path)
        return web.Response(body=png_bytes(seed=5), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}", requested
    await runner.cleanup()


async def test_mlx_vlm_fetches_remote_image_urls(
    vision: Worker, image_host: tuple[str, list[str]]
) -> None:
    """Why the router refuses http(s) images by default: the worker fetches them itself,
    from the ``image_url`` parts and from Responses-style ``input_image`` parts alike."""
    base, requested = image_host
    status, body = await vision.post(
        "/v1/chat/completions", chat(vision, image_part(base + "/a.png"))
    )
    assert status == 200, body
    assert "/a.png" in requested
    status, body = await vision.post(
        "/v1/chat/completions",
        chat(vision, {"type": "input_image", "image_url": base + "/b.png"}),
    )
    assert status == 200, body
    assert "/b.png" in requested


async def test_mlx_vlm_opens_local_file_paths(vision: Worker, tmp_path: Path) -> None:
    """A bare path in ``image_url`` is read from the worker's disk."""
    image = tmp_path / "local.png"
    image.write_bytes(png_bytes(seed=7))
    status, body = await vision.post("/v1/chat/completions", chat(vision, image_part(str(image))))
    assert status == 200, body
    status, body = await vision.post(
        "/v1/chat/completions", chat(vision, image_part("/nonexistent/secret.png"))
    )
    assert status == 500
    assert "No such file or directory" in body["detail"]
