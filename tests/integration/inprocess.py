"""The real supervisor and router over workers that are aiohttp apps in the test's own loop.

:class:`InProcessLauncher` is a :class:`~mlx_serve.workers.process.Launcher` whose "processes"
are web apps listening on the port their launch spec names: by default the fake worker of
:mod:`mlx_serve.testing.fake_worker` (built from the same command line and flags the
supervisor would run it with), or any app a test builds (an upstream that misbehaves on
purpose). Nothing is forked, so a test controls exactly when a worker listens, answers,
crashes or exits, while the supervisor, the scheduler, the proxy and the management API are
the real ones, reached over real HTTP.

What a real process does that these don't: the fake worker's ``--crash-after-tokens`` (it
calls ``os._exit``) cannot run here; :meth:`InProcessWorker.exit` is the crash instead. The
pids are numbers no process can have (above Linux's and macOS's pid limits), so nothing
measures or signals a real process by mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from mlx_serve.config import ModelType, load_config
from mlx_serve.files import append_line
from mlx_serve.router.app import make_app
from mlx_serve.supervisor import Supervisor
from mlx_serve.supervisor.events import Event, make_event
from mlx_serve.testing import FakeWorkerDriver, fake_worker
from mlx_serve.workers.base import SpareContext, spare_argv
from mlx_serve.workers.process import SIGKILL, SIGTERM, LaunchSpec
from tests.conftest import last_seq, wait_event

FAKE_WORKER = "mlx_serve.testing.fake_worker"
#: Above PID_MAX_LIMIT on 64-bit Linux (2**22) and macOS's 99999: never a real process.
FIRST_PID = 2**22 + 1000

#: Builds a worker's web app from its command line (the module's own flags follow its name).
AppFactory = Callable[[Sequence[str]], web.Application]


def fake_worker_app(argv: Sequence[str]) -> web.Application:
    """The fake worker for ``argv`` (``... mlx_serve.testing.fake_worker --port P [flags]``)."""
    args = fake_worker._parse(list(argv[list(argv).index(FAKE_WORKER) + 1 :]))
    if args.crash_after_tokens is not None:
        raise ValueError("--crash-after-tokens exits the process: use InProcessWorker.exit()")
    return fake_worker.make_app(args)


def _flag(argv: Sequence[str], name: str, default: str | None = None) -> str | None:
    args = list(argv)
    return args[args.index(name) + 1] if name in args else default


class InProcessWorker:
    """One worker "process": a web app on this loop, as the supervisor sees a process."""

    def __init__(self, pid: int, spec: LaunchSpec, app: web.Application) -> None:
        self.pid = pid
        self.spec = spec
        self.app = app
        self.returncode: int | None = None
        self.signals: list[int] = []
        self.port = int(_flag(spec.argv, "--port") or 0)
        self.host = _flag(spec.argv, "--host", "127.0.0.1") or "127.0.0.1"
        self.ignore_sigterm = "--ignore-sigterm" in spec.argv
        self._runner: web.AppRunner | None = None
        self._done = asyncio.Event()
        self._ending: asyncio.Task[None] | None = None

    def log(self, line: str) -> None:
        append_line(self.spec.log_path, line + "\n", what="worker logs")

    async def listen(self) -> None:
        """Start serving on its port, as the process would once its imports are done."""
        if self.returncode is not None:
            return
        runner = web.AppRunner(self.app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self.log(f"fake worker pid {self.pid} on port {self.port}")

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self.returncode is not None or self._ending is not None:
            return
        if sig == SIGKILL or (sig == SIGTERM and not self.ignore_sigterm):
            self.exit(-sig, graceful=sig == SIGTERM)

    def exit(self, code: int, *, graceful: bool = False) -> None:
        """The process ends with ``code`` (a crash when nobody asked): its connections are
        dropped at once, unless ``graceful`` (SIGTERM: in-flight requests may finish)."""
        if self._ending is None:
            self._ending = asyncio.get_running_loop().create_task(self._end(code, graceful))

    async def _end(self, code: int, graceful: bool) -> None:
        runner = self._runner
        if runner is not None:
            if not graceful and runner.server is not None:
                for handler in list(runner.server.connections):
                    handler.force_close()
                    if handler.transport is not None:
                        handler.transport.abort()
            await runner.cleanup()
        self.returncode = code
        self._done.set()


class InProcessLauncher:
    """Launches :class:`InProcessWorker` apps built by ``app`` (default: the fake worker).

    :meth:`hold` keeps the next launch whose log file name contains a string from listening
    until the event it returns is set: a worker (or a spare) "importing" for as long as a
    test needs.
    """

    def __init__(self, app: AppFactory = fake_worker_app) -> None:
        self._app = app
        self._pids = itertools.count(FIRST_PID)
        self._holds: list[tuple[str, asyncio.Event]] = []
        self.launched: list[InProcessWorker] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self, log_name_part: str) -> asyncio.Event:
        gate = asyncio.Event()
        self._holds.append((log_name_part, gate))
        return gate

    async def launch(self, spec: LaunchSpec) -> InProcessWorker:
        worker = InProcessWorker(next(self._pids), spec, self._app(spec.argv))
        self.launched.append(worker)
        exit_code = _flag(spec.argv, "--exit-on-start")
        if exit_code is not None:
            worker.log("fake worker: exiting on start as asked")
            worker.exit(int(exit_code))
            return worker
        held = next((h for h in self._holds if h[0] in spec.log_path.name), None)
        if held is None:
            await worker.listen()
        else:
            self._holds.remove(held)
            gate = held[1]

            async def listen_when_released() -> None:
                await gate.wait()
                await worker.listen()

            task = asyncio.get_running_loop().create_task(listen_when_released())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return worker

    def alive(self) -> list[InProcessWorker]:
        return [w for w in self.launched if w.returncode is None]

    def by_pid(self, pid: int | None) -> InProcessWorker | None:
        return next((w for w in self.launched if w.pid == pid), None)

    async def close(self) -> None:
        """Kill whatever the supervisor left running (a test's own kill, a leak)."""
        for task in self._tasks:
            task.cancel()
        for worker in self.alive():
            worker.signal_group(SIGKILL)
            await worker.wait()


class FakeSpareDriver(FakeWorkerDriver):
    """The fake worker driver, with spares that are fake workers too (the text driver it
    extends would start ``mlx_lm`` for a spare)."""

    def spare_spec(self, ctx: SpareContext) -> LaunchSpec:
        return LaunchSpec(argv=spare_argv(ctx, FAKE_WORKER), log_path=ctx.log_path)


def fake_drivers() -> dict[ModelType, FakeSpareDriver]:
    """A fake worker driver for every model type."""
    return {kind: FakeSpareDriver() for kind in ModelType}


@dataclass
class AppRun:
    """The real router and supervisor, serving on a local port (see :func:`app_factory`)."""

    supervisor: Supervisor
    app: web.Application
    server: TestServer
    launcher: InProcessLauncher
    http: aiohttp.ClientSession
    events: list[Event] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def emit(self, kind: str, model: str | None = None, **data: Any) -> Event:
        """An event, as the supervisor would emit it."""
        return self.supervisor.events.emit(make_event(kind, model, **data))

    def mark(self) -> int:
        """The newest event's number: ``event(..., after=mark)`` waits for what comes next."""
        return last_seq(self.supervisor.events)

    async def event(self, kind: str, model: str | None = None, **kwargs: Any) -> Event:
        """:func:`tests.conftest.wait_event` on this supervisor's events."""
        return await wait_event(self.supervisor.events, kind, model, **kwargs)

    async def chat(
        self, model: str, content: str = "hi", *, headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> tuple[int, Any]:  # fmt: skip
        body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
        async with self.http.post("/v1/chat/completions", json=body, headers=headers) as r:
            return r.status, await r.json()

    async def load(self, name: str) -> None:
        """``POST /api/models/{name}/load``; fails the test unless it is loaded."""
        async with self.http.post(f"/api/models/{name}/load", json={}) as r:
            assert r.status == 200, await r.text()

    def worker(self, name: str) -> InProcessWorker:
        """The in-process worker serving model ``name`` now."""
        found = self.launcher.by_pid(self.supervisor.workers[name].pid)
        assert found is not None, f"{name} has no worker"
        return found


StartApp = Callable[..., Awaitable[AppRun]]


def model_yaml(models: Mapping[str, Mapping[str, Any]], **server: Any) -> str:
    """models.yaml for ``models`` and the ``server`` settings."""
    import yaml

    return yaml.safe_dump({"server": server, "models": dict(models)}, sort_keys=False)


@contextlib.asynccontextmanager
async def app_factory(tmp_path: Path) -> AsyncIterator[StartApp]:
    """``await start(models, launcher=None, drivers=None, measure=None, before_start=None,
    **server)`` -> :class:`AppRun`: models.yaml written and loaded as for a real start, the
    supervisor started, the app served; all stopped on exit (no worker may be left).

    ``before_start(app)`` runs before the app serves (seed its memory history, add a
    signal handler to observe it).
    """
    runs: list[AppRun] = []

    async def start(
        models: Mapping[str, Mapping[str, Any]],
        *,
        launcher: InProcessLauncher | None = None,
        drivers: Mapping[ModelType, Any] | None = None,
        measure: Callable[[int | None, int | None], int | None] | None = None,
        before_start: Callable[[web.Application], None] | None = None,
        **server: Any,
    ) -> AppRun:
        config_path = tmp_path / f"models{len(runs)}.yaml"
        config_path.write_text(model_yaml(models, **server))
        launcher = launcher or InProcessLauncher()
        extra: dict[str, Any] = {} if measure is None else {"measure": measure}
        supervisor = Supervisor(
            load_config(config_path),
            data_dir=tmp_path / f"data{len(runs)}",
            launcher=launcher,
            drivers=drivers if drivers is not None else fake_drivers(),
            **extra,
        )
        app = make_app(supervisor)
        if before_start is not None:
            before_start(app)
        await supervisor.start()
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        url = str(test_server.make_url("")).rstrip("/")
        run = AppRun(supervisor, app, test_server, launcher, aiohttp.ClientSession(base_url=url))
        supervisor.events.add_listener(run.events.append)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            await run.http.close()
            await run.supervisor.scheduler.close()
            await run.server.close()
            await run.supervisor.shutdown()
            left = run.launcher.alive()
            await run.launcher.close()
            assert not left, f"workers left running after shutdown: {[w.pid for w in left]}"
