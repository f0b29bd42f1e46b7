"""``mlx-serve start`` as a real process: signals stop every worker, and none outlives it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from mlx_serve.workers.process import free_port
from tests.conftest import eventually
from tests.integration.conftest import cli_server

pytestmark = pytest.mark.slow


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


@pytest.fixture
async def server(tmp_path: Path, tiny_models: dict[str, Path]) -> AsyncIterator[ServerProcess]:
    port = free_port()
    config = tmp_path / "models.yaml"
    config.write_text(
        f"server: {{port: {port}, data_dir: {tmp_path / 'data'}}}\n"
        f"models:\n  tiny: {{path: {tiny_models['a']}}}\n"
    )
    log = tmp_path / "server.log"
    async with cli_server(config, port, tmp_path, log) as proc:
        yield ServerProcess(proc, f"http://127.0.0.1:{port}", log)


async def load_model(server: ServerProcess) -> list[psutil.Process]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with (
        aiohttp.ClientSession() as s,
        s.post(server.url + "/v1/chat/completions", json=body) as r,
    ):
        assert r.status == 200, await r.text()
    workers = server.workers()
    assert any("mlx_lm" in " ".join(p.cmdline()) for p in workers)
    return workers


def gone(processes: list[psutil.Process]) -> bool:
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_every_worker(server: ServerProcess, signum: int) -> None:
    workers = await load_model(server)
    server.proc.send_signal(signum)
    code = await asyncio.to_thread(server.proc.wait, 60)
    assert code == 0, server.log.read_text()
    assert gone(workers), "a worker survived the supervisor"
    assert "model.unloaded tiny reason=shutdown" in server.log.read_text()


async def test_sigkilled_supervisor_leaves_no_orphan(server: ServerProcess) -> None:
    workers = await load_model(server)
    server.proc.kill()  # no chance to clean up: the worker's guard must notice on its own
    await asyncio.to_thread(server.proc.wait, 30)
    await eventually(lambda: gone(workers), timeout=15, what="the orphaned worker to exit")


async def test_second_signal_cuts_the_drain_but_not_the_worker_stop(
    server: ServerProcess, tmp_path: Path
) -> None:
    workers = await load_model(server)
    body = {"model": "tiny", "stream": True, "max_tokens": 100000,
            "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
    async with aiohttp.ClientSession() as s:
        resp = await s.post(server.url + "/v1/chat/completions", json=body)
        await resp.content.readline()  # the stream is running: a drain would wait for it
        server.proc.send_signal(signal.SIGINT)
        await eventually(
            lambda: "received SIGINT, stopping" in server.log.read_text(), what="first signal"
        )
        server.proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(server.proc.wait, 30)
        resp.close()
    assert code == 0, server.log.read_text()
    assert gone(workers)
    events = (tmp_path / "data" / "events.jsonl").read_text()
    assert '"reason":"shutdown"' in events, "the workers were stopped and it was recorded"


async def test_sigterm_lets_running_streams_finish(server: ServerProcess, tmp_path: Path) -> None:
    """One SIGTERM while a stream runs: the stream ends with [DONE] (the drain waits for it),
    the port stops accepting, and the server exits 0 with no worker left."""
    workers = await load_model(server)
    body = {"model": "tiny", "stream": True, "max_tokens": 300,
            "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
    lines: list[bytes] = []
    async with (
        aiohttp.ClientSession() as s,
        s.post(server.url + "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            lines.append(line[6:].strip())
            if len(lines) == 1:
                server.proc.send_signal(signal.SIGTERM)
                await eventually(
                    lambda: "received SIGTERM, stopping" in server.log.read_text(),
                    what="the signal",
                )
                with pytest.raises(aiohttp.ClientConnectionError):  # no new work
                    async with aiohttp.ClientSession() as other:
                        await other.get(server.url + "/v1/models")
    assert lines[-1] == b"[DONE]", "the running stream was cut"
    code = await asyncio.to_thread(server.proc.wait, 30)
    assert code == 0, server.log.read_text()
    assert gone(workers)


async def test_sigkilled_supervisor_leaves_no_spare_either(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """With prewarm, spare processes run under the same guard: a kill -9 of the supervisor
    takes the loaded worker and the spare with it."""
    port = free_port()
    config = tmp_path / "models.yaml"
    config.write_text(
        f"server: {{port: {port}, data_dir: {tmp_path / 'data'}, prewarm: true}}\n"
        f"models:\n  tiny: {{path: {tiny_models['a']}}}\n"
    )
    async with cli_server(config, port, tmp_path, tmp_path / "server.log") as proc:
        url = f"http://127.0.0.1:{port}"
        server = ServerProcess(proc, url, tmp_path / "server.log")
        await load_model(server)  # adopts the first spare; a replacement follows

        def worker_and_spare() -> bool:
            return sum("mlx_lm" in " ".join(p.cmdline()) for p in server.workers()) >= 2

        await eventually(worker_and_spare, timeout=60, what="a worker and a spare")
        processes = server.workers()
        proc.kill()
        await asyncio.to_thread(proc.wait, 30)
        await eventually(lambda: gone(processes), timeout=15, what="worker and spare to exit")
