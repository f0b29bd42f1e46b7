"""Crash, hang, queue and disconnect handling, with the fake worker as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest

from mlx_serve.config import ModelType
from mlx_serve.testing import FakeWorkerDriver
from tests.conftest import eventually, state_is
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.slow

FAKE = {ModelType.TEXT: FakeWorkerDriver()}


def fake(args: dict[str, object] | None = None, **extra: object) -> dict[str, object]:
    return {"path": "fake/model", "args": args or {}, **extra}


async def test_startup_timeout_reports_why_and_kills_the_worker(start_server: StartServer) -> None:
    run = await start_server(
        {"hang": fake({"never_ready": True})},
        drivers=FAKE,
        # Long enough for the worker to print its first line on a loaded machine (its
        # imports alone can take a second then): that line is what the error must show.
        startup_timeout="3s",
        stop_timeout="500ms",
    )
    status, data = await run.chat("hang")
    assert status == 503
    error = data["error"]
    assert error["code"] == "model_unavailable"
    assert "not ready after startup_timeout=3s" in error["message"]
    assert "fake worker pid" in error["message"], "the worker's log tail is in the error"
    worker = run.supervisor.workers["hang"]
    assert worker.state.value == "failed" and worker.pid is None
    listed = {m["id"]: m for m in (await (await run.http.get("/v1/models")).json())["data"]}
    assert listed["hang"]["status"] == "failed" and "startup_timeout" in listed["hang"]["error"]


async def test_worker_that_exits_while_loading_fails_fast(start_server: StartServer) -> None:
    run = await start_server({"bad": fake({"exit_on_start": 7})}, drivers=FAKE)
    status, data = await run.chat("bad")
    assert status == 503
    assert "exited with code 7 while loading" in data["error"]["message"]
    assert "exiting on start as asked" in data["error"]["message"]


async def test_sigterm_ignoring_worker_is_killed(start_server: StartServer) -> None:
    run = await start_server(
        {"stubborn": fake({"ignore_sigterm": True}), "other": fake()},
        drivers=FAKE,
        stop_timeout="300ms",
    )
    assert (await run.chat("stubborn"))[0] == 200
    assert (await run.chat("other"))[0] == 200  # forces a swap: stubborn must die anyway
    assert [e.model for e in run.kinds("worker.kill")] == ["stubborn"]
    assert run.supervisor.loaded() == ["other"]


async def test_queue_full_gets_503_with_retry_after(start_server: StartServer) -> None:
    run = await start_server(
        {"busy": fake({"token_delay": 0.05}), "next": fake()},
        drivers=FAKE,
        queue_limit=1,
        fair_wait="1h",
    )
    assert (await run.chat("busy", max_tokens=1))[0] == 200
    long = asyncio.create_task(run.stream("busy", max_tokens=60))
    await eventually(lambda: run.supervisor.workers["busy"].inflight == 1, what="busy in flight")
    queued = asyncio.create_task(run.chat("next"))
    await eventually(lambda: run.supervisor.scheduler.waiting() == 1, what="one queued")
    async with run.http.post(
        "/v1/chat/completions",
        json={"model": "next", "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        assert (await r.json())["error"]["code"] == "queue_full"
    status, lines = await long
    assert status == 200 and lines[-1] == b"[DONE]"
    assert (await queued)[0] == 200


async def test_waiter_that_disconnects_leaves_the_queue(start_server: StartServer) -> None:
    run = await start_server(
        {"busy": fake({"token_delay": 0.05}), "next": fake()}, drivers=FAKE, fair_wait="1h"
    )
    assert (await run.chat("busy", max_tokens=1))[0] == 200
    long = asyncio.create_task(run.stream("busy", max_tokens=40))
    await eventually(lambda: run.supervisor.workers["busy"].inflight == 1, what="busy in flight")
    async with aiohttp.ClientSession() as other:
        gone = asyncio.create_task(
            other.post(
                run.url + "/v1/chat/completions",
                json={"model": "next", "messages": [{"role": "user", "content": "x"}]},
            )
        )
        await eventually(lambda: run.supervisor.scheduler.waiting() == 1, what="queued")
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    await eventually(lambda: run.supervisor.scheduler.waiting() == 0, what="waiter removed")
    await long
    assert run.supervisor.loaded() == ["busy"], "nobody waits for 'next' any more"
    cancelled = [e for e in run.kinds("request") if e.model == "next"]
    assert [e.data["status"] for e in cancelled] == [499]  # logged like Ollama does


def established(pid: int) -> int:
    """TCP connections the worker has open (not its listening socket)."""
    return sum(
        c.status == psutil.CONN_ESTABLISHED for c in psutil.Process(pid).net_connections("tcp")
    )


async def test_client_disconnect_mid_stream_aborts_upstream(start_server: StartServer) -> None:
    run = await start_server({"slow": fake({"token_delay": 0.05})}, drivers=FAKE)
    assert (await run.chat("slow", max_tokens=1))[0] == 200
    worker = run.supervisor.workers["slow"]
    assert worker.pid is not None
    # The supervisor's probe keeps a connection alive, and once a response ends the router
    # opens one for the next request (router/upstream.py Preopened; requests here come one at
    # a time, so one). That one may or may not be open yet: allow for it below.
    pooled = established(worker.pid)
    tasks_before = len(asyncio.all_tasks())
    body = {"model": "slow", "stream": True, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    for _ in range(5):  # counted over several, so one leaked task or connection shows
        async with aiohttp.ClientSession() as other:
            resp = await other.post(run.url + "/v1/chat/completions", json=body)
            await resp.content.readline()
            resp.close()
        await eventually(lambda: worker.inflight == 0, what="the request released its lease")
        # The stream's upstream connection was closed (and one opened for the next request):
        # the worker saw the client go and stopped generating. Streams that left their
        # connection open would add up past this bound within the five.
        await eventually(
            lambda: established(worker.pid or 0) <= pooled + 1, what="upstream aborted"
        )
    requests = [e for e in run.events if e.kind == "request"][1:]
    assert [e.data["status"] for e in requests] == [499] * 5, "a client that left is not a 5xx"
    assert all(e.data["completion_tokens"] < 1000 for e in requests)
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before, what="no task left behind")


async def test_crash_while_idle_is_noticed_without_a_request(start_server: StartServer) -> None:
    run = await start_server({"m": fake()}, drivers=FAKE)
    assert (await run.chat("m"))[0] == 200
    pid, port = run.supervisor.workers["m"].pid, run.supervisor.workers["m"].port
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await run.event("worker.crashed", "m")
    assert run.supervisor.workers["m"].state.value == "failed"
    crash = run.kinds("worker.crashed")[0].data
    # Why, from the exit status: a signal says nothing in the log, so the log's last line
    # (an unrelated one) must not pass for the reason.
    assert crash["reason"].startswith("the worker was killed by SIGKILL"), crash
    assert (crash["signal"], crash["exit_code"], crash["pid"]) == ("SIGKILL", -9, pid)
    assert crash["log_tail"] == f"fake worker pid {pid} on port {port}"
    assert "killed by SIGKILL" in (run.supervisor.workers["m"].last_error or "")
    assert (await run.chat("m"))[0] == 200


async def test_a_wedged_worker_is_found_by_the_liveness_probe_and_restarted(
    start_server: StartServer,
) -> None:
    """Alive, /health fine, but completions never answer again (mlx_lm's generation thread
    dead): the periodic real probe finds it, kills it, and the next request gets a new one."""
    run = await start_server(
        {"wedge": fake({"hang_after_requests": 2})},
        drivers=FAKE,
        liveness_interval="200ms",
        liveness_timeout="300ms",
        stop_timeout="500ms",
    )
    status, _ = await run.chat("wedge")  # the readiness probe was request 1, this is 2
    assert status == 200
    worker = run.supervisor.workers["wedge"]
    first = worker.pid
    await run.event("worker.unresponsive", "wedge")
    await run.event("worker.state", "wedge", where=state_is("failed"))  # killed
    assert "stopped answering" in (worker.last_error or "")
    status, _ = await run.chat("wedge")
    assert status == 200 and worker.pid not in (None, first)


async def test_an_unwritable_data_dir_costs_logs_not_requests(
    start_server: StartServer,
    tiny_models: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker logs that cannot be created and an event log on a full disk: requests (and
    swaps, which start workers) go on; each problem is warned about once."""
    import mlx_serve.files
    from mlx_serve.observability.event_log import EventLogFile

    monkeypatch.setattr(mlx_serve.files, "_warned", set())
    models = {n: {"type": "text", "path": str(tiny_models[n])} for n in ("a", "b")}
    run = await start_server(models)
    data = run.supervisor.data_dir
    if (data / "logs").is_dir():
        (data / "logs").rename(data / "logs.moved")
    (data / "logs").write_text("a file where the log directory was\n")  # ENOTDIR, even as root
    sinks = [s for s in run.supervisor.events._listeners if isinstance(s, EventLogFile)]
    assert sinks and sinks[0]._handler is not None
    handler = sinks[0]._handler
    assert isinstance(handler, logging.StreamHandler)  # a rotating file handler
    with handler.lock or contextlib.nullcontext():  # the event log's writer thread uses it
        handler.stream.close()
        handler.stream = open("/dev/full", "w")  # noqa: ASYNC230, PTH123, SIM115

    for model in ("a", "b", "a"):  # two swaps: three worker starts without a log directory
        status, body = await run.chat(model, max_tokens=2)
        assert status == 200, body

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    # The event log is written by a thread: its warning comes shortly after the events.
    await eventually(lambda: any("cannot write the event log" in w for w in warnings()))
    assert sum("cannot write worker logs" in w for w in warnings()) == 1, warnings()
    assert sum("cannot write the event log" in w for w in warnings()) == 1, warnings()


async def test_a_worker_port_taken_meanwhile_is_retried_on_a_fresh_port(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """free_port() picks a port, then another program binds it before the worker does: the
    worker exits with EADDRINUSE, and the start goes on, once, on a fresh port."""
    import socket

    import mlx_serve.supervisor.worker as worker_module
    from mlx_serve.workers import process

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = process.free_port
    ports = iter([taken])
    monkeypatch.setattr(
        worker_module, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host)
    )
    try:
        run = await start_server({"m": fake()}, drivers=FAKE)
        status, body = await run.chat("m")
        assert status == 200, body
        assert run.kinds("worker.port_taken")[0].data["port"] == taken
        assert run.supervisor.workers["m"].port != taken
    finally:
        squatter.close()
