"""The CLI finds the running server through its runtime file, whatever models.yaml says now.

A real server (``mlx-serve start`` as a process, no model, so nothing loads) started on
another port than its config's; then the config is edited (another port) and broken (invalid
YAML), and ``status``, ``reload``, ``logs``, ``ps``, ``stop`` and ``restart`` are run exactly as
a user runs them (a subprocess, output to a pipe: 80 columns, no colors).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from mlx_serve import __version__
from mlx_serve.pidfile import pid_path
from mlx_serve.runtime_file import POINTER_DIR, RuntimeInfo, read_runtime, runtime_path
from mlx_serve.workers.process import free_port
from tests.conftest import wait_until

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mlx_serve.cli.main"]
BROKEN_YAML = "server:\n  port: [18000\nmodels: {}\n"


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: the default data dir is ``home``, no config or URL named."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLX_SERVE_URL", "MLX_API_KEY", "MLX_SERVE_CONFIG")
    }
    env.update(MLX_SERVE_HOME=str(home), COLUMNS="80", NO_COLOR="1")
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def write_config(path: Path, **server: object) -> Path:
    settings = {"stop_timeout": 5, "watch_config": False, **server}
    path.write_text(yaml.safe_dump({"server": settings, "models": {}}))
    return path


def runtime_of(data_dir: Path, pid: int) -> RuntimeInfo | None:
    info = read_runtime(runtime_path(data_dir))
    return info if info is not None and info.pid == pid else None


@contextlib.contextmanager
def foreground(
    env: dict[str, str], config: Path, data_dir: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``mlx-serve start --config CONFIG ARGS`` in the foreground, until its runtime file is
    written; SIGTERM (then SIGKILL) at the end if it still runs."""
    log = config.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "start", "--config", str(config), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return runtime_of(data_dir, proc.pid) is not None

        wait_until(ready, 60, "the server's runtime file")
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def config_line(line: str, config: Path) -> bool:
    """``config /path/models.yaml``, or its end after ``…`` when the path is too long for 80
    columns (pytest's temporary directories often are)."""
    shown = line.removeprefix("config ")
    return shown == str(config) or (shown.startswith("…") and str(config).endswith(shown[1:]))


def header(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    return lines


def test_found_on_another_port_after_an_edit_and_with_a_broken_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config_port, port, edited_port = free_port(), free_port(), free_port()
    config = write_config(tmp_path / "models.yaml", port=config_port)
    env = user_env(home)
    url = f"http://127.0.0.1:{port}"
    with foreground(env, config, home, "--port", str(port)) as (proc, log):
        # The runtime file: the port the server really listens on, not the config's.
        info = runtime_of(home, proc.pid)
        assert info is not None
        assert (info.url, info.port, info.argv_port) == (url, port, port)
        assert (info.data_dir, info.config_path, info.version) == (home, config, __version__)
        assert info.started_at <= time.time()
        # `start` says where to point clients and a browser.
        wait_until(lambda: "/dashboard" in log.read_text(), 10, "the URLs in the log")
        assert f"{url}/v1" in log.read_text() and f"{url}/dashboard" in log.read_text()

        # status: URL, pid, uptime and config in the header, with --config or without.
        for args in (["--config", str(config)], []):
            lines = header(cli(env, "status", *args))
            assert lines[0].startswith(f"mlx-serve {__version__} · {url} · pid {proc.pid} · up ")
            assert config_line(lines[1], config), lines[1]

        # Edited: the config names another port now; the server still runs on its own.
        write_config(config, port=edited_port)
        lines = header(cli(env, "status", "-c", str(config)))
        assert f" · {url} · pid {proc.pid}" in lines[0]
        reloaded = cli(env, "reload", "-c", str(config))
        assert reloaded.returncode == 0, reloaded.stderr
        assert "needs restart" in reloaded.stdout and "port" in reloaded.stdout

        # Broken: status, logs and ps still reach it (and say the file is broken).
        config.write_text(BROKEN_YAML)
        status = cli(env, "status", "-c", str(config))
        lines = header(status)
        assert f" · {url} · pid {proc.pid}" in lines[0]
        assert "warning: " in status.stderr and "invalid YAML" in status.stderr
        logs = cli(env, "logs", "-c", str(config), "-n", "5")
        assert logs.returncode == 0, logs.stderr
        assert "supervisor" in logs.stdout and "reading" not in logs.stderr, "from the server"
        ps = cli(env, "ps", "-c", str(config))
        assert ps.returncode == 0 and ps.stdout.strip() == "no model is loaded", ps.stdout

        # restart with a broken config: refused before anything is stopped or started.
        restart = cli(env, "restart", "-c", str(config))
        assert restart.returncode == 2, restart.stderr
        assert "invalid YAML" in restart.stderr
        assert f"the running server (pid {proc.pid}) is left alone" in restart.stderr
        assert proc.poll() is None and runtime_of(home, proc.pid) is not None
        assert not (home / "logs" / "server.log").exists(), "no second server was started"

        # stop: finds it through the runtime file, though the config cannot be read.
        stopped = cli(env, "stop", "-c", str(config))
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped mlx-serve (pid {proc.pid})" in stopped.stderr
        assert proc.wait(30) == 0
    assert not runtime_path(home).exists() and not pid_path(home).exists()
    gone = cli(env, "status", "-c", str(config))
    assert gone.returncode == 3 and "not running" in gone.stderr


def test_a_server_on_another_data_dir_is_found_from_the_default_one(tmp_path: Path) -> None:
    """`start --detach` with `data_dir: ./data` in the config: with the config broken, a
    command run without --config still finds it (the copy in the default data dir), and
    `restart` brings it back with the same config and --port."""
    home, data = tmp_path / "home", tmp_path / "data"
    port = free_port()
    config = write_config(tmp_path / "models.yaml", port=free_port(), data_dir="data")
    env = user_env(home)
    started = cli(env, "start", "--detach", "--config", str(config), "--port", str(port))
    pids: list[int] = []
    try:
        assert started.returncode == 0, started.stderr
        info = read_runtime(runtime_path(data))
        assert info is not None
        pids.append(info.pid)
        url = f"http://127.0.0.1:{port}"
        out = " ".join(started.stderr.split())
        assert f"started in the background (pid {info.pid})" in out
        assert f"OpenAI API {url}/v1" in out and f"dashboard {url}/dashboard" in out
        (pointer,) = (home / POINTER_DIR).glob("*.json")
        assert read_runtime(pointer) == info

        config.write_text(BROKEN_YAML)
        lines = header(cli(env, "status"))
        assert f" · {url} · pid {info.pid}" in lines[0] and config_line(lines[1], config)

        write_config(config, port=free_port(), data_dir="data")
        restarted = cli(env, "restart")
        assert restarted.returncode == 0, restarted.stderr
        assert f"stopped mlx-serve (pid {info.pid})" in restarted.stderr
        again = read_runtime(runtime_path(data))
        assert again is not None and again.pid != info.pid
        pids.append(again.pid)
        assert (again.url, again.config_path) == (url, config), "same --port, same config"

        stopped = cli(env, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped mlx-serve (pid {again.pid})" in stopped.stderr
        assert not runtime_path(data).exists() and not pointer.exists()
    finally:
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).terminate()


def test_stale_runtime_files_are_ignored(tmp_path: Path) -> None:
    """A runtime file left by a killed server (its pid dead, or reused by another program)
    names no server: the commands fall back to the config and never signal a stranger."""
    home = tmp_path / "home"
    port = free_port()
    config = write_config(tmp_path / "models.yaml", port=port)
    env = user_env(home)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE) as stranger:
        try:
            for pid in (int(dead.stdout), stranger.pid):
                stale = {
                    "pid": pid,
                    "url": f"http://127.0.0.1:{free_port()}",
                    "host": "127.0.0.1",
                    "port": 1,
                    "data_dir": str(home),
                    "config_path": str(config),
                    "version": __version__,
                    "started_at": time.time(),
                }
                runtime_path(home).parent.mkdir(parents=True, exist_ok=True)
                runtime_path(home).write_text(json.dumps(stale))
                status = cli(env, "status", "-c", str(config))
                assert status.returncode == 3, status.stdout
                assert f"not running at http://127.0.0.1:{port} " in status.stderr
                stop = cli(env, "stop", "-c", str(config))
                assert stop.returncode == 3 and "not running" in stop.stderr
            assert stranger.poll() is None, "the other program was left alone"
        finally:
            stranger.kill()
