"""The worker guard: runs a module in-process, can hide modules, dies with its supervisor."""

from __future__ import annotations

import os
import subprocess
import sys


def run_guard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlx_serve.workers.guard", *args],
        input="",  # EOF at once would kill the group; timeit finishes first or is killed
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        start_new_session=True,  # the guard kills its process group on stdin EOF
    )


def run_probe(probe: str, *guard_flags: str) -> tuple[int, str]:
    """Run Python source ``probe`` as the guarded module (through ``timeit``), its stdin a pipe
    held open as the supervisor holds it; the exit code and stderr."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_serve.workers.guard", *guard_flags,
             "timeit", "-n", "1", "-r", "1", probe],
            stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        os.close(read_end)
        _, stderr = proc.communicate(timeout=120)
    finally:
        os.close(write_end)
    return proc.returncode, stderr


def test_without_torch_keeps_transformers_from_importing_it() -> None:
    probe = (
        "import sys\n"
        "from transformers.utils import import_utils\n"
        "import transformers\n"
        "assert not import_utils.is_torch_available()\n"
        "assert 'torch' not in sys.modules  # not imported, and not left as a None entry\n"
    )
    returncode, stderr = run_probe(probe, "--without", "torch")
    assert returncode == 0, stderr


def test_mlx_lm_admits_new_requests_every_so_often() -> None:
    # mlx_lm's generation loop takes new requests once per TimeBudget (0.5 s by default);
    # the guard's flag shortens the default the server builds its budget with.
    probe = (
        "from mlx_lm import server\n"
        "assert server.TimeBudget()._budget == 0.002, server.TimeBudget()._budget\n"
        "assert isinstance(server.TimeBudget(), server.TimeBudget.__mro__[1])\n"
    )
    returncode, stderr = run_probe(probe, "--without", "torch", "--mlx-lm-admit-every", "0.002")
    assert returncode == 0, stderr


def test_socketserver_servers_listen_long_and_send_each_write_at_once() -> None:
    # mlx_lm server is an http.server: a listen backlog of 5 dropped bursts, and Nagle's
    # algorithm held token events back while the router let earlier ones gather unread.
    probe = (
        "import socket, socketserver, threading\n"
        "assert socketserver.TCPServer.request_queue_size >= 128\n"
        "seen = []\n"
        "class H(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))\n"
        "srv = socketserver.TCPServer(('127.0.0.1', 0), H)\n"
        "serve = threading.Thread(target=srv.handle_request)\n"
        "serve.start()\n"
        "socket.create_connection(srv.server_address).close()\n"
        "serve.join(60)\n"
        "srv.server_close()\n"
        "assert seen and seen[0] != 0, seen\n"
    )
    returncode, stderr = run_probe(probe)
    assert returncode == 0, stderr


def test_usage_error_without_a_module() -> None:
    result = run_guard("--without", "torch")
    assert result.returncode != 0 and "usage" in result.stderr


def test_stdin_eof_kills_only_the_guard_when_it_is_not_a_group_leader() -> None:
    # Regression: run by hand (in the caller's process group), EOF on stdin used to SIGKILL
    # the caller's whole group - the shell or the test runner.
    result = subprocess.run(
        [sys.executable, "-m", "mlx_serve.workers.guard", "timeit", "-n", "1", "-r", "1",
         "import threading; threading.Event().wait()"],  # blocks until killed
        input="", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == -9  # the guard ended itself; this test process survived
