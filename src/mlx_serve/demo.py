"""``mlx-serve demo``: build tiny random-weight models, serve them, and tour the endpoints.

Nothing is downloaded. The models are built locally in about a second each with
:mod:`mlx_serve.tiny_models` and are loaded by exactly the code that loads real models, so the
tour exercises the real supervisor, real ``mlx_lm`` workers and real swaps. Their output is
noise: they have random weights.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from mlx_serve.config import load_config
from mlx_serve.server import ServerHandle, serve
from mlx_serve.tiny_models import build_text_model

console = Console()

DEMO_MODELS = {"demo-llama-a": 1, "demo-llama-b": 2}  # name -> seed
LABEL = "tiny random-weight demo model (output is noise)"


def write_demo_config(workdir: Path, *, port: int) -> Path:
    """Build the demo models (cached) and write a models.yaml that serves them."""
    models_dir = workdir / "models"
    lines = [
        "# Written by `mlx-serve demo`: tiny random-weight models built locally.",
        "server:",
        f"  port: {port}",
        "  idle_timeout: 10m",
        f"  data_dir: {workdir / 'data'}",
        "models:",
    ]
    for name, seed in DEMO_MODELS.items():
        path = build_text_model(models_dir / name, seed=seed, label=LABEL)
        lines += [
            f"  {name}:",
            "    type: text",
            f"    path: {path}",
            f"    aliases: [{name.rsplit('-', 1)[1]}]",
            "    defaults: {max_tokens: 48, temperature: 0.0}",
        ]
    config = workdir / "models.yaml"
    tmp = config.with_name(config.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(config)
    return config


def run_demo(workdir: Path, *, port: int, exit_after: bool) -> int:
    """Build, serve, tour; keep serving until Ctrl-C unless ``exit_after``. Returns an exit code."""
    console.rule("[bold]mlx-serve demo")
    started = time.perf_counter()
    config_path = write_demo_config(workdir, port=port)
    console.print(
        f"built {len(DEMO_MODELS)} models ({LABEL}) in {time.perf_counter() - started:.1f}s"
    )
    console.print(f"config: {config_path}")
    config = load_config(config_path)
    data_dir = config.server.data_dir or workdir / "data"
    return asyncio.run(_serve_and_tour(config, data_dir, exit_after=exit_after))


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
        await tour(handle.url)
    except Exception as exc:  # the demo reports any failure and exits non-zero
        console.print(f"[bold red]the tour failed:[/] {exc!r}")
        code = 1
    if exit_after or code:
        handle.stop()
    else:
        console.print(f"\nserving on [bold]{handle.url}/v1[/] — press Ctrl-C to stop")
    await server
    return code


async def tour(url: str) -> None:
    """Call every endpoint once and show what happened, swaps included."""
    a, b = DEMO_MODELS
    async with aiohttp.ClientSession(base_url=url) as http:
        await _show_models(http, "configured models")

        console.rule(f"chat with {a} (cold start)")
        t0 = time.perf_counter()
        answer = await _chat(http, a, "Say hello to the demo.")
        console.print(
            f"[green]{a}[/]: {answer!r}  [dim]({time.perf_counter() - t0:.2f}s incl. load)[/]"
        )

        console.rule(f"streaming from {a}")
        ttft, text = await _stream(http, a, "Tell me a story.")
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

        console.rule("a mistake gets an OpenAI-shaped error")
        async with http.post("/v1/chat/completions", json={"model": "nope", "messages": []}) as r:
            console.print(f"HTTP {r.status}: {(await r.json())['error']['message']}")

        await _show_models(http, "after the tour")


async def _show_models(http: aiohttp.ClientSession, title: str) -> None:
    async with http.get("/v1/models") as r:
        data = await r.json()
    table = Table(title=title)
    for col in ("model", "type", "status", "aliases"):
        table.add_column(col)
    for m in data["data"]:
        table.add_row(m["id"], m["type"], m["status"], ", ".join(m["aliases"]))
    console.print(table)


def _check(status: int, data: Any) -> None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data}")


async def _chat(http: aiohttp.ClientSession, model: str, prompt: str) -> str:
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
