"""A model whose files are not on disk: refused at once, or pulled first (``auto_pull``).

The supervisor runs with in-memory fakes (no process is forked) and a scripted stand-in for
``hub.pull``; the Hugging Face cache is a temporary directory. The real pull, the real hub
client and real workers are in ``tests/integration/test_first_run.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import Config, ModelConfig, ModelType, ServerConfig
from mlx_serve.hub import HubOffline
from mlx_serve.supervisor import ShuttingDown, Supervisor, WorkerStartError
from mlx_serve.supervisor.states import WorkerState as S
from mlx_serve.supervisor.worker import ModelFilesMissing
from mlx_serve.testing import FakeClock, FakeLauncher, InstantDriver, cache_snapshot
from tests.conftest import eventually, wait_event

MODEL_FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * 200}


class ScriptedPull:
    """Stands in for ``hub.pull``: a manifest and some progress, then it waits for ``go``,
    "downloads" (lays the model into the cache) and succeeds; or it raises ``error`` first."""

    def __init__(
        self,
        cache: Path,
        *,
        error: Exception | None = None,
        files: dict[str, bytes] | None = None,
    ) -> None:
        self.cache = cache
        self.error = error
        self.files = MODEL_FILES if files is None else files
        self.calls: list[str] = []
        self.closed = 0
        self.go = asyncio.Event()

    async def pull(self, repo: str) -> AsyncGenerator[dict[str, Any], None]:
        self.calls.append(repo)
        try:
            if self.error is not None:
                raise self.error
            yield {"status": "pulling manifest", "revision": "c0ffee", "files": 2, "total": 300}
            yield {"status": "downloading", "file": "config.json", "completed": 100, "total": 100}
            yield {"status": "downloading", "file": "model.safetensors", "completed": 50,
                   "total": 200}  # fmt: skip
            await self.go.wait()
            snapshot = cache_snapshot(self.cache, repo, self.files)
            yield {"status": "downloading", "file": "model.safetensors", "completed": 200,
                   "total": 200}  # fmt: skip
            yield {"status": "success", "path": str(snapshot), "revision": "c0ffee",
                   "bytes": 300, "downloaded_bytes": 250}  # fmt: skip
        finally:
            self.closed += 1


class Harness:
    def __init__(
        self, tmp: Path, models: dict[str, str], pull: ScriptedPull, **server: object
    ) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        self.pull = pull
        cfg = Config(
            server=ServerConfig(**server),
            models={name: ModelConfig(path=path) for name, path in models.items()},
        )
        self.sup = Supervisor(
            cfg,
            data_dir=tmp / "data",
            launcher=self.launcher,
            drivers={ModelType.TEXT: InstantDriver(self.launcher, needs_model_files=True)},
            clock=self.clock,
            pull=pull.pull,
        )

    def state(self, name: str) -> S:
        return self.sup.workers[name].state

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.sup.events.recent(kind=kind)]

    async def pull_reached(self, name: str, status: str) -> None:
        """Wait for the ``model.pull`` event of ``name`` with ``status``."""
        await wait_event(
            self.sup.events, "model.pull", name, where=lambda e: e.data.get("status") == status
        )

    def pull_statuses(self, name: str) -> list[str]:
        return [str(e["status"]) for e in self.kinds("model.pull") if e["model"] == name]


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own."""
    path = tmp_path / "hf-cache"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    return path


@pytest.fixture
async def make(tmp_path: Path, cache: Path) -> AsyncIterator[Make]:
    made: list[Harness] = []

    async def factory(
        models: dict[str, str],
        *,
        error: Exception | None = None,
        files: dict[str, bytes] | None = None,
        **server: object,
    ) -> Harness:
        h = Harness(tmp_path, models, ScriptedPull(cache, error=error, files=files), **server)
        await h.sup.start()
        made.append(h)
        return h

    yield factory
    for h in made:
        h.pull.go.set()
        await h.sup.shutdown()
        assert not h.launcher.alive(), "shutdown left a process running"


def local_model(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, data in MODEL_FILES.items():
        (root / name).write_bytes(data)
    return root


async def refused(h: Harness, name: str) -> WorkerStartError:
    with pytest.raises(WorkerStartError) as info:
        await asyncio.wait_for(h.sup.load(name), 5)
    return info.value


def assert_no_start_and_no_backoff(h: Harness, name: str) -> None:
    worker = h.sup.workers[name]
    assert h.launcher.launched == [], "no worker process for files that are not there"
    assert worker.state is S.STOPPED and h.kinds("worker.state") == []
    assert (worker.failures, worker.retry_at) == (0, 0.0), "not a crash: no backoff"
    assert h.sup.scheduler.waiting(name) == 0


# --------------------------------------------------------------- refused at once


async def test_a_hub_model_not_in_the_cache_is_refused_at_once(make: Make, cache: Path) -> None:
    h = await make({"a": "org/a"})
    error = await refused(h, "a")
    assert isinstance(error, ModelFilesMissing)
    assert (error.code, error.http_status) == ("model_not_downloaded", 404)
    message = str(error)
    assert message.startswith("model 'a' (org/a) is not downloaded")
    assert "run: mlx-serve models pull org/a" in message
    assert "server.auto_pull: true" in message
    assert str(cache) in message, "says which cache it looked in (HF_HOME may differ)"
    assert "Traceback" not in message and "last lines of its log" not in message
    assert_no_start_and_no_backoff(h, "a")
    # Again: the same answer, not "is not started again yet" (no crash loop).
    again = await refused(h, "a")
    assert again.code == "model_not_downloaded"
    assert_no_start_and_no_backoff(h, "a")
    events = h.kinds("model.missing_files")
    assert len(events) == 2 and events[0]["repo"] == "org/a"
    assert events[0]["code"] == "model_not_downloaded"
    assert h.pull.calls == [], "auto_pull is off: nothing is downloaded"


async def test_a_missing_local_directory_is_refused_at_once(make: Make, tmp_path: Path) -> None:
    model = local_model(tmp_path / "models" / "mine")
    h = await make({"m": str(model)})
    shutil.rmtree(model)  # deleted after the config was loaded
    error = await refused(h, "m")
    assert (error.code, error.http_status) == ("model_files_missing", 404)
    assert f"the local directory {model} does not exist" in str(error)
    assert str(error).startswith("model 'm' cannot be started")
    assert_no_start_and_no_backoff(h, "m")


async def test_a_local_directory_without_config_json_is_refused(make: Make, tmp_path: Path) -> None:
    model = local_model(tmp_path / "models" / "mine")
    (model / "config.json").unlink()
    h = await make({"m": str(model)}, auto_pull=True)
    error = await refused(h, "m")
    assert error.code == "model_files_missing" and "has no config.json" in str(error)
    assert h.pull.calls == [], "a local directory is never pulled"
    assert_no_start_and_no_backoff(h, "m")


async def test_a_partly_downloaded_repo_is_refused(make: Make, cache: Path) -> None:
    cache_snapshot(cache, "org/a", {"config.json": MODEL_FILES["config.json"]})
    h = await make({"a": "org/a"})
    error = await refused(h, "a")
    assert error.code == "model_not_downloaded"
    assert "only partly downloaded" in str(error) and "has no weight files" in str(error)
    assert_no_start_and_no_backoff(h, "a")


async def test_models_whose_files_are_there_start(make: Make, cache: Path, tmp_path: Path) -> None:
    cache_snapshot(cache, "org/a", MODEL_FILES)
    h = await make({"a": "org/a", "m": str(local_model(tmp_path / "models" / "mine"))})
    await h.sup.load("a")
    assert h.state("a") is S.READY
    await h.sup.load("m")
    assert h.state("m") is S.READY and len(h.launcher.launched) == 2
    assert h.kinds("model.missing_files") == []


async def test_files_gone_between_queueing_and_the_start_fail_the_waiters(
    make: Make, cache: Path
) -> None:
    """The check before a request queues passed; the start re-checks (a deleted cache, a
    reload's new path) and refuses without a process or a backoff."""
    snapshot = cache_snapshot(cache, "org/a", MODEL_FILES)
    cache_snapshot(cache, "org/b", MODEL_FILES)
    h = await make({"a": "org/a", "b": "org/b"}, fair_wait=1000)
    release = asyncio.Event()

    async def hold_b() -> None:
        async with h.sup.lease("b"):
            await release.wait()

    holder = asyncio.create_task(hold_b())
    await eventually(lambda: h.sup.workers["b"].inflight == 1, what="b in flight")
    waiting = asyncio.create_task(h.sup.load("a"))
    await eventually(lambda: h.sup.scheduler.waiting("a") == 1, what="a queued")
    shutil.rmtree(snapshot.parent.parent)  # the repo's whole cache folder
    release.set()
    await holder
    with pytest.raises(ModelFilesMissing) as info:
        await asyncio.wait_for(waiting, 5)
    assert info.value.code == "model_not_downloaded"
    assert len(h.launcher.launched) == 1 and h.state("a") is S.STOPPED
    assert h.sup.workers["a"].failures == 0


# ------------------------------------------------------------------- auto_pull


async def test_auto_pull_downloads_while_requests_wait_then_serves(make: Make) -> None:
    h = await make({"a": "org/a"}, auto_pull=True)
    worker = h.sup.workers["a"]
    first = asyncio.create_task(h.sup.load("a"))
    await h.pull_reached("a", "downloading")
    second = asyncio.create_task(h.sup.load("a"))
    await eventually(lambda: h.sup.scheduler.waiting("a") == 2, what="both requests queued")

    progress = worker.pull_progress
    assert progress is not None
    assert progress["repo"] == "org/a" and progress["files"] == 2
    assert (progress["completed_bytes"], progress["total_bytes"]) == (150, 300)
    assert progress["percent"] == 50.0
    assert h.launcher.launched == [], "nothing starts before the files are there"
    assert h.state("a") is S.STOPPED
    assert h.pull.calls == ["org/a"], "one pull, however many requests wait"
    assert h.pull_statuses("a") == ["started", "pulling manifest", "downloading"]
    # The first progress event comes at once, later ones at most every few seconds (the
    # attribute is always current).
    shown = h.kinds("model.pull")[-1]
    assert (shown["completed_bytes"], shown["percent"], shown["auto"]) == (100, 33.3, True)

    h.pull.go.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert h.state("a") is S.READY and len(h.launcher.launched) == 1
    assert worker.pull_progress is None
    assert h.pull_statuses("a")[-1] == "success"
    success = h.kinds("model.pull")[-1]
    assert (success["bytes"], success["downloaded_bytes"]) == (300, 250)
    assert h.kinds("model.loaded")[0]["model"] == "a"
    assert h.kinds("model.missing_files") == []


async def test_other_models_are_served_while_one_is_pulled(make: Make, cache: Path) -> None:
    cache_snapshot(cache, "org/b", MODEL_FILES)
    h = await make({"a": "org/a", "b": "org/b"}, auto_pull=True, fair_wait=0)
    pulled = asyncio.create_task(h.sup.load("a"))
    await eventually(lambda: h.sup.scheduler.waiting("a") == 1, what="a waits for its pull")
    await asyncio.wait_for(h.sup.load("b"), 5)  # neither blocked nor drained for a
    assert h.state("b") is S.READY and h.state("a") is S.STOPPED
    assert h.kinds("worker.drain") == [] and h.kinds("swap") == []
    h.pull.go.set()
    await asyncio.wait_for(pulled, 5)
    assert (h.state("a"), h.state("b")) == (S.READY, S.STOPPED)  # then swapped in


async def test_a_failed_pull_fails_the_waiters_without_backoff(make: Make) -> None:
    offline = HubOffline("HF_HUB_OFFLINE is set in the server's environment")
    h = await make({"a": "org/a"}, auto_pull=True, error=offline)
    error = await refused(h, "a")
    assert (error.code, error.http_status) == ("hub_offline", 503)
    assert str(error).startswith("model 'a' (org/a) is not downloaded, and downloading it failed")
    assert "HF_HUB_OFFLINE" in str(error)
    assert_no_start_and_no_backoff(h, "a")
    assert h.sup.workers["a"].pull_progress is None
    assert h.pull_statuses("a") == ["started", "error"]
    assert h.kinds("model.pull")[-1]["code"] == "hub_offline"
    # A later request tries again (the cause may be gone), and fails the same way.
    again = await refused(h, "a")
    assert again.code == "hub_offline" and h.pull.calls == ["org/a", "org/a"]
    assert_no_start_and_no_backoff(h, "a")


async def test_a_pull_that_brings_no_model_fails_the_waiters(make: Make) -> None:
    h = await make({"a": "org/a"}, auto_pull=True, files={"README.md": b"just a readme"})
    h.pull.go.set()
    error = await refused(h, "a")
    assert error.code == "model_files_missing"
    assert "org/a was downloaded, but" in str(error) and "has no config.json" in str(error)
    assert h.launcher.launched == []


async def test_unloading_a_model_cancels_its_pull(make: Make) -> None:
    h = await make({"a": "org/a"}, auto_pull=True)
    waiting = asyncio.create_task(h.sup.load("a"))
    await h.pull_reached("a", "started")
    await eventually(lambda: h.sup.scheduler.waiting("a") == 1, what="queued")
    await asyncio.wait_for(h.sup.unload("a"), 5)
    with pytest.raises(WorkerStartError) as info:
        await asyncio.wait_for(waiting, 5)
    assert info.value.code == "pull_cancelled"
    assert h.pull.closed == 1, "the download was stopped"
    assert h.sup.workers["a"].pull_progress is None
    assert h.pull_statuses("a")[-1] == "cancelled"
    assert not h.sup.pulls.pulling("a")


async def test_shutdown_cancels_a_pull(make: Make) -> None:
    h = await make({"a": "org/a"}, auto_pull=True)
    waiting = asyncio.create_task(h.sup.load("a"))
    await eventually(lambda: h.sup.scheduler.waiting("a") == 1, what="queued")
    await asyncio.wait_for(h.sup.shutdown(), 5)
    with pytest.raises(ShuttingDown):
        await waiting
    assert h.pull.closed == 1 and h.launcher.launched == []
    assert h.pull_statuses("a")[-1] == "cancelled"


async def test_files_of_a_model_being_pulled_cannot_be_claimed(make: Make) -> None:
    """Deleting a model's files while they are being downloaded is refused (the management
    API's delete claims them first)."""
    h = await make({"a": "org/a"}, auto_pull=True)
    waiting = asyncio.create_task(h.sup.load("a"))
    await h.pull_reached("a", "started")
    assert not h.sup.workers["a"].claim_files("its files are being deleted")
    h.pull.go.set()
    await asyncio.wait_for(waiting, 5)


async def test_auto_pull_starts_for_files_gone_before_the_start(make: Make, cache: Path) -> None:
    """Files that vanish between the check at queueing and the start are pulled too."""
    snapshot = cache_snapshot(cache, "org/a", MODEL_FILES)
    cache_snapshot(cache, "org/b", MODEL_FILES)
    h = await make({"a": "org/a", "b": "org/b"}, auto_pull=True, fair_wait=1000)
    release = asyncio.Event()

    async def hold_b() -> None:
        async with h.sup.lease("b"):
            await release.wait()

    holder = asyncio.create_task(hold_b())
    await eventually(lambda: h.sup.workers["b"].inflight == 1, what="b in flight")
    waiting = asyncio.create_task(h.sup.load("a"))
    await eventually(lambda: h.sup.scheduler.waiting("a") == 1, what="a queued")
    shutil.rmtree(snapshot.parent.parent)
    release.set()
    await holder
    await h.pull_reached("a", "started")
    h.pull.go.set()
    await asyncio.wait_for(waiting, 5)
    assert h.state("a") is S.READY and h.pull.calls == ["org/a"]


async def test_injected_drivers_are_not_checked_unless_they_ask(
    tmp_path: Path, cache: Path
) -> None:
    """Fakes (and embedders' drivers) serve made-up paths: no files are checked for them."""
    launcher = FakeLauncher()
    cfg = Config(models={"a": ModelConfig(path="org/not-cached")})
    sup = Supervisor(
        cfg,
        data_dir=tmp_path / "data",
        launcher=launcher,
        drivers={ModelType.TEXT: InstantDriver(launcher)},
        clock=FakeClock(),
    )
    await sup.start()
    try:
        await asyncio.wait_for(sup.load("a"), 5)
        assert sup.workers["a"].state is S.READY
    finally:
        with contextlib.suppress(Exception):
            await sup.shutdown()


# ------------------------------------------------------------------ the check itself


def test_what_counts_as_a_model_on_disk(tmp_path: Path, cache: Path) -> None:
    from mlx_serve.hub import check_model_files

    nested = tmp_path / "tts"
    (nested / "codec").mkdir(parents=True)
    (nested / "config.json").write_text("{}")
    (nested / "codec" / "model.safetensors").write_bytes(b"\0")
    assert check_model_files(str(nested)) is None, "weights one level down count"
    assert check_model_files("gpt2") is None, "not a strict repo id: the worker decides"
    missing = check_model_files("org/a")
    assert missing is not None and missing.pullable and missing.repo_id == "org/a"
    assert missing.path == cache / "models--org--a"
    cache_snapshot(cache, "org/a", MODEL_FILES)
    assert check_model_files("org/a") is None
    file = tmp_path / "file"
    file.write_text("x")
    gone = check_model_files(str(file))
    assert gone is not None and not gone.pullable and "is not a directory" in gone.problem
