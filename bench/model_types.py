"""Per model type: worker import time, load time, first-response time and peak RSS.

``python -m bench.model_types`` starts the real server (in-process) on one tiny model of every
type (the demo's models), requests each type once under ``max_loaded_models: 1`` and reports,
per type: the load event's timings (import / load split where the worker reports it), the
time from request to first response byte including the swap, and the worker's peak RSS
(``VmHWM`` from /proc, read just before it is swapped out; Linux only). Writes
``bench/results/model_types.md``.

It runs twice: as configured by default, then with ``server.prewarm: true`` (spare workers),
waiting before each type's first request until every type's spare is ready, so the second
column is what a swap costs in the steady state of a prewarmed server. The spares' RSS is
reported too: the memory that buys the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from mlx_serve.config import load_config
from mlx_serve.demo import demo_models
from mlx_serve.server import ServerHandle, serve
from mlx_serve.workers.process import free_port


def _png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _peak_rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _requests() -> dict[str, tuple[str, dict[str, Any]]]:
    chat = "/v1/chat/completions"
    image = [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": _png()}},
    ]
    return {
        "text": (chat, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}),
        "vision": (chat, {"messages": [{"role": "user", "content": image}], "max_tokens": 8}),
        "embedding": ("/v1/embeddings", {"input": ["a cat", "a kitten"]}),
        "tts": ("/v1/audio/speech", {"input": "Hello there.", "response_format": "wav"}),
        "rerank": ("/v1/rerank", {"query": "a cat", "documents": ["a kitten", "a car"]}),
    }


async def _request(http: aiohttp.ClientSession, name: str, kind: str, wav: bytes) -> float:
    """Send one request of the model's kind; seconds to the first response byte."""
    started = time.perf_counter()
    if kind == "stt":
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(wav), filename="a.wav", content_type="audio/wav")
        form.add_field("model", name)
        ctx = http.post("/v1/audio/transcriptions", data=form)
    else:
        path, body = _requests()[kind]
        ctx = http.post(path, json={"model": name, **body})
    async with ctx as resp:
        await resp.content.readany()
        first = time.perf_counter() - started
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{name}: HTTP {resp.status}")
    return first


async def _spare_ready(handle: ServerHandle, kind: str, timeout: float = 120.0) -> int | None:
    """Wait for the steady state of a prewarmed server: a ready spare of every wanted kind
    (spares replaced after a swap start one at a time, and on 2 cores one that is importing
    slows whatever runs beside it). Returns the RSS in bytes of the spare of ``kind``."""
    pool = handle.supervisor.spares
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        spares = pool.spares
        if all(k in spares and spares[k].ready for k in pool.wanted):
            for spare in spares.values():
                if spare.kind.value == kind:
                    return spare.rss_bytes
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the spares did not all become ready in {timeout:g}s (waiting for {kind})")


async def measure(workdir: Path, *, prewarm: bool = False) -> list[dict[str, Any]]:
    models = demo_models(workdir / "models")
    models.pop("demo-llama-b")
    config_path = workdir / "models.yaml"
    import yaml

    port = free_port()
    server = {
        "port": port,
        "data_dir": str(workdir / "data"),
        "memory_guard": False,
        "prewarm": prewarm,
    }
    config_path.write_text(yaml.safe_dump({"server": server, "models": models}))
    config = load_config(config_path)
    ready: asyncio.Future[ServerHandle] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(config, data_dir=workdir / "data", on_ready=ready.set_result, handle_signals=False)
    )
    handle = await ready
    loaded: dict[str, dict[str, Any]] = {}
    handle.supervisor.events.add_listener(
        lambda e: loaded.__setitem__(e.model or "", e.data) if e.kind == "model.loaded" else None
    )
    rows: list[dict[str, Any]] = []
    wav = b""
    try:
        async with aiohttp.ClientSession(base_url=handle.url) as http:
            for name, spec in models.items():
                spare_rss = await _spare_ready(handle, spec["type"]) if prewarm else None
                first = await _request(http, name, spec["type"], wav)
                if spec["type"] == "tts":
                    async with http.post(
                        "/v1/audio/speech", json={"model": name, "input": "Hello there."}
                    ) as r:
                        wav = await r.read()
                worker = handle.supervisor.workers[name]
                info = loaded.get(name, {})
                warm = await _request(http, name, spec["type"], wav)
                peak = _peak_rss(worker.pid)  # after both requests, before the next swap
                rows.append({
                    "type": spec["type"], "model": name,
                    "load_s": info.get("duration_s"), "import_s": info.get("import_s"),
                    "model_load_s": info.get("load_s"),
                    "first_response_s": round(first, 3),
                    "warm_response_s": round(warm, 3),
                    "peak_rss_mib": None if peak is None else round(peak / 2**20),
                    "from_spare": bool(info.get("spare")),
                    "spare_rss_mib": None if spare_rss is None else round(spare_rss / 2**20),
                })  # fmt: skip
    finally:
        handle.stop()
        await task
    return rows


def render_prewarm(cold: list[dict[str, Any]], warm: list[dict[str, Any]]) -> str:
    head = (
        "| type | model | request -> first byte, incl. swap (s) | same with prewarm (s) "
        "| prewarm / cold | spare RSS (MiB) |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|"]
    for c, w in zip(cold, warm, strict=True):
        ratio = w["first_response_s"] / c["first_response_s"] if c["first_response_s"] else None
        spare = "" if w["from_spare"] else " (no spare used)"
        cells = [c["type"], c["model"], c["first_response_s"], f"{w['first_response_s']}{spare}",
                 None if ratio is None else f"x{ratio:.2f}", w["spare_rss_mib"]]  # fmt: skip
        lines.append("| " + " | ".join("—" if x is None else str(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        "| type | model | load event (s) | import (s) | model load (s) "
        "| request -> first byte, incl. swap (s) | warm request (s) | peak RSS (MiB) |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["type"], r["model"], r["load_s"], r["import_s"], r["model_load_s"],
                 r["first_response_s"], r["warm_response_s"], r["peak_rss_mib"]]  # fmt: skip
        lines.append("| " + " | ".join("—" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(measure(Path(tmp) / "cold"))
    with tempfile.TemporaryDirectory() as tmp:
        prewarmed = asyncio.run(measure(Path(tmp) / "prewarm", prewarm=True))
    table = render(rows)
    compared = render_prewarm(rows, prewarmed)
    print(table)
    print(compared)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_types.md").write_text(
        "# Per model type (tiny local models, Linux CPU, 2 cores)\n\n"
        + table
        + "\n## With `server.prewarm: true` (a ready spare of each type before its request)\n\n"
        + compared
    )
    (args.out / "model_types.json").write_text(
        json.dumps({"default": rows, "prewarm": prewarmed}, indent=2)
    )


if __name__ == "__main__":
    main()
