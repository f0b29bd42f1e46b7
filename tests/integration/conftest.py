"""Fixtures that run the real server.

* :func:`start_server`: in-process ``serve()`` with real worker subprocesses. Every server a
  test starts is stopped at teardown, and teardown fails the test if any worker process it
  started is still alive: a leak is a bug, not noise.
* :func:`start_app`: the real router and supervisor over workers that run in the test's own
  loop (:mod:`tests.integration.inprocess`): no process at all, for tests of the API and the
  proxy that need to control a worker exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from mlx_serve.config import Config, ModelType, load_config
from mlx_serve.server import ServerHandle, serve
from mlx_serve.supervisor import Supervisor
from mlx_serve.supervisor.events import Event
from mlx_serve.tiny_models import build_text_model
from mlx_serve.workers.base import WorkerDriver
from mlx_serve.workers.process import free_port
from tests.conftest import eventually, last_seq, wait_event
from tests.integration.inprocess import StartApp, app_factory, model_yaml

__all__ = ["Running", "StartApp", "StartServer", "cli_server", "model_yaml", "server_factory"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny random-weight llama models (built once per session, ~1 s)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "a": build_text_model(root / "tiny-a", seed=1),
        "b": build_text_model(root / "tiny-b", seed=2),
    }


@dataclass
class Running:
    """A server started by :func:`start_server`."""

    handle: ServerHandle
    task: asyncio.Task[None]
    http: aiohttp.ClientSession
    pids: set[int] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def supervisor(self) -> Supervisor:
        return self.handle.supervisor

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def mark(self) -> int:
        """The newest event's number: ``event(..., after=mark)`` waits for what comes next."""
        return last_seq(self.supervisor.events)

    async def event(self, kind: str, model: str | None = None, **kwargs: Any) -> Event:
        """:func:`tests.conftest.wait_event` on this server's supervisor."""
        return await wait_event(self.supervisor.events, kind, model, **kwargs)

    async def chat(self, model: str, content: str = "hi", **extra: Any) -> tuple[int, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
        async with self.http.post("/v1/chat/completions", json=body) as r:
            return r.status, await r.json()

    async def stream(self, model: str, **extra: Any) -> tuple[int, list[bytes]]:
        """A streamed chat completion: (status, the raw SSE data lines)."""
        body = {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "tell me a story"}],
            **extra,
        }
        lines: list[bytes] = []
        async with self.http.post("/v1/chat/completions", json=body) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    lines.append(line[6:].strip())
            return r.status, lines


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(models={...}, **server_settings)`` -> :class:`Running`."""
    async with server_factory(tmp_path) as start:
        yield start


@contextlib.asynccontextmanager
async def server_factory(tmp_path: Path) -> AsyncIterator[StartServer]:
    """What :func:`start_server` yields, for fixtures of a wider scope (one server per module):

    ``async with server_factory(tmp_path_factory.mktemp("x")) as start: yield await start(...)``
    """
    running: list[Running] = []

    async def start(
        models: Mapping[str, Mapping[str, Any]],
        drivers: Mapping[ModelType, WorkerDriver] | None = None,
        **server: Any,
    ) -> Running:
        server.setdefault("port", free_port())
        server.setdefault("stop_timeout", 5)
        config_path = tmp_path / f"models{len(running)}.yaml"
        config_path.write_text(model_yaml(models, **server))
        config: Config = load_config(config_path)
        ready: asyncio.Future[ServerHandle] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(
                config,
                data_dir=tmp_path / f"data{len(running)}",
                on_ready=ready.set_result,
                handle_signals=False,
                drivers=drivers,
                drain_timeout=5,
            )
        )
        started: list[asyncio.Future[Any]] = [task, ready]
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED, timeout=30)
        if task.done():
            task.result()
        handle = ready.result()
        http = aiohttp.ClientSession(base_url=handle.url)
        run = Running(handle, task, http)

        def record(event: Event) -> None:
            run.events.append(event)
            pid = event.data.get("pid")
            if isinstance(pid, int):
                run.pids.add(pid)

        handle.supervisor.events.add_listener(record)
        running.append(run)
        return run

    yield start

    for run in running:
        for worker in run.supervisor.workers.values():
            if worker.proc is not None:
                run.pids.add(worker.proc.pid)
        await run.http.close()
        run.handle.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run.task, 60)
    pids = {pid for run in running for pid in run.pids}
    await eventually(
        lambda: not [p for p in pids if _alive(p)],
        timeout=10,
        what=f"worker processes {sorted(pids)} to exit",
    )


@pytest.fixture
async def start_app(tmp_path: Path) -> AsyncIterator[StartApp]:
    """Factory: ``await start_app(models={...}, **server_settings)`` ->
    :class:`~tests.integration.inprocess.AppRun` (see :func:`~.inprocess.app_factory`)."""
    async with app_factory(tmp_path) as start:
        yield start


@contextlib.asynccontextmanager
async def cli_server(
    config: Path, port: int, home: Path, log: Path | None = None
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``mlx-serve start --config CONFIG`` as a real process, until it listens on ``port``;
    terminated (then killed) on exit."""
    log_file = log.open("wb") if log is not None else None
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waits go to threads
        [sys.executable, "-m", "mlx_serve.cli.main", "start", "--config", str(config)],
        stdout=log_file if log_file is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLX_SERVE_HOME": str(home)},
    )

    def listening() -> bool:
        if proc.poll() is not None:
            return True  # exited: the assertion below says so
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        await eventually(listening, timeout=60, what="mlx-serve start to listen")
        assert proc.poll() is None, f"the server exited; see {log}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        if log_file is not None:
            log_file.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
