"""The dashboard's memory history: the bounded ring, its sampler and ``?history=`` parsing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import pytest

from mlx_serve.errors import ApiError
from mlx_serve.observability.history import MemoryHistory, MemorySample
from mlx_serve.observability.memory import sample_memory, watch_history
from mlx_serve.router.management import history_window
from tests.conftest import eventually

MiB = 1024**2


def sample(t: float, **models: int) -> MemorySample:
    return MemorySample(
        t=t, available_bytes=8 * 1024 * MiB, total_bytes=16 * 1024 * MiB,
        router_rss_bytes=80 * MiB, models=models,
    )  # fmt: skip


def test_the_ring_is_bounded_by_count_and_by_age() -> None:
    history = MemoryHistory(interval=5, retention=60)
    for i in range(100):
        history.record(sample(1000.0 + 5 * i, a=i * MiB))
    assert len(history) == 13  # retention / interval + 1: both ends of a full window
    times = [s.t for s in history.window(3600)]
    assert times == [1000.0 + 5 * i for i in range(87, 100)]
    # Samples further apart than the interval (a sleeping laptop): the age bound applies.
    history.record(sample(1495.0 + 50, a=MiB))
    history.record(sample(1495.0 + 100, a=MiB))
    assert [s.t for s in history.window(3600)] == [1545.0, 1595.0]


def test_the_window_is_the_newest_samples_and_clamped_to_the_retention() -> None:
    history = MemoryHistory(interval=10, retention=120)
    assert history.window(60) == [] and history.to_json(60)["samples"] == []
    for i in range(13):
        history.record(sample(100.0 + 10 * i, a=(i + 1) * MiB, b=2 * MiB))
    assert [s.t for s in history.window(30)] == [190.0, 200.0, 210.0, 220.0]
    # Relative to "now" when given: a minute after the last sample, 30 s shows nothing.
    assert history.window(30, now=280.0) == []
    body = history.to_json(3600, now=220.0)
    assert body["window_s"] == 120 and body["interval_s"] == 10 and body["retention_s"] == 120
    assert len(body["samples"]) == 13
    assert body["samples"][-1] == {
        "t": 220.0,
        "available_bytes": 8 * 1024 * MiB,
        "total_bytes": 16 * 1024 * MiB,
        "workers_rss_bytes": 15 * MiB,
        "router_rss_bytes": 80 * MiB,
        "models": {"a": 13 * MiB, "b": 2 * MiB},
    }


def test_a_clock_stepping_back_restarts_the_history() -> None:
    history = MemoryHistory(interval=1, retention=10)
    history.record(sample(100.0))
    history.record(sample(101.0))
    history.record(sample(50.0))
    assert [s.t for s in history.window(10)] == [50.0]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        MemoryHistory(interval=0)
    with pytest.raises(ValueError, match="retention"):
        MemoryHistory(interval=10, retention=5)


@pytest.mark.parametrize(
    ("value", "seconds"), [("10m", 600.0), ("90s", 90.0), ("600", 600.0), ("1h30m", 5400.0)]
)
def test_history_durations(value: str, seconds: float) -> None:
    assert history_window(value) == seconds


@pytest.mark.parametrize("value", ["", "ten minutes", "10x", "0", "-5m", "nan", "1e999"])
def test_bad_history_durations_are_400_in_the_openai_shape(value: str) -> None:
    with pytest.raises(ApiError) as caught:
        history_window(value)
    error = caught.value
    assert error.status == 400 and error.param == "history" and error.code == "invalid_history"
    assert error.body()["error"]["type"] == "invalid_request_error"
    assert "history" in error.body()["error"]["message"]


def test_sample_memory_measures_process_trees_and_skips_the_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        got = sample_memory(
            {"me": os.getpid(), "child": child.pid, "gone": gone.pid, "x": None}, 5.0
        )
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert got.t == 5.0 and set(got.models) == {"me", "child"}
    # Our tree includes the child: the tree's RSS is more than the child's alone.
    assert got.models["me"] > got.models["child"] > 0
    assert got.workers_rss_bytes == got.models["me"] + got.models["child"]
    assert 0 < got.available_bytes <= got.total_bytes and got.router_rss_bytes > 0


async def test_the_sampler_records_what_is_resident_now() -> None:
    history = MemoryHistory(interval=0.02, retention=10)
    resident: dict[str, int | None] = {"a": os.getpid()}
    clock = iter(range(1000, 100000))
    task = asyncio.create_task(watch_history(history, lambda: resident, lambda: next(clock)))
    try:
        await eventually(lambda: len(history) >= 2, what="two samples")
        resident.clear()  # unloaded: later samples have no model
        mark = len(history)
        await eventually(lambda: len(history) >= mark + 2, what="two more samples")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    samples = history.window(3600)
    assert set(samples[0].models) == {"a"} and samples[-1].models == {}
    assert [s.t for s in samples] == sorted(s.t for s in samples)
