"""The servers under test, started the way a user starts them: direct ``mlx_lm server``,
mlx-serve from this repo, and mlx-serve 0.3.0 from PyPI in its own venv."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.lib.client import wait_http_ok
from bench.lib.paths import BENCH_DIR, VENV_BIN
from bench.lib.processes import GuardedProc, Proc, is_live_worker, kill_group
from bench.lib.report import console
from mlx_serve.workers.process import free_port
from mlx_serve.workers.text import GUARD_FLAGS

LEGACY_VENV = BENCH_DIR / ".venv-030"
LEGACY_VERSION = "0.3.0"

HEALTH_TIMEOUT = 60.0  # seconds for a server to answer /health after it was spawned

DIRECT, OURS, LEGACY, WORKER = "direct", "mlx-serve", "mlx-serve-0.3.0", "worker"
LABELS = {
    DIRECT: "direct mlx_lm",
    OURS: "mlx-serve (this repo)",
    LEGACY: f"mlx-serve {LEGACY_VERSION} (PyPI)",
    WORKER: "its worker, no router",
}


class Server:
    """A server under test: how to start it, reach it, and inspect it."""

    kind: str = ""
    proc_class: type[Proc] = Proc  # how its process is started and stopped

    def __init__(
        self,
        workdir: Path,
        logs: Path,
        models: dict[str, Path],
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = env or {}  # added to the server's environment (e.g. PYTHONPATH)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.models = models  # "a"/"b" -> model directory
        self.port = free_port()
        self.proc: Proc | None = None
        self.worker_pids: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def model_id(self, which: str) -> str:
        """What a client sends in ``model`` to reach model ``which`` ("a" or "b")."""
        return f"tiny-{which}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    async def start(self, session: aiohttp.ClientSession) -> float:
        """Spawn the process and wait until it answers /health; the seconds that took."""
        self.proc = self.new_proc()
        self.proc.start()
        try:
            return await wait_http_ok(
                session, self.url + "/health", HEALTH_TIMEOUT, exited=self.exited
            )
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{exc}; log tail:\n{self.proc.log_tail()}") from exc

    def new_proc(self) -> Proc:
        """The process to start (not started yet)."""
        argv, env = self.command()
        env = {**env, **self.extra_env}
        log = self.logs / f"{self.kind}.log"
        return self.proc_class(self.kind, argv, log, env=env, cwd=self.workdir)

    def exited(self) -> str | None:
        """Why the server process is gone (with its log's last line), or None while it runs."""
        if self.proc is None or self.proc.popen is None:
            return None
        code = self.proc.popen.poll()
        if code is None:
            return None
        return f"the server exited with code {code}: {self.proc.log_tail(1)}"

    async def stop(self) -> list[int]:
        """Stop the server; the worker pids still alive afterwards (a leak), killed if so."""
        if self.proc is not None:
            await asyncio.to_thread(self.proc.stop)
            self.port = free_port()  # a restart gets a fresh port
        leaked = [pid for pid in sorted(self.worker_pids) if is_live_worker(pid)]
        for pid in leaked:
            kill_group(pid)  # workers lead their own process group
        return leaked

    async def unload(self, session: aiohttp.ClientSession) -> None:
        """Leave no model loaded."""
        raise NotImplementedError

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """Cumulative {"swaps": n, "loads": n} since the process started."""
        raise NotImplementedError


def router_cpu_s(srv: Server) -> float | None:
    """CPU seconds (user + system) the router process has used so far: its own, not its
    workers' (mlx-serve's run in their own sessions, 0.3.0's are children, not counted)."""
    if isinstance(srv, DirectServer) or srv.proc is None or srv.proc.pid is None:
        return None  # direct mlx_lm has no router
    try:
        times = psutil.Process(srv.proc.pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


class DirectServer(Server):
    kind = DIRECT

    def model_id(self, which: str) -> str:
        return str(self.models[which])  # mlx_lm answers to its model path

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            sys.executable,
            "-m",
            "mlx_lm",
            "server",
            "--model",
            str(self.models["a"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        return argv, {"HF_HUB_OFFLINE": "1"}

    def spawn(self) -> None:
        """Start without waiting (cold start is measured from here)."""
        self.proc = self.new_proc()
        self.proc.start()


class WorkerServer(DirectServer):
    """The worker mlx-serve starts for a text model, on its own: ``mlx_serve.workers.guard``
    (with the flags mlx-serve gives it: torch hidden, new requests admitted every 2 ms, a
    listen backlog of 128, Nagle off) around ``mlx_lm server``, its stdin a pipe kept open.

    Why: mlx-serve differs from direct ``mlx_lm server`` in two ways, the router's hop and
    its worker's settings; this column tells them apart. Against mlx-serve it is the hop
    alone; against direct, the settings alone (direct's backlog of 5 drops SYNs under 8
    simultaneous connections, which this worker does not).
    """

    kind = WORKER
    proc_class = GuardedProc

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command()
        at = argv.index("mlx_lm")  # [python, -m, mlx_lm, server, ...]
        guard = ["-m", "mlx_serve.workers.guard", "--without", "torch", *GUARD_FLAGS]
        return [argv[0], *guard, *argv[at:]], env


_SWAP_LINE = re.compile(r"\bswap \S+ to=\S+")
_LOADED_LINE = re.compile(r"\bmodel\.loaded \S+ .*?pid=(\d+)")
_TROUBLE_LINE = re.compile(r"worker\.crashed|worker\.kill|new=failed|Traceback|ERROR|WARNING")


class OursServer(Server):
    """mlx-serve from this repo, started with its CLI and a models.yaml."""

    kind = OURS

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.workdir / "models.yaml"
        lines = [
            "server:",
            "  host: 127.0.0.1",
            f"  port: {self.port}",
            "  idle_timeout: -1",  # nothing unloads on its own during the run
            "  max_loaded_models: 1",
            "  stop_timeout: 5s",
            f"  data_dir: {self.workdir / 'data'}",
            "models:",
        ]
        for which, path in self.models.items():
            lines += [f"  {self.model_id(which)}:", "    type: text", f"    path: {path}"]
        config.write_text("\n".join(lines) + "\n")
        argv = [
            str(VENV_BIN / "mlx-serve"),
            "start",
            "--config",
            str(config),
            "--port",
            str(self.port),
        ]
        # A wide console keeps rich from wrapping the log lines counted by counters().
        return argv, {"COLUMNS": "250", "HF_HUB_OFFLINE": "1"}

    async def unload(self, session: aiohttp.ClientSession) -> None:
        # keep_alive 0 = "unload as soon as this request finishes" (the documented way).
        for entry in await self._models(session):
            if entry.get("status") != "unloaded":
                body = {
                    "model": entry["id"],
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 1,
                    "keep_alive": 0,
                }
                async with session.post(self.url + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
        deadline = time.perf_counter() + 30
        while any(e.get("status") != "unloaded" for e in await self._models(session)):
            if time.perf_counter() > deadline:
                raise TimeoutError("models still loaded 30 s after a keep_alive=0 request")
            await asyncio.sleep(0.02)

    async def _models(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with session.get(self.url + "/v1/models") as resp:
            data: list[dict[str, Any]] = (await resp.json())["data"]
            return data

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, int]:
        text = await asyncio.to_thread(self.proc.log_text) if self.proc else ""
        pids = [int(m.group(1)) for m in _LOADED_LINE.finditer(text)]
        self.worker_pids.update(pids)
        return {"swaps": len(_SWAP_LINE.findall(text)), "loads": len(pids)}

    def trouble(self) -> list[str]:
        text = self.proc.log_text() if self.proc else ""
        return [" ".join(line.split()) for line in text.splitlines() if _TROUBLE_LINE.search(line)]


class LegacyServer(Server):
    """mlx-serve 0.3.0 from PyPI in bench/.venv-030: a models.yaml found via MLX_SERVE_CONFIG
    (a list of {name, type, hf_path}), ``mlx_port`` for its single mlx_lm.server subprocess."""

    kind = LEGACY

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.workdir / "models-030.yaml"
        lines = [
            f"mlx_port: {free_port()}",
            f"manager_port: {self.port}",
            "inactivity_timeout_seconds: 3600",
            "startup_timeout_seconds: 120",
            "failure_cooldown_seconds: 30",
            "monitoring:",
            f"  log_dir: {self.workdir / 'logs-030'}",
            "models:",
        ]
        for which, path in self.models.items():
            lines += [f"  - name: {self.model_id(which)}", "    type: text", f"    hf_path: {path}"]
        config.write_text("\n".join(lines) + "\n")
        # It writes worker stderr to $TMPDIR/mlx-manager-logs. (mlx's CPU backend keeps its
        # compiled-kernel cache under $TMPDIR too; the warm-up requests fill it first.)
        tmp = self.workdir / "tmp-030"
        tmp.mkdir(exist_ok=True)
        argv = [
            str(LEGACY_VENV / "bin" / "mlx-serve"),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        return argv, {"MLX_SERVE_CONFIG": str(config), "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1"}

    async def unload(self, session: aiohttp.ClientSession) -> None:
        async with session.post(self.url + "/v1/models/unload", json={}) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/v1/models/unload answered {resp.status}")

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, int]:
        async def count(kind: str) -> int:
            params = {"type": kind, "last_n": "100000"}
            async with session.get(self.url + "/v1/events", params=params) as resp:
                return len((await resp.json())["events"])

        # model.switch.start is emitted on every respawn while a model is active, including a
        # respawn of the same model; subprocess.spawned counts every mlx_lm.server started.
        return {
            "swaps": await count("model.switch.start"),
            "loads": await count("subprocess.spawned"),
        }


SERVER_CLASSES: dict[str, type[Server]] = {
    DIRECT: DirectServer,
    OURS: OursServer,
    LEGACY: LegacyServer,
    WORKER: WorkerServer,
}


def ensure_legacy_venv(install: bool, log_path: Path) -> str | None:
    """Make sure mlx-serve 0.3.0 is installed in bench/.venv-030; None, or why it is not."""
    py = LEGACY_VENV / "bin" / "python"
    check = [
        str(py),
        "-c",
        "import mlx_serve, mlx_lm, fastapi, uvicorn; print(mlx_serve.__version__)",
    ]

    def installed() -> str | None:
        if not py.exists():
            return f"{LEGACY_VENV} does not exist"
        out = subprocess.run(check, capture_output=True, text=True, check=False, timeout=120)
        if out.returncode != 0:
            return f"importing it failed: {out.stderr.strip().splitlines()[-1:]}"
        if out.stdout.strip() != LEGACY_VERSION:
            return f"{LEGACY_VENV} holds mlx-serve {out.stdout.strip()}, not {LEGACY_VERSION}"
        if not (LEGACY_VENV / "bin" / "mlx_lm.server").exists():
            return "mlx_lm.server is missing from its venv"
        return None

    problem = installed()
    if problem is None or not install:
        return problem
    console.print(f"[bold]installing mlx-serve {LEGACY_VERSION} into {LEGACY_VENV}[/] ({problem})")
    # The same mlx-lm as ours, so both servers run the very same worker code.
    mlx_lm_version = importlib.metadata.version("mlx-lm")
    steps = [
        [sys.executable, "-m", "venv", str(LEGACY_VENV)],
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            f"mlx-serve=={LEGACY_VERSION}",
            "mlx[cpu]",
            f"mlx-lm=={mlx_lm_version}",
        ],
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        for step in steps:
            done = subprocess.run(
                step, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=900
            )
            if done.returncode != 0:
                return f"`{' '.join(step[-4:])}` failed (exit {done.returncode}), see {log_path}"
    return installed()
