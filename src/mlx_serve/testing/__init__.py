"""Fakes for lifecycle tests, shipped so users' own tests can use them too.

- :class:`FakeClock` (re-exported): time that moves only when told.
- :class:`FakeWorkerDriver`: starts :mod:`mlx_serve.testing.fake_worker` as a real process,
  with its failure flags taken from the model's ``args``.
- :class:`FakeLauncher` / :class:`FakeProcess` / :class:`InstantDriver`: no process at all,
  for scheduler and state-machine tests that must not fork.
- :func:`cache_snapshot`: put a model into a Hugging Face cache directory as a download
  would (for tests of what needs a model "downloaded").
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from mlx_serve.supervisor.clock import FakeClock
from mlx_serve.workers.base import LaunchContext, flags_from_args, guarded_argv
from mlx_serve.workers.process import SIGKILL, SIGTERM, LaunchSpec, WorkerProcess
from mlx_serve.workers.text import TextDriver

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig

__all__ = [
    "FakeClock",
    "FakeLauncher",
    "FakeProcess",
    "FakeWorkerDriver",
    "InstantDriver",
    "cache_snapshot",
]


class FakeWorkerDriver(TextDriver):
    """Like the text driver, but the process is the fake worker; flags come from ``args``."""

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec:
        argv = guarded_argv(ctx, "mlx_serve.testing.fake_worker")
        argv += flags_from_args(ctx.model.args)
        return LaunchSpec(argv=argv, log_path=ctx.log_path)


class FakeProcess:
    """An in-memory stand-in for a worker process."""

    _next_pid = 40_000

    def __init__(self, spec: LaunchSpec, *, ignore_sigterm: bool = False) -> None:
        FakeProcess._next_pid += 1
        self.pid = FakeProcess._next_pid
        self.spec = spec
        self.returncode: int | None = None
        self.ready = False
        self.ignore_sigterm = ignore_sigterm
        self.signals: list[int] = []
        self._done = asyncio.Event()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self.returncode is not None:
            return
        if sig == SIGKILL or (sig == SIGTERM and not self.ignore_sigterm):
            self.exit(-sig)

    def exit(self, code: int) -> None:
        """Simulate the process ending (a crash when nobody asked it to)."""
        self.returncode = code
        self._done.set()


class FakeLauncher:
    """Records every launch; processes become ready when a test (or ``auto_ready``) says so."""

    def __init__(self, *, auto_ready: bool = True, ignore_sigterm: bool = False) -> None:
        self.auto_ready = auto_ready
        self.ignore_sigterm = ignore_sigterm
        self.launched: list[FakeProcess] = []

    async def launch(self, spec: LaunchSpec) -> WorkerProcess:
        proc = FakeProcess(spec, ignore_sigterm=self.ignore_sigterm)
        proc.ready = self.auto_ready
        self.launched.append(proc)
        return proc

    def alive(self) -> list[FakeProcess]:
        return [p for p in self.launched if p.returncode is None]


class InstantDriver:
    """A driver for :class:`FakeLauncher`: ready as soon as its fake process says so.

    ``needs_model_files``: check the model's files before a start, as the real drivers do
    (off by default: fake models have no files).
    """

    health_path = "/health"

    def __init__(self, launcher: FakeLauncher, *, needs_model_files: bool = False) -> None:
        self._launcher = launcher
        self.needs_model_files = needs_model_files

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec:
        return LaunchSpec(argv=["fake", ctx.name], log_path=ctx.log_path)

    def upstream_model(self, model: ModelConfig) -> str:
        return model.path

    async def probe(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> dict[str, Any] | None:
        proc = self._launcher.launched[-1]
        return {} if proc.ready else None


def cache_snapshot(cache: Path, repo_id: str, files: Mapping[str, bytes | Path]) -> Path:
    """Lay ``files`` out in the hub cache ``cache`` as ``repo_id``'s snapshot of ``main``
    (blobs, a snapshot of symlinks, ``refs/main``), the way a finished download leaves them.
    Values are contents, or files to copy. Returns the snapshot directory."""
    contents = {name: v.read_bytes() if isinstance(v, Path) else v for name, v in files.items()}
    digest = hashlib.sha1(repr(sorted(contents.items())).encode(), usedforsecurity=False)
    commit = digest.hexdigest()
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for name, data in contents.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(blob)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot
