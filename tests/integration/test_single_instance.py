"""One server per data dir, decided by a lock, and a taken port is a clear error.

Every test runs ``mlx-serve start`` as a real process (``python -m mlx_serve.cli.main``), like
a user does; the data dir is ``$MLX_SERVE_HOME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlx_serve.pidfile import AlreadyRunning, acquire_lock, lock_path, pid_path, running_pid
from mlx_serve.runtime_file import is_alive, read_runtime, runtime_path
from mlx_serve.tiny_models import build_text_model
from mlx_serve.workers.process import free_port
from tests.conftest import eventually
from tests.integration.conftest import cli_server

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mlx_serve.cli.main"]


def write_config(path: Path, models: dict[str, object], **server: object) -> Path:
    path.write_text(yaml.safe_dump({"server": {"stop_timeout": 5, **server}, "models": models}))
    return path


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "MLX_SERVE_HOME": str(home), "NO_COLOR": "1"}


def flat(text: str) -> str:
    """Output with line wrapping (rich wraps at 80 columns in a pipe) undone."""
    return " ".join(text.split())


def listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill whatever of ``procs`` still runs on the way out (by pid: only what we started)."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    """In-process: a second acquire fails at once naming the holder; release frees it."""
    lock = acquire_lock(tmp_path)
    try:
        assert lock_path(tmp_path).read_text().strip() == str(os.getpid())
        with pytest.raises(AlreadyRunning) as caught:
            acquire_lock(tmp_path)
        assert caught.value.pid == os.getpid()
        assert f"(pid {os.getpid()})" in str(caught.value)
    finally:
        lock.release()
    with acquire_lock(tmp_path) as again:
        assert again.held
    assert lock_path(tmp_path).exists(), "the lock file is never unlinked"


async def test_two_starts_on_one_data_dir(tmp_path: Path) -> None:
    """Two `start` at the same moment, same data dir, different ports: one serves, the other
    exits 1 naming it. After a SIGKILL of the winner, a new start succeeds: the lock died
    with it."""
    home = tmp_path / "home"
    home.mkdir()
    ports = [free_port(), free_port()]
    configs = [write_config(tmp_path / f"c{i}.yaml", {}, port=p) for i, p in enumerate(ports)]
    logs = [tmp_path / f"start{i}.log" for i in range(2)]
    procs = []
    for config, log in zip(configs, logs, strict=True):
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - returns at once; waits poll
                    [*CLI, "start", "--config", str(config)],
                    env=env_for(home),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    with reaped(*procs):
        await eventually(
            lambda: any(p.poll() is not None for p in procs), 60, "one of the starts to exit"
        )
        (loser_i,) = [i for i, p in enumerate(procs) if p.poll() is not None]
        winner, loser = procs[1 - loser_i], procs[loser_i]
        output = flat(logs[loser_i].read_text())
        assert loser.returncode == 1, output
        assert "mlx-serve is already running" in output and f"(pid {winner.pid})" in output

        # The winner serves (on its own port, never the loser's) and owns the pid file.
        await eventually(
            lambda: winner.poll() is not None or running_pid(home) == winner.pid,
            60,
            "the winner's pid file",
        )
        assert winner.poll() is None, logs[1 - loser_i].read_text()
        assert listens(ports[1 - loser_i]) and not listens(ports[loser_i])

        # A detached start is refused the same way, before it spawns anything.
        detached = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "start", "--detach", "--config", str(configs[loser_i])],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert detached.returncode == 1, detached.stderr
        assert f"(pid {winner.pid})" in flat(detached.stderr)
        assert winner.poll() is None and running_pid(home) == winner.pid

        # The runtime file names the winner, on its own port.
        info = read_runtime(runtime_path(home))
        assert info is not None and info.pid == winner.pid and is_alive(info)
        assert info.url == f"http://127.0.0.1:{ports[1 - loser_i]}"

        # SIGKILL: no cleanup runs, the pid and runtime files stay behind; the kernel drops
        # the lock, and the files are recognised as stale.
        os.kill(winner.pid, signal.SIGKILL)
        winner.wait(30)
        assert pid_path(home).exists() and running_pid(home) is None
        assert lock_path(home).exists()
        assert read_runtime(runtime_path(home)) == info and not is_alive(info)

    async with cli_server(configs[loser_i], ports[loser_i], home, tmp_path / "again.log") as again:
        await eventually(lambda: running_pid(home) == again.pid, 30, "the new server's pid file")
        fresh = read_runtime(runtime_path(home))
        assert fresh is not None and fresh.pid == again.pid, "the stale file was replaced"
        assert fresh.url == f"http://127.0.0.1:{ports[loser_i]}"
    assert not runtime_path(home).exists(), "removed when the server stopped"


def test_port_in_use(tmp_path: Path) -> None:
    """Something else listens on the port: exit 1 with the reason, no pid file, no worker
    (not even a preloaded model's or a prewarmed spare), and the lock is free again."""
    home = tmp_path / "home"
    model = build_text_model(tmp_path / "tiny", seed=1)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "models.yaml",
            {"tiny": {"path": str(model), "preload": True}},
            port=port,
            prewarm=True,
        )
        result = subprocess.run(
            [*CLI, "start", "--config", str(config)],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    output = flat(result.stdout + result.stderr)
    assert result.returncode == 1, output
    assert "could not start the server:" in output and "address already in use" in output
    assert f"('127.0.0.1', {port})" in output
    assert not pid_path(home).exists() and not runtime_path(home).exists()
    # No worker ever started: none logged, none announced.
    assert not list(home.glob("logs/*.log"))
    events = home / "events.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    kinds = [json.loads(line)["kind"] for line in lines]
    assert not [k for k in kinds if k.startswith(("worker.", "spare."))], kinds
    with acquire_lock(home):
        pass  # the failed start did not keep the data dir locked
