"""Why a worker died, as its crash event and its error say: the signal or exit code, and the
lines of its log that matter (not an access-log line that happened to come last)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import Config, ModelConfig, ModelType
from mlx_serve.supervisor import Supervisor, WorkerStartError
from mlx_serve.supervisor.worker import crash_reason
from mlx_serve.testing import FakeClock, FakeLauncher, InstantDriver
from mlx_serve.workers.process import describe_exit, exit_signal, read_log_tail, relevant_tail
from tests.conftest import eventually, state_is, wait_event

ACCESS = '127.0.0.1 - - [01/Mar/2025 10:00:0{i}] "POST /v1/chat/completions HTTP/1.1" 200 -'
UVICORN = 'INFO:     127.0.0.1:5{i}000 - "POST /v1/chat/completions HTTP/1.1" 200 OK'
BAR = "Fetching 9 files:  44%|####4     | 4/9 [00:01<00:02, 2.10it/s]"
TRACEBACK = """Traceback (most recent call last):
  File "/x/mlx_lm/server.py", line 10, in <module>
    main()
  File "/x/mlx_lm/server.py", line 5, in main
    load(model)
  File "/x/mlx_lm/utils.py", line 3, in load
    raise FileNotFoundError(path)
FileNotFoundError: No safetensors found in /models/x"""


def test_exit_statuses_are_described() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-15) == "was killed by SIGTERM"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(0) == "exited with code 0"
    assert (exit_signal(-9), exit_signal(1), exit_signal(None)) == ("SIGKILL", None, None)
    assert crash_reason(-9).startswith("the worker was killed by SIGKILL (out of memory")
    assert crash_reason(-11) == "the worker was killed by SIGSEGV"
    assert crash_reason(1) == "the worker exited with code 1"


def test_noise_is_left_out_of_the_tail() -> None:
    lines = ["loading the model", "", BAR, "model loaded in 1.2s", "   "]
    lines += [ACCESS.format(i=i) for i in range(5)] + [UVICORN.format(i=i) for i in range(3)]
    lines += ["12it [00:03,  3.90it/s]", "\r 10%|#         | 1/10\r100%|##########| 10/10"]
    assert relevant_tail("\n".join(lines)) == "loading the model\nmodel loaded in 1.2s"


def test_only_the_latest_run_counts() -> None:
    text = (
        "=== mlx-serve: starting m: python -m x\nold run: it crashed\n"
        "\n=== mlx-serve: starting m: python -m x\nnew run line\n" + ACCESS.format(i=1)
    )
    assert relevant_tail(text) == "new run line"
    assert relevant_tail("=== mlx-serve: starting m: python -m x\n") == ""


def test_a_traceback_is_preferred_to_what_came_after_it() -> None:
    after = [f"INFO: request {i} done" for i in range(30)]
    text = "\n".join(["starting", TRACEBACK, *after])
    tail = relevant_tail(text, lines=12).splitlines()
    assert tail[0] == "Traceback (most recent call last):"
    assert "FileNotFoundError: No safetensors found in /models/x" in tail
    assert tail[-5:] == ["...", *after[-4:]], "a few later lines, marked as cut"
    assert len(tail) <= 12


def test_a_long_traceback_keeps_its_header_and_its_end() -> None:
    frames = "".join(f'  File "/x/f{i}.py", line {i}, in f{i}\n    f{i + 1}()\n' for i in range(40))
    text = f"Traceback (most recent call last):\n{frames}ValueError: the real cause\n"
    tail = relevant_tail(text, lines=10).splitlines()
    assert tail[:2] == ["Traceback (most recent call last):", "  ..."]
    assert tail[-1] == "ValueError: the real cause" and len(tail) == 10


def test_a_short_traceback_comes_with_what_was_said_before_it() -> None:
    text = "\n".join(["loading /models/x", BAR, TRACEBACK, ACCESS.format(i=1)])
    assert relevant_tail(text) == "loading /models/x\n" + TRACEBACK


def test_the_log_file_is_read_from_its_end(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("x" * 100_000 + "\nearly\n" + "\n".join(f"line {i}" for i in range(50)))
    assert read_log_tail(log, lines=3) == "line 47\nline 48\nline 49"
    assert read_log_tail(tmp_path / "missing.log") == ""


# ------------------------------------------------------------- through the lifecycle


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, FakeLauncher]]:
    launcher = FakeLauncher()
    supervisor = Supervisor(
        Config(models={"m": ModelConfig(path="org/m")}),
        data_dir=tmp_path,
        launcher=launcher,
        drivers={ModelType.TEXT: InstantDriver(launcher)},
        clock=FakeClock(),
    )
    await supervisor.start()
    yield supervisor, launcher
    await supervisor.shutdown()


def crashes(supervisor: Supervisor) -> list[dict[str, Any]]:
    return [e.to_json() for e in supervisor.events.recent(kind="worker.crashed")]


async def test_a_worker_killed_by_sigkill_says_so(sup: tuple[Supervisor, FakeLauncher]) -> None:
    supervisor, launcher = sup
    await supervisor.load("m")
    worker = supervisor.workers["m"]
    with worker.log_path.open("a") as log:  # what a real worker leaves: noise at the end
        log.write("model loaded\n" + "\n".join(ACCESS.format(i=i) for i in range(8)) + "\n\n")
    launcher.launched[0].exit(-9)
    await wait_event(supervisor.events, "worker.state", "m", where=state_is("failed"))
    (event,) = crashes(supervisor)
    assert event["reason"].startswith("the worker was killed by SIGKILL")
    assert (event["signal"], event["exit_code"]) == ("SIGKILL", -9)
    assert event["pid"] == launcher.launched[0].pid
    assert event["log_tail"] == "model loaded", "no access-log line as the reason"
    assert "killed by SIGKILL" in (worker.last_error or "")
    failed = supervisor.events.recent(kind="worker.state")[-1].to_json()
    assert failed["new"] == "failed" and "killed by SIGKILL" in failed["reason"]


async def test_a_worker_that_exits_names_its_code(sup: tuple[Supervisor, FakeLauncher]) -> None:
    supervisor, launcher = sup
    await supervisor.load("m")
    with supervisor.workers["m"].log_path.open("a") as log:
        log.write(TRACEBACK + "\n" + ACCESS.format(i=1) + "\n")
    launcher.launched[0].exit(1)
    await wait_event(supervisor.events, "worker.crashed", "m")
    (event,) = crashes(supervisor)
    assert event["reason"] == "the worker exited with code 1" and event["signal"] is None
    assert event["log_tail"].endswith("FileNotFoundError: No safetensors found in /models/x")


async def test_a_worker_killed_while_loading_says_so(tmp_path: Path) -> None:
    launcher = FakeLauncher(auto_ready=False)
    supervisor = Supervisor(
        Config(models={"m": ModelConfig(path="org/m")}),
        data_dir=tmp_path,
        launcher=launcher,
        drivers={ModelType.TEXT: InstantDriver(launcher)},
        clock=FakeClock(),
    )
    await supervisor.start()
    try:
        load = asyncio.create_task(supervisor.load("m"))
        await eventually(lambda: launcher.launched != [], what="the worker launched")
        launcher.launched[0].exit(-9)
        with pytest.raises(WorkerStartError) as info:
            await asyncio.wait_for(load, 5)
        assert "the worker was killed by SIGKILL while loading" in str(info.value)
    finally:
        await supervisor.shutdown()
