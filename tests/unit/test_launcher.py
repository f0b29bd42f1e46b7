"""The real launcher: a worker in a session of its own, spawned off the event loop, reaped, and
never left behind by a launch that was cancelled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mlx_serve.workers import process
from mlx_serve.workers.process import LaunchSpec, SubprocessLauncher, end_group
from tests.conftest import eventually

#: Writes its pid to argv[1], then waits until a signal ends it (not for its stdin's EOF: the
#: launcher must end it, not the pipe's close when a Popen is collected).
WAITER = (
    "import os, sys, threading; open(sys.argv[1], 'w').write(str(os.getpid()));"
    " threading.Event().wait()"
)


def spec(tmp_path: Path) -> LaunchSpec:
    return LaunchSpec(
        argv=[sys.executable, "-c", WAITER, str(tmp_path / "pid")], log_path=tmp_path / "w.log"
    )


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_worker_leads_its_own_session_and_is_reaped(tmp_path: Path) -> None:
    proc = await SubprocessLauncher().launch(spec(tmp_path))
    await eventually((tmp_path / "pid").exists, what="the worker to start")
    assert proc.returncode is None
    assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
    assert await end_group(proc, grace=10) is False  # it ended on SIGTERM
    assert proc.returncode == -signal.SIGTERM
    assert await proc.wait() == -signal.SIGTERM  # again: the same answer
    assert gone(proc.pid)


async def test_a_cancelled_launch_leaves_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[int] = []
    real = process._end_unwanted

    def spy(spawn: asyncio.Future[subprocess.Popen[bytes]]) -> None:
        spawned.append(spawn.result().pid)
        real(spawn)

    monkeypatch.setattr(process, "_end_unwanted", spy)
    launch = asyncio.create_task(SubprocessLauncher().launch(spec(tmp_path)))
    await asyncio.sleep(0)  # the spawn has been handed to its thread
    launch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await launch
    await eventually(lambda: bool(spawned), timeout=30, what="the spawn to finish")
    await eventually(lambda: gone(spawned[0]), timeout=30, what="the unwanted worker to end")
