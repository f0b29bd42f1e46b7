"""Mixed load, the long version of ``tests/integration/test_mixed_load.py``.

``python -m bench.mixed_load [--requests 1000] [--concurrency 50]`` starts the real server
(in-process) on two tiny text models and the real MiniLM embedding model, one model resident
at a time, and fires the requests (text streamed and not, embeddings) at the given
concurrency. Every answer is checked against that model's temperature-0 reference (a wrong
one is "misrouted"), the number of worker processes alive is sampled from the OS every 5 ms,
and open file descriptors are compared before and after. Writes
``bench/results/mixed_load.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from mlx_serve.config import load_config
from mlx_serve.server import ServerHandle, serve
from mlx_serve.tiny_models import build_text_model
from mlx_serve.tiny_models.embedding import embedding_model_dir
from mlx_serve.workers.process import free_port

PROMPT = [{"role": "user", "content": "Name three colours."}]


async def _chat(http: aiohttp.ClientSession, model: str, stream: bool) -> str:
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0,
            "stream": stream}  # fmt: skip
    async with http.post("/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
        if not stream:
            return str((await r.json())["choices"][0]["message"]["content"])
        text, done = "", False
        async for line in r.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(f"stream error: {event['error']}")
                text += event["choices"][0]["delta"].get("content") or ""
        if not done:
            raise RuntimeError("stream ended without [DONE]")
        return text


async def _embed(http: aiohttp.ClientSession) -> list[float]:
    body = {"model": "embed", "input": "a lighthouse", "encoding_format": "float"}
    async with http.post("/v1/embeddings", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
        return [round(x, 4) for x in (await r.json())["data"][0]["embedding"]]


def _alive(handle: ServerHandle) -> int:
    alive = 0
    for worker in handle.supervisor.workers.values():
        proc = worker.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                alive += psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
    return alive


def _fds() -> int:
    fd_dir = Path("/proc/self/fd")
    return sum(1 for _ in fd_dir.iterdir()) if fd_dir.is_dir() else 0


async def run(workdir: Path, requests: int, concurrency: int) -> dict[str, Any]:
    models = {
        "a": {"type": "text", "path": str(build_text_model(workdir / "a", seed=1))},
        "b": {"type": "text", "path": str(build_text_model(workdir / "b", seed=2))},
        "embed": {"type": "embedding", "path": str(embedding_model_dir())},
    }
    config_path = workdir / "models.yaml"
    server = {"port": free_port(), "startup_timeout": "120s", "idle_timeout": -1}
    config_path.write_text(yaml.safe_dump({"server": server, "models": models}))
    ready: asyncio.Future[ServerHandle] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            load_config(config_path),
            data_dir=workdir / "data",
            on_ready=ready.set_result,
            handle_signals=False,
        )
    )
    handle = await ready
    loads = Counter[str]()
    handle.supervisor.events.add_listener(
        lambda e: loads.update([e.model or ""]) if e.kind == "model.loaded" else None
    )
    try:
        async with aiohttp.ClientSession(base_url=handle.url) as http:
            reference = {m: await _chat(http, m, False) for m in ("a", "b")}
            vector = await _embed(http)
        fds_before = _fds()
        most_alive, watching = 0, True

        async def watch() -> None:
            nonlocal most_alive
            while watching:
                most_alive = max(most_alive, _alive(handle))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        rng = random.Random(7)
        plan = [rng.choice(["a", "a", "b", "b", "embed"]) for _ in range(requests)]
        gate = asyncio.Semaphore(concurrency)
        outcome = Counter[str]()
        errors: Counter[str] = Counter()
        loads_before = sum(loads.values())
        started = time.perf_counter()

        async def one(http: aiohttp.ClientSession, i: int, model: str) -> None:
            async with gate:
                try:
                    if model == "embed":
                        ok = await _embed(http) == vector
                    else:
                        ok = await _chat(http, model, stream=i % 2 == 0) == reference[model]
                    outcome["ok" if ok else "misrouted"] += 1
                except Exception as exc:
                    outcome["failed"] += 1
                    errors[str(exc)[:120]] += 1

        async with aiohttp.ClientSession(base_url=handle.url) as http:
            await asyncio.gather(*(one(http, i, m) for i, m in enumerate(plan)))
        wall = time.perf_counter() - started
        watching = False
        await watcher
        await asyncio.sleep(0.5)  # let the closed connections' server ends go too
        return {
            "requests": requests,
            "concurrency": concurrency,
            "ok": outcome["ok"],
            "misrouted": outcome["misrouted"],
            "failed": outcome["failed"],
            "lost": requests - sum(outcome.values()),
            "errors": dict(errors.most_common(5)),
            "worker_starts": sum(loads.values()) - loads_before,
            "max_workers_alive": most_alive,
            "fds_before": fds_before,
            "fds_after": _fds(),
            "wall_s": round(wall, 2),
            "requests_per_s": round(requests / wall, 1),
        }
    finally:
        handle.stop()
        await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(Path(tmp), args.requests, args.concurrency))
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    table = f"| figure | value |\n|---|---|\n{rows}\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mixed_load.md").write_text(
        "# Mixed load: two tiny text models + MiniLM, one resident at a time\n\n"
        f"`python -m bench.mixed_load --requests {args.requests} "
        f"--concurrency {args.concurrency}` (Linux CPU, 2 cores)\n\n" + table
    )
    (args.out / "mixed_load.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
