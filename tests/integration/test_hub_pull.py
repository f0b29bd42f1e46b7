"""``mlx_serve.hub.pull`` against the fake hub: real child processes, real huggingface_hub.

Every test gets its own HF_HOME / HF_HUB_CACHE under tmp_path and a fresh fake hub on
HF_ENDPOINT; nothing can reach the real hub (conftest sets HF_HUB_OFFLINE=1 for everything
else, the pulls here unset it and point huggingface_hub at the fake).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

from mlx_serve.hub import (
    ChecksumMismatch,
    DownloadFailed,
    GatedRepo,
    HubUnreachable,
    NotCached,
    RepoNotFound,
    RevisionNotFound,
    delete_cached,
    estimated_size_bytes,
    pull,
    show,
)
from mlx_serve.testing.fake_hub import FakeHub, closed_port_url
from mlx_serve.tiny_models import build_text_model
from tests.conftest import eventually

pytestmark = pytest.mark.slow

REPO = "mlx-serve-test/tiny-llama"
GATED = "mlx-serve-test/gated-llama"
STORAGE = "models--mlx-serve-test--tiny-llama"
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("hub-src") / "tiny", seed=1)


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HF home and cache, with hub access enabled (conftest disables it)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cache = tmp_path.resolve() / "hf-cache"  # huggingface_hub reports resolved paths
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
async def hub(
    tiny_model: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FakeHub]:
    async with FakeHub({REPO: tiny_model, GATED: tiny_model}, gated={GATED}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


async def run_pull(revision: str | None = None) -> list[dict[str, Any]]:
    async with contextlib.aclosing(pull(REPO, revision)) as events:
        return [event async for event in events]


def source_files(model: Path) -> dict[str, bytes]:
    return {
        p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()
    }


# Filesystem checks live in sync helpers: the async tests only orchestrate (ASYNC240).
def exists(path: Path) -> bool:
    return os.path.lexists(path)


def file_size(path: Path) -> int:
    return path.stat().st_size


def read_files(root: Path, names: Iterable[str]) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in names}


def all_symlinks(root: Path, names: Iterable[str]) -> bool:
    return all((root / name).is_symlink() for name in names)


def incomplete_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.incomplete"))


def read_text(path: Path) -> str:
    return path.read_text()


def hub_children() -> list[psutil.Process]:
    """Download processes of this test process that are still alive."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "mlx_serve.hub" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
    return alive


async def test_pull_reports_progress_and_loads_offline(
    hub: FakeHub, hf_cache: Path, tiny_model: Path
) -> None:
    events = await run_pull()
    commit = hub.commit(REPO)
    expected = source_files(tiny_model)

    assert events[0] == {
        "status": "pulling manifest",
        "revision": commit,
        "files": len(expected),
        "total": sum(len(b) for b in expected.values()),
    }
    per_file: dict[str, list[int]] = {}
    for event in events:
        if event["status"] == "downloading":
            assert event["total"] == len(expected[event["file"]])
            per_file.setdefault(event["file"], []).append(event["completed"])
    assert set(per_file) == set(expected)
    for name, values in per_file.items():
        assert values == sorted(values), name  # never goes backwards
        assert values[-1] == len(expected[name])
    assert any(e == {"status": "verifying", "file": WEIGHTS} for e in events)

    success = events[-1]
    snapshot = hf_cache / STORAGE / "snapshots" / commit
    assert success == {
        "status": "success",
        "path": str(snapshot),
        "revision": commit,
        "bytes": sum(len(b) for b in expected.values()),
        "downloaded_bytes": sum(len(b) for b in expected.values()),
    }
    assert read_text(hf_cache / STORAGE / "refs" / "main") == commit
    assert read_files(snapshot, expected) == expected
    assert all_symlinks(snapshot, expected)
    assert not incomplete_files(hf_cache)

    # The cache layout is right if mlx_lm finds the model by repo id with the hub unreachable.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": closed_port_url()}
    code = f"from mlx_lm import load; model, tok = load({REPO!r}); print(type(model).__module__)"
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "llama" in proc.stdout


async def test_cache_is_identical_to_snapshot_download(hub: FakeHub, hf_cache: Path) -> None:
    await run_pull()
    reference = hf_cache.parent / "reference-cache"
    code = (
        "import sys; from huggingface_hub import snapshot_download; "
        f"print(snapshot_download({REPO!r}, cache_dir=sys.argv[1]))"
    )
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code, str(reference)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    def layout(root: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link", str(path.readlink()))
            elif path.is_dir():
                out[rel] = ("dir",)
            elif path.suffix == ".json" and "/trees/" in rel:
                out[rel] = ("json", json.loads(path.read_text()))
            elif path.suffix == ".lock":
                out[rel] = ("lock",)
            else:
                out[rel] = ("file", path.read_bytes())
        return out

    assert await asyncio.to_thread(layout, hf_cache) == await asyncio.to_thread(layout, reference)


async def test_second_pull_downloads_nothing(hub: FakeHub, tiny_model: Path) -> None:
    await run_pull()
    hub.clear_requests()
    events = await run_pull()
    assert events[-1]["status"] == "success"
    assert events[-1]["downloaded_bytes"] == 0
    assert {r.kind for r in hub.requests} <= {"info", "tree", "other"}, hub.requests
    for name in source_files(tiny_model):
        assert not hub.file_gets(name)


async def test_interrupted_pull_resumes_with_a_range_request(
    hub: FakeHub, hf_cache: Path, tiny_model: Path
) -> None:
    expected = source_files(tiny_model)
    hub.slow_bytes_per_s = 400_000
    async with contextlib.aclosing(pull(REPO)) as stream:
        async for event in stream:
            if event.get("file") == WEIGHTS and event.get("completed", 0) > 0:
                break  # leaving the block closes the generator: the pull is interrupted

    storage = hf_cache / STORAGE
    snapshot = storage / "snapshots" / hub.commit(REPO)
    assert not exists(snapshot / WEIGHTS)  # nothing half-written is visible as complete
    assert not exists(storage / "refs" / "main")
    (partial,) = incomplete_files(storage)
    resumed_from = file_size(partial)
    assert 0 < resumed_from < len(expected[WEIGHTS])

    hub.slow_bytes_per_s = None
    events = await run_pull()
    assert events[-1]["status"] == "success"
    first = next(e for e in events if e.get("file") == WEIGHTS)
    assert first["completed"] == resumed_from  # progress starts where the last pull stopped

    gets = hub.file_gets(WEIGHTS)
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range == f"bytes={resumed_from}-"
    for name in expected:
        if name != WEIGHTS:
            assert len(hub.file_gets(name)) == 1, name  # complete files are not fetched again
    assert read_files(snapshot, [WEIGHTS])[WEIGHTS] == expected[WEIGHTS]
    assert events[-1]["downloaded_bytes"] == len(expected[WEIGHTS]) - resumed_from


async def test_cancelling_the_task_stops_the_download_promptly(
    hub: FakeHub, hf_cache: Path
) -> None:
    hub.slow_bytes_per_s = 100_000
    started = asyncio.Event()

    async def consume() -> None:
        async for event in pull(REPO):
            if event.get("file") == WEIGHTS:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 15)
    await eventually(lambda: hub.bytes_sent(WEIGHTS) > 0, what="bytes flowing")
    assert hub_children()
    t0 = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 1.0
    assert not hub_children()

    # The download process is gone (asserted above), so nothing can still be receiving.
    assert not exists(hf_cache / STORAGE / "snapshots" / hub.commit(REPO) / WEIGHTS)

    hub.slow_bytes_per_s = None
    events = await run_pull()
    assert events[-1]["status"] == "success"


async def test_connection_dropped_mid_file_is_resumed_within_the_pull(
    hub: FakeHub, tiny_model: Path
) -> None:
    hub.fail_once[WEIGHTS] = 300_000  # more than one 256 KiB chunk, so some is on disk
    events = await run_pull()
    assert events[-1]["status"] == "success"
    gets = hub.file_gets(WEIGHTS)
    assert len(gets) == 2
    assert gets[1].range is not None and gets[1].range.startswith("bytes=")
    assert gets[1].range != "bytes=0-"
    snapshot = Path(events[-1]["path"])
    assert read_files(snapshot, [WEIGHTS]) == {WEIGHTS: source_files(tiny_model)[WEIGHTS]}


async def test_corrupt_download_is_discarded_and_pulled_again(
    hub: FakeHub, hf_cache: Path, tiny_model: Path
) -> None:
    hub.corrupt_once.add("config.json")
    with pytest.raises(ChecksumMismatch, match=r"config\.json"):
        await run_pull()
    storage = hf_cache / STORAGE
    assert not exists(storage / "snapshots" / hub.commit(REPO) / "config.json")
    assert not hub_children()

    events = await run_pull()
    snapshot = Path(events[-1]["path"])
    assert read_files(snapshot, ["config.json"]) == read_files(tiny_model, ["config.json"])


async def test_request_errors_are_raised_before_the_first_event(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RepoNotFound, match="mlx-serve-test/missing"):
        await anext(pull("mlx-serve-test/missing"))
    with pytest.raises(RevisionNotFound, match="no-such-branch"):
        await anext(pull(REPO, "no-such-branch"))
    with pytest.raises(GatedRepo, match="HF_TOKEN"):
        await anext(pull(GATED))
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(HubUnreachable):
        await anext(pull(REPO))
    assert not hub_children()


async def test_show_estimate_and_delete_a_pulled_repo(
    hub: FakeHub, hf_cache: Path, tiny_model: Path
) -> None:
    expected = source_files(tiny_model)
    assert show(REPO)["cached"] is False
    assert estimated_size_bytes(REPO) is None

    await run_pull()
    info = show(REPO)
    assert info["source"] == "hub"
    assert info["repo_id"] == REPO
    assert info["cached"] is True
    assert info["complete"] is True
    assert info["revision"] == hub.commit(REPO)
    assert Path(info["path"]).name == hub.commit(REPO)
    assert {f["name"]: f["size"] for f in info["files"]} == {
        name: len(data) for name, data in expected.items()
    }
    assert info["size_bytes"] == sum(len(d) for d in expected.values())
    assert info["architecture"] == "llama"
    assert info["parameters"] > 0
    assert info["has_tokenizer"] is True
    assert info["has_chat_template"] is True
    assert estimated_size_bytes(REPO) == len(expected[WEIGHTS])

    freed = delete_cached(REPO)
    assert freed >= sum(len(d) for d in expected.values())
    assert not exists(hf_cache / STORAGE)
    assert show(REPO)["cached"] is False
    with pytest.raises(NotCached):
        delete_cached(REPO)


async def test_unexpected_failure_ends_the_stream_with_download_failed(
    hub: FakeHub, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "cache-is-a-file"
    not_a_dir.write_text("")
    events: list[dict[str, Any]] = []
    with pytest.raises(DownloadFailed, match="Error"):
        async for event in pull(REPO, cache_dir=not_a_dir):
            events.append(event)
    assert events and events[0]["status"] == "pulling manifest"
    assert not hub_children()


async def test_an_abandoned_pull_is_killed_too(hub: FakeHub) -> None:
    # A caller that stops iterating without closing the generator (``break`` out of a plain
    # ``async for``) still stops the download, once asyncio finalizes the generator.
    hub.slow_bytes_per_s = 50_000
    stream = pull(REPO)
    assert (await anext(stream))["status"] == "pulling manifest"
    assert hub_children()
    del stream
    await eventually(lambda: not hub_children(), timeout=5, what="the download to be killed")
