"""The runtime file (how commands find the running server), the exit-code table, and the help.

No server runs here: "live servers" are idle child processes whose command line reads like
``mlx-serve start`` (what :func:`mlx_serve.runtime_file.is_alive` checks; those tests are
marked slow), and ``/health`` is answered by a stdlib HTTP server. The CLI against a real
server is in ``tests/integration/test_cli_runtime.py``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mlx_serve import __version__
from mlx_serve.cli.exit_codes import TABLE, ExitCode, table_text
from mlx_serve.cli.main import app
from mlx_serve.cli.settings import load_settings
from mlx_serve.grammar import article, with_article
from mlx_serve.runtime_file import (
    RUNTIME_FILE,
    RuntimeInfo,
    find_server,
    is_alive,
    pointer_path,
    read_runtime,
    remove_runtime,
    runtime_path,
    write_runtime,
)
from mlx_serve.workers.process import free_port

README = Path(__file__).parents[2] / "README.md"


@contextlib.contextmanager
def fake_server_process() -> Iterator[subprocess.Popen[bytes]]:
    """An idle process whose command line looks like `mlx-serve start`; killed at the end."""
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()", "mlx-serve", "start"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def record(pid: int, data_dir: Path, config: Path | None, port: int = 8095) -> RuntimeInfo:
    return RuntimeInfo(
        pid=pid,
        url=f"http://127.0.0.1:{port}",
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        config_path=config,
        version=__version__,
        started_at=time.time(),
        argv_port=port,
    )


# ------------------------------------------------------------------ the file


def test_write_read_remove(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "elsewhere"
    info = record(4242, home, tmp_path / "models.yaml")
    assert write_runtime(info, home) == [home / RUNTIME_FILE]
    assert read_runtime(runtime_path(home)) == info
    data = json.loads(runtime_path(home).read_text())
    assert data["url"] == "http://127.0.0.1:8095" and data["config_path"].endswith("models.yaml")
    assert "api_key" not in data, "no secret in a file that outlives a reload"
    assert sorted(p.name for p in home.iterdir()) == [RUNTIME_FILE], "no temp file left"

    # Another data dir: the record there, and a copy findable from the default one.
    away = record(4343, other, None)
    written = write_runtime(away, home)
    assert written == [runtime_path(other), pointer_path(home, other)]
    assert read_runtime(pointer_path(home, other)) == away

    remove_runtime(written, pid=1)  # not its pid: a newer server's files stay
    assert all(p.exists() for p in written)
    remove_runtime(written, pid=4343)
    assert not any(p.exists() for p in written)
    assert runtime_path(home).exists()


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"pid": "1"}', '{"pid": 0, "url": "u", "host": "h", "port": 1}', "\xff"],
)
def test_a_file_that_is_not_a_record_is_ignored(tmp_path: Path, text: str) -> None:
    path = tmp_path / RUNTIME_FILE
    path.write_text(text)
    assert read_runtime(path) is None
    assert read_runtime(tmp_path / "missing.json") is None


@pytest.mark.slow  # starts idle processes standing in for servers
def test_is_alive_checks_the_process_is_the_server(tmp_path: Path) -> None:
    with fake_server_process() as proc:
        assert is_alive(record(proc.pid, tmp_path, None))
        # A record older than the process: the pid was reused after the server died.
        old = record(proc.pid, tmp_path, None)
        assert not is_alive(RuntimeInfo(**{**old.__dict__, "started_at": time.time() - 3600}))
    proc.wait()
    assert not is_alive(record(proc.pid, tmp_path, None)), "dead"
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"]) as stranger:
        try:
            assert not is_alive(record(stranger.pid, tmp_path, None)), "not an mlx-serve"
        finally:
            stranger.kill()


@pytest.mark.slow  # starts idle processes standing in for servers
def test_find_server_by_config_then_data_dir_then_the_only_one(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    config_a, config_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    config_a.write_text("")
    config_b.write_text("")
    with fake_server_process() as a, fake_server_process() as b:
        write_runtime(record(a.pid, home, config_a, 8001), home)
        write_runtime(record(b.pid, data, config_b, 8002), home)

        def find(config: Path, data_dir: Path, any_server: bool = False) -> int | None:
            found = find_server(
                config_path=config, data_dir=data_dir, home=home, any_server=any_server
            )
            return found.pid if found is not None else None

        # The same config file, wherever the (possibly edited) config says the data is.
        assert find(config_b, home) == b.pid
        assert find(tmp_path / "sub" / ".." / "b.yaml", home) == b.pid
        # No server from this config: the one on the data dir it names.
        assert find(tmp_path / "c.yaml", data) == b.pid
        assert find(tmp_path / "c.yaml", home) == a.pid
        # Neither, and two servers run: none is guessed, even when no config was named.
        assert find(tmp_path / "c.yaml", tmp_path / "x", any_server=True) is None
        a.kill()
        a.wait()
        assert find(config_a, home) is None, "a dead server's file is stale"
        assert find(tmp_path / "c.yaml", tmp_path / "x", any_server=True) == b.pid
        assert find(tmp_path / "c.yaml", tmp_path / "x") is None


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "loaded": []}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def health_server() -> Iterator[int]:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join(10)


@pytest.mark.slow  # starts idle processes standing in for servers
def test_settings_use_the_runtime_file_only_when_the_server_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    config = tmp_path / "models.yaml"
    config.write_text("server: {port: 9001}\nmodels: {}\n")
    monkeypatch.setenv("MLX_SERVE_HOME", str(home))
    monkeypatch.delenv("MLX_SERVE_URL", raising=False)
    monkeypatch.delenv("MLX_SERVE_CONFIG", raising=False)
    with fake_server_process() as proc, health_server() as port:
        write_runtime(record(proc.pid, home, config, port), home)
        settings = load_settings(config=config)
        assert settings.url == f"http://127.0.0.1:{port}", "the server's port, not the config's"
        assert settings.server is not None and settings.server.pid == proc.pid
        # Broken config: found all the same.
        config.write_text("server: [\n")
        broken = load_settings(config=config)
        assert broken.url == f"http://127.0.0.1:{port}" and broken.config_error is not None
        # --url wins; the rest of the settings still know the server.
        assert load_settings(f"http://127.0.0.1:{port + 1}", config=config).url.endswith(
            str(port + 1)
        )
    # The process is gone: the file is stale and ignored, the config's address is used.
    config.write_text("server: {port: 9001}\nmodels: {}\n")
    settings = load_settings(config=config)
    assert settings.url == "http://127.0.0.1:9001" and settings.server is None

    with fake_server_process() as proc:
        # Alive but not answering: the URL falls back; `stop` (no health check) finds it.
        write_runtime(record(proc.pid, home, config, free_port()), home)
        assert load_settings(config=config).server is None
        assert load_settings(config=config).url == "http://127.0.0.1:9001"
        stop_settings = load_settings(config=config, check_health=False)
        assert stop_settings.server is not None and stop_settings.server.pid == proc.pid


# ------------------------------------------------------------------ exit codes


def test_the_exit_code_table_covers_every_code_once() -> None:
    codes = [code for code, _ in TABLE]
    assert codes == sorted(codes) and set(codes) == set(ExitCode)
    assert int(ExitCode.NOT_INSTALLED) != int(ExitCode.UNAUTHORIZED)
    help_text = " ".join(CliRunner().invoke(app, ["--help"]).stdout.split())
    assert "Exit codes:" in help_text
    for line in table_text().splitlines():
        assert " ".join(line.split()) in help_text


def test_the_readme_documents_the_same_exit_codes() -> None:
    """README's table (``| code | meaning |`` rows under "### Command line") is the program's."""
    text = README.read_text()
    section = text[text.index("### Command line") :]
    section = section[: section.index("\n### ", 1)]
    rows = dict(re.findall(r"^\| `?(\d+)`? \| (.+?) \|$", section, flags=re.MULTILINE))
    assert {int(code) for code in rows} == {int(code) for code in ExitCode}, rows
    for code, meaning in TABLE:
        assert rows[str(int(code))] == meaning


def test_start_without_a_config_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["start", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == ExitCode.USAGE
    assert "mlx-serve init" in result.output


# ------------------------------------------------------------------ help


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _command_paths(sub, (*prefix, name))


def test_every_command_takes_h_and_shows_no_value_after_a_flag() -> None:
    """`-h` is `--help` everywhere, and a flag shows no `<bool>`: it takes no value."""
    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("ps",) in paths and ("service", "install") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "-h"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: " in result.stdout, path
        assert "<bool>" not in result.stdout, (path, result.stdout)
    start = CliRunner().invoke(app, ["start", "--help"], env={"COLUMNS": "100"}).stdout
    assert "<int>" in start, "options that take a value still say which"
    verbose = next(line for line in start.splitlines() if "--verbose" in line)
    assert "debug" in verbose, "--verbose says what it does"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag(flag: str) -> None:
    result = CliRunner().invoke(app, [flag])
    assert result.exit_code == 0 and result.stdout == f"mlx-serve {__version__}\n"


# ------------------------------------------------------------------ grammar


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("embedding", "an embedding"),
        ("text", "a text"),
        ("vision", "a vision"),
        ("stt", "an stt"),
        ("tts", "a tts"),
        ("rerank", "a rerank"),
        ("input_text", "an input_text"),
        ("MLX", "an MLX"),
    ],
)
def test_with_article(word: str, expected: str) -> None:
    assert with_article(word) == expected
    assert article("") == "a"
