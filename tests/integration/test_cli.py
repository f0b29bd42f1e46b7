"""The operator commands against a real server: ``status``, ``logs``, ``models ...``,
``reload``, ``stop``/``restart``, run exactly as a user runs them (``python -m
mlx_serve.cli.main ...`` in a subprocess, output to a pipe, so 80 columns and no colors).

One server (a subprocess started with ``mlx-serve start``, a tiny local llama, an API key in
its config, and a fake Hugging Face hub for ``models pull``) serves the module; the commands
find it, and its key, through ``$MLX_SERVE_CONFIG`` like a user's shell would.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest
import yaml

from mlx_serve import __version__
from mlx_serve.cli.client import Client, ServerNotRunning, ServerTooOld
from mlx_serve.observability.event_log import EventLogFile
from mlx_serve.pidfile import pid_path, running_pid
from mlx_serve.runtime_file import runtime_path
from mlx_serve.supervisor.events import ModelLoaded, Swap, WorkerCrashed
from mlx_serve.testing.fake_hub import FakeHub
from mlx_serve.tiny_models import build_text_model
from mlx_serve.workers.process import free_port
from tests.conftest import wait_until

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mlx_serve.cli.main"]
API_KEY = "sekret"
LONG_NAME = "tiny-with-a-model-name-far-too-long-for-an-80-column-table"
HUB_REPO = "mlx-serve-test/tiny"
NOT_RUNNING = "(start it with `mlx-serve start` or `mlx-serve service install`)"


def cli_env(home: Path, config: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell pointed at ``config``, without ambient settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLX_SERVE_URL", "MLX_API_KEY")}
    env.update(MLX_SERVE_HOME=str(home), MLX_SERVE_CONFIG=str(config), COLUMNS="80", NO_COLOR="1")
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    home: Path
    config: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run(self.env | env, *args)

    def client(self) -> Client:
        return Client(self.url, API_KEY)


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # a confirmation prompt reads EOF: it must not hang
        check=False,
    )


def start_server(home: Path, config: Path, env: dict[str, str]) -> Server:
    """``mlx-serve start`` in the foreground as a subprocess; returns once /health answers."""
    log = home / "server-stdout.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "start", "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    port = yaml.safe_load(config.read_text())["server"]["port"]
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            Client(url).health()
        except ServerNotRunning:
            return False
        return True

    wait_until(healthy, 60, "the server to answer /health")
    return Server(url, home, config, env, proc, log)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server; fail if it or any of its workers outlives the grace period."""
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    wait_until(
        lambda: not [c for c in children if c.is_running() and c.status() != "zombie"],
        15,
        "the workers to exit with the server",
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("cli-models") / "tiny", seed=1)


@pytest.fixture(scope="module")
def hub(tiny_model: Path) -> Iterator[FakeHub]:
    with FakeHub({HUB_REPO: tiny_model}) as fake:
        yield fake


def write_config(path: Path, models: dict[str, object], **server: object) -> Path:
    path.write_text(yaml.safe_dump({"server": server, "models": models}))
    return path


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, hub: FakeHub
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("cli-home")
    config = write_config(
        home / "models.yaml",
        {
            "tiny": {"path": str(tiny_model), "aliases": ["t"]},
            LONG_NAME: {"path": str(tiny_model)},
            "hubtiny": {"path": HUB_REPO},
        },
        port=free_port(),
        api_key=API_KEY,
        stop_timeout=5,
        watch_config=False,  # `reload` is tested; a file watcher would race it
    )
    env = cli_env(home, config)
    server_env = {
        k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    server_env.update(
        HF_ENDPOINT=hub.url, HF_HOME=str(home / "hf-home"), HF_HUB_CACHE=str(home / "hf-cache")
    )
    srv = start_server(home, config, server_env)
    srv.env = env  # the commands run with the user's environment, not the server's
    try:
        yield srv
    finally:
        stop_server(srv.proc)


class Lines:
    """The stdout of a long-running command, line by line, readable with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout}s; got: {self.seen}") from None
            if line is None:
                raise AssertionError(f"the command ended before {what}; got: {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def join(self) -> None:
        self._thread.join(10)


@contextlib.contextmanager
def spawn(env: dict[str, str], *args: str) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """A command that runs until stopped (``-f``, ``--watch``); killed and reaped at the end."""
    with subprocess.Popen(
        [*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        lines = Lines(proc)
        try:
            yield proc, lines
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            lines.join()  # the reader has seen EOF before Popen closes the pipe


def interrupt(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C: the command ends with 130 and no traceback."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def chat(srv: Server, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    request = urllib.request.Request(
        f"{srv.url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


# ------------------------------------------------------------------ status


def test_status_table_and_json(server: Server) -> None:
    result = server.run("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The server, like `lms status`: version, URL, pid (from its runtime file), uptime.
    assert lines[0].startswith(f"mlx-serve {__version__} · {server.url} · pid {server.proc.pid}")
    assert " · up " in lines[0]
    shown = lines[1].removeprefix("config ")
    assert shown == str(server.config) or str(server.config).endswith(shown.removeprefix("…"))
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert "model" in result.stdout and "tok/s" in result.stdout
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["tiny"][1:3] == ["text", "unloaded"] or rows["tiny"][2] == "loaded"
    (long_row,) = [line for line in lines if line.startswith("tiny-with")]
    assert "…" in long_row and LONG_NAME not in result.stdout
    assert "\x1b[" not in result.stdout, "no color codes in a pipe"

    result = server.run("status", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert {m["name"] for m in stats["models"]} == {"tiny", LONG_NAME, "hubtiny"}
    assert stats["config_path"] == str(server.config)


def test_status_watch_refreshes_until_ctrl_c(server: Server) -> None:
    with spawn(server.env, "status", "--watch", "--json", "--interval", "0.2") as (proc, lines):
        first = lines.wait_for(lambda line: line.startswith("{"), 30, "a first snapshot")
        second = lines.wait_for(lambda line: line.startswith("{"), 30, "a refresh")
        assert json.loads(first)["version"] == json.loads(second)["version"]
        interrupt(proc)


def test_not_running(tmp_path: Path) -> None:
    """Nothing listens: every server command says so and exits 3; `logs` reads the file."""
    port = free_port()
    home = tmp_path / "home"
    config = write_config(tmp_path / "models.yaml", {"m": {"path": "org/m"}}, port=port)
    env = cli_env(home, config)
    for args in (["status"], ["ps"], ["models", "list"], ["models", "load", "m"], ["reload"]):
        result = run(env, *args)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert result.stderr.strip() == (
            f"mlx-serve is not running at http://127.0.0.1:{port} {NOT_RUNNING}"
        )
    result = run(env, "status", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3 and "not running at http://127.0.0.1:" in result.stderr

    result = run(env, "stop")
    assert result.returncode == 3 and "mlx-serve is not running" in result.stderr

    # `logs` falls back to the event log file the server left behind.
    sink = EventLogFile(home / "events.jsonl")
    now = time.time()
    sink(replace(ModelLoaded(model="m", duration_s=1.5, pid=7, type="text"), seq=1, ts=now - 3600))
    sink(replace(WorkerCrashed(model="m", exit_code=-9, log_tail="x"), seq=2, ts=now - 10))
    sink(replace(Swap(model="other", to="m"), seq=3, ts=now - 5))
    sink.close()
    result = run(env, "logs")
    assert result.returncode == 0, result.stderr
    assert f"reading {home / 'events.jsonl'}" in result.stderr
    assert len(result.stdout.splitlines()) == 3 and "in 1.50s" in result.stdout
    filtered = run(env, "logs", "--since", "1m", "--model", "m")
    assert filtered.stdout.splitlines() == [
        line for line in result.stdout.splitlines() if "exit_code=-9" in line
    ]
    assert run(env, "logs", "--since", "soon").returncode == 2


def test_wrong_api_key(server: Server) -> None:
    result = server.run("status", "--api-key", "wrong")
    assert result.returncode == 4, result.stderr
    assert "a valid API key is required" in result.stderr
    assert "--api-key" in result.stderr and "MLX_API_KEY" in result.stderr
    # Like the server, the CLI takes the config's key before $MLX_API_KEY.
    assert server.run("models", "list", MLX_API_KEY="wrong").returncode == 0


# ------------------------------------------------------------------ models


def test_models_load_show_unload(server: Server) -> None:
    result = server.run("models", "load", "t", "--keep-alive", "30m")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("✓ tiny loaded in ")
    assert "tiny: queued" in result.stderr and "tiny: loading" in result.stderr

    listing = server.run("models", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines() if line.split()}
    # The size of its weights on disk; the hub model is not downloaded yet: nothing.
    assert rows["tiny"][1:3] == ["text", "loaded"] and rows["tiny"][4] in ("KiB", "MiB")
    assert rows["tiny"][5] == "t"
    assert rows["hubtiny"][1:4] == ["text", "unloaded", "—"]
    assert all(len(line) <= 80 for line in listing.stdout.splitlines())

    # ps: only what is loaded, with its memory, time until it is unloaded, and worker pid.
    worker_pid = json.loads(server.run("models", "show", "tiny", "--json").stdout)["pid"]
    ps = server.run("ps")
    assert ps.returncode == 0, ps.stderr
    lines = ps.stdout.splitlines()
    assert "until unload" in lines[0] and all(len(line) <= 80 for line in lines)
    (row,) = [line.split() for line in lines[2:]]
    assert row[:3] == ["tiny", "text", "loaded"] and row[4] in ("KiB", "MiB")
    assert row[5] in ("29m59s", "30m") or row[5].startswith("29m"), row
    assert row[6] == str(worker_pid)
    loaded = json.loads(server.run("ps", "--json").stdout)["models"]
    assert [m["name"] for m in loaded] == ["tiny"]

    status = server.run("status")
    (row,) = [line.split() for line in status.stdout.splitlines() if line.startswith("tiny ")]
    assert row[1:3] == ["text", "loaded"] and row[4] == "MiB"
    assert row[-4] in ("29m", "30m"), "idle left: the keep_alive of the load"

    shown = server.run("models", "show", "tiny")
    assert shown.returncode == 0, shown.stderr
    assert "pid " in shown.stdout and "keep_alive" in shown.stdout and "llama" in shown.stdout
    data = json.loads(server.run("models", "show", "t", "--json").stdout)
    assert data["name"] == "tiny" and data["status"] == "loaded" and data["keep_alive_s"] == 1800

    result = server.run("models", "unload", "tiny")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("✓ tiny unloaded in ")
    data = json.loads(server.run("models", "list", "--json").stdout)
    assert {m["name"]: m["status"] for m in data["models"]}["tiny"] == "unloaded"
    again = server.run("models", "unload", "t")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "tiny is not loaded; nothing to unload"
    assert server.run("ps").stdout.startswith("no model is loaded (3 configured")

    result = server.run("models", "load", "nope")
    assert result.returncode == 1
    assert "error: model 'nope' not found; available models:" in result.stderr


def test_models_pull_with_progress_then_rm(server: Server, hub: FakeHub) -> None:
    server.client().unload("tiny")  # files of a loaded model cannot be deleted
    result = server.run("models", "pull", HUB_REPO)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{HUB_REPO}: " in out and " files, " in out  # the manifest line
    assert "model.safetensors" in out and "config.json" in out  # a bar per file
    assert f"✓ pulled {HUB_REPO} (" in out and "downloaded)" in out
    assert hub.file_gets("model.safetensors"), "the weights came from the (fake) hub"
    details = json.loads(server.run("models", "show", "hubtiny", "--json").stdout)["details"]
    assert details["cached"] is True and details["size_bytes"] > 0

    refused = server.run("models", "rm", "hubtiny")  # stdin is not a terminal: no "yes"
    assert refused.returncode == 1 and "Delete the cached files of" in refused.stderr
    details = json.loads(server.run("models", "show", "hubtiny", "--json").stdout)["details"]
    assert details["cached"] is True, "nothing is deleted without a yes"

    result = server.run("models", "rm", "hubtiny", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"✓ deleted {HUB_REPO} (") and "freed" in result.stdout
    details = json.loads(server.run("models", "show", "hubtiny", "--json").stdout)["details"]
    assert details["cached"] is False

    local = server.run("models", "rm", "tiny", "--yes")
    assert local.returncode == 1 and "add --local" in local.stderr
    # Without --yes: refused at once, not after a "Delete ...?" the user answered.
    asked = server.run("models", "rm", "t")
    assert asked.returncode == 1 and "add --local" in asked.stderr
    assert "Delete" not in asked.stderr

    missing = server.run("models", "pull", "mlx-serve-test/nope")
    assert missing.returncode == 1 and "error:" in missing.stderr


# ------------------------------------------------------------------ logs


def test_logs_follow_prints_new_events(server: Server) -> None:
    """`logs -f` as a user runs it: a request made while it runs shows up as a line."""
    server.client().unload("tiny")  # the request below loads it again: more events
    since = str(time.time())
    with spawn(server.env, "logs", "-f", "--model", "tiny", "--since", since) as (proc, lines):
        chat(server, "t")
        line = lines.wait_for(lambda x: " request " in x and " 200 " in x, 60, "a request line")
        assert "tiny 200 /v1/chat/completions" in line and "ttft" in line
        assert any("model.loaded" in x for x in lines.seen), "the load came first"
        interrupt(proc)


def test_logs_recent_events_and_worker_log(server: Server) -> None:
    chat(server, "tiny")
    result = server.run("logs", "--type", "worker", "-n", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 1 <= len(lines) <= 3 and all(" worker." in line for line in lines)

    result = server.run("logs", "--worker", "t", "-n", "1000")
    assert result.returncode == 0, result.stderr
    assert "=== mlx-serve: starting tiny:" in result.stdout
    assert len(server.run("logs", "--worker", "tiny", "-n", "2").stdout.splitlines()) == 2

    result = server.run("logs", "--worker", "hubtiny")
    assert result.returncode == 1 and "no worker log for 'hubtiny'" in result.stderr


def test_logs_follow_a_worker_log(server: Server) -> None:
    with spawn(server.env, "logs", "--worker", "tiny", "-f", "-n", "0") as (proc, lines):
        # The worker writes a line per request it serves; keep asking until one arrives
        # (the follower may open the file after the first one was written).
        deadline = time.monotonic() + 60
        while not lines.seen:
            assert time.monotonic() < deadline, "no worker log line"
            chat(server, "tiny")
            with contextlib.suppress(AssertionError):
                lines.wait_for(lambda _: True, 2, "a worker log line")
        interrupt(proc)


# ------------------------------------------------------------------ reload


def test_reload_reports_what_changed(server: Server) -> None:
    original = server.config.read_text()
    try:
        result = server.run("reload")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("no changes")

        data = yaml.safe_load(original)
        data["models"]["extra"] = {"path": "org/extra"}
        server.config.write_text(yaml.safe_dump(data))
        result = server.run("reload")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("added         extra")
        assert "extra" in server.run("models", "list").stdout

        server.config.write_text(original + "\n  bad: {path: 3}\n")
        result = server.run("reload")
        assert result.returncode == 2
        assert "models.yaml is invalid; nothing changed" in result.stdout
        assert "extra" in server.run("models", "list").stdout
    finally:
        server.config.write_text(original)
        restored = server.run("reload")
    assert restored.returncode == 0 and "removed       extra" in restored.stdout


def test_reload_on_a_server_without_it(tmp_path: Path) -> None:
    """An older server answers 404 for /api/reload: the CLI says so instead of a raw 404."""

    class OldServer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = {"error": {"message": f"no route for POST {self.path}", "code": "not_found"}}
            data = json.dumps(body).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldServer) as old:
        thread = threading.Thread(target=old.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{old.server_address[1]}"
            with pytest.raises(ServerTooOld):
                Client(url).reload()
            config = write_config(tmp_path / "models.yaml", {}, port=free_port())
            result = run(cli_env(tmp_path, config), "reload", "--url", url)
            assert result.returncode == 1
            assert f"the server at {url} has no reload" in result.stderr
            assert "mlx-serve restart" in result.stderr
        finally:
            old.shutdown()
            thread.join(10)


# ------------------------------------------------------------------ stop, restart


def test_stop_and_restart(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    config = write_config(
        tmp_path / "models.yaml", {"tiny": {"path": str(tiny_model)}}, port=free_port()
    )
    env = cli_env(home, config)
    first = start_server(home, config, env)
    try:
        wait_until(lambda: running_pid(home) == first.proc.pid, 30, "the pid file")
        result = run(env, "restart")
        assert result.returncode == 0, result.stderr
        assert f"stopped mlx-serve (pid {first.proc.pid})" in result.stderr
        assert first.proc.wait(10) == 0
        second = running_pid(home)
        assert second is not None and second != first.proc.pid
        assert run(env, "status").returncode == 0, "the restarted server answers"

        result = run(env, "stop")
        assert result.returncode == 0, result.stderr
        assert f"stopped mlx-serve (pid {second})" in result.stderr
        assert not psutil.pid_exists(second) or psutil.Process(second).status() == "zombie"
        assert not runtime_path(home).exists() and not pid_path(home).exists()
        assert run(env, "status").returncode == 3
        assert run(env, "stop").returncode == 3
    finally:
        pid = running_pid(home)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        if first.proc.poll() is None:
            stop_server(first.proc)


def test_stop_never_signals_a_stranger(tmp_path: Path) -> None:
    """A stale pid file whose pid now belongs to another program: `stop` leaves it alone."""
    home = tmp_path / "home"
    home.mkdir()
    config = write_config(tmp_path / "models.yaml", {}, port=free_port())
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE) as stranger:
        try:
            (home / "mlx-serve.pid").write_text(f"{stranger.pid}\n")
            result = run(cli_env(home, config), "stop")
            assert result.returncode == 3 and "not running" in result.stderr
            assert stranger.poll() is None, "the other program is still running"
        finally:
            stranger.kill()
