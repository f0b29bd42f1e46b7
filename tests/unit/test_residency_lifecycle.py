"""The memory budget through the real supervisor and scheduler, with in-memory fake processes,
a fake clock, and model directories whose safetensors headers declare the sizes we want.

No process is forked: what a worker "measures" comes from a table the test controls.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import Config, ModelConfig, ModelType, ServerConfig
from mlx_serve.residency import resolve_budget
from mlx_serve.supervisor import Supervisor, WorkerStartError
from mlx_serve.supervisor.states import RESIDENT
from mlx_serve.supervisor.states import WorkerState as S
from mlx_serve.testing import FakeClock, FakeLauncher, InstantDriver
from tests.conftest import wait_event

MiB = 2**20
OVERHEAD = 1 * MiB  # learned per-type overhead written into the ledger before start


def model_dir(root: Path, name: str, mib: int) -> Path:
    """A directory whose one safetensors file *declares* ``mib`` MiB of tensor data."""
    where = root / "models" / name
    where.mkdir(parents=True)
    size = mib * MiB
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    raw = header.encode()
    (where / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return where


class Harness:
    def __init__(
        self,
        tmp: Path,
        sizes: dict[str, int],
        *,
        pins: tuple[str, ...] = (),
        measured: dict[str, int] | None = None,
        **server: Any,
    ) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        data = tmp / "data"
        data.mkdir(exist_ok=True)
        ledger = data / "footprints.json"
        if not ledger.exists():
            ledger.write_text(json.dumps({"overhead": {"text": OVERHEAD}}))
        models = {
            name: ModelConfig(path=str(model_dir(tmp, name, mib)), pin=name in pins)
            if not (tmp / "models" / name).exists()
            else ModelConfig(path=str(tmp / "models" / name), pin=name in pins)
            for name, mib in sizes.items()
        }
        cfg = Config(server=ServerConfig(**server), models=models)
        self.measured = measured or {}
        self.sup = Supervisor(
            cfg,
            data_dir=data,
            launcher=self.launcher,
            drivers={ModelType.TEXT: InstantDriver(self.launcher)},
            clock=self.clock,
            measure=self._measure,
        )
        self.max_resident = 0
        self.sup.events.add_listener(lambda _e: self._record())

    def _measure(self, pid: int | None, _mlx: int | None) -> int | None:
        for name, worker in self.sup.workers.items():
            if worker.pid == pid and name in self.measured:
                return self.measured[name] * MiB
        return None

    def _record(self) -> None:
        self.max_resident = max(self.max_resident, len(self.launcher.alive()))

    def state(self, name: str) -> S:
        return self.sup.workers[name].state

    def resident(self) -> set[str]:
        return {n for n, w in self.sup.workers.items() if w.state in RESIDENT}

    def evictions(self) -> list[dict[str, object]]:
        return [e.to_json() for e in self.sup.events.recent(kind="model.evicted")]

    async def use(self, name: str) -> None:
        """One request's worth of use: load if needed, then the model was used now."""
        self.clock.advance(1)
        await self.sup.load(name)


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Factory: ``await make(sizes_in_mib, pins=, measured=, **server)`` -> a started
    :class:`Harness`."""
    made: list[Harness] = []

    async def factory(sizes: dict[str, int], **kw: Any) -> Harness:
        h = Harness(tmp_path, sizes, **kw)
        await h.sup.start()
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.sup.shutdown()
        assert not h.launcher.alive(), "shutdown left a process running"


async def test_models_that_fit_stay_resident_together(make: Make) -> None:
    h = await make({"stt": 100, "chat": 100, "tts": 100}, memory_budget="400MiB")
    for _turn in range(3):
        for name in ("stt", "chat", "tts"):
            await h.use(name)
    assert h.resident() == {"stt", "chat", "tts"}
    assert len(h.launcher.launched) == 3, "warm turns started no worker"
    assert h.evictions() == []


async def test_budget_for_two_evicts_the_least_recently_used(make: Make) -> None:
    h = await make({"stt": 100, "chat": 100, "tts": 100}, memory_budget="250MiB")
    await h.use("stt")
    await h.use("chat")
    await h.use("tts")  # stt is the least recently used
    assert h.resident() == {"chat", "tts"}
    (evicted,) = h.evictions()
    assert evicted["model"] == "stt"
    assert evicted["reason"] == "memory"
    assert evicted["for_model"] == "tts"
    assert evicted["budget_bytes"] == 250 * MiB
    assert evicted["needed_bytes"] == 101 * MiB
    assert evicted["free_bytes"] == 250 * MiB - 202 * MiB
    await h.use("chat")  # now tts is the least recently used
    await h.use("stt")
    assert h.resident() == {"chat", "stt"}
    assert h.max_resident == 2


async def test_a_busy_model_is_not_evicted_even_if_least_recently_used(make: Make) -> None:
    h = await make({"busy": 100, "idle": 100, "new": 100}, memory_budget="250MiB")
    release = asyncio.Event()
    admitted = asyncio.Event()

    async def long_request() -> None:
        async with h.sup.lease("busy"):
            admitted.set()
            await release.wait()

    task = asyncio.create_task(long_request())
    await asyncio.wait_for(admitted.wait(), 5)
    await h.use("idle")
    await h.use("new")
    assert h.resident() == {"busy", "new"}
    assert [e["model"] for e in h.evictions()] == ["idle"]
    release.set()
    await task


async def test_pinned_model_survives_other_models_pressure(make: Make) -> None:
    h = await make({"pinned": 100, "a": 100, "b": 100}, pins=("pinned",), memory_budget="250MiB")
    await h.use("pinned")
    await h.use("a")
    await h.use("b")  # pinned is the least recently used, so a goes instead
    await h.use("a")
    assert h.state("pinned") is S.READY
    assert {e["model"] for e in h.evictions()} == {"a", "b"}


async def test_a_model_bigger_than_the_budget_gets_refused_before_any_start(make: Make) -> None:
    h = await make({"huge": 500}, memory_budget="300MiB")
    with pytest.raises(WorkerStartError) as caught:
        await h.use("huge")
    assert caught.value.code == "insufficient_memory"
    assert str(501 * MiB) in str(caught.value) and str(300 * MiB) in str(caught.value)
    assert h.launcher.launched == []
    (refused,) = [e.to_json() for e in h.sup.events.recent(kind="model.refused")]
    assert refused["needed_bytes"] == 501 * MiB


async def test_measured_footprint_is_learned_and_kept_across_restarts(
    make: Make, tmp_path: Path
) -> None:
    h = await make({"a": 100, "b": 100}, memory_budget="350MiB", measured={"a": 300})
    await h.use("a")
    assert h.sup.workers["a"].footprint.planned_bytes == 300 * MiB
    await h.use("b")  # 300 + 101 > 350: a (measured, not estimated) must go
    assert h.resident() == {"b"}
    await h.sup.shutdown()
    saved = json.loads((tmp_path / "data" / "footprints.json").read_text())
    assert saved["models"]["a"]["bytes"] == 300 * MiB
    # A new server on the same data dir plans with what the last one learned.
    again = await make({"a": 100, "b": 100}, memory_budget="350MiB")
    assert again.sup.workers["a"].footprint.learned_bytes == 300 * MiB
    assert again.sup.workers["a"].footprint.planned_bytes == 300 * MiB


async def test_without_a_budget_it_is_still_one_at_a_time(make: Make) -> None:
    h = await make({"a": 100, "b": 100, "c": 100})
    for name in ("a", "b", "c", "a"):
        await h.use(name)
    assert h.max_resident == 1
    assert [e["reason"] for e in h.evictions()] == ["count"] * 3


async def test_lowering_the_budget_on_reload_gives_back_idle_models(make: Make) -> None:
    h = await make({"a": 100, "b": 100, "c": 100}, memory_budget="1GiB")
    for name in ("a", "b", "c"):
        await h.use(name)
    spec = ServerConfig(memory_budget="250MiB").memory_budget
    h.sup.set_budget(resolve_budget(spec, total_bytes=2**34))
    await wait_event(h.sup.events, "model.unloaded", "a")  # one model given back
    assert h.resident() == {"b", "c"}
    assert h.evictions()[-1]["reason"] == "over_budget"
