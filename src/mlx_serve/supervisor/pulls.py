"""``server.auto_pull``: download a model's files before its first start, while requests wait.

A request for a hub model that is not in the cache queues as usual; instead of a start, the
model gets a pull (:func:`mlx_serve.hub.pull`: a child process, resumable, killed at once when
cancelled). While it runs, :attr:`ManagedWorker.pull_progress` says how far it got (status
views read it) and ``model.pull`` events say so too, and the scheduler starts nothing for that
model (its requests stay queued; other models are served meanwhile). When the pull succeeds,
the scheduler starts the model for its waiters; when it fails, they get the hub's error at
once (``hub_offline``, ``repo_not_found``...), which is not a crash: no backoff follows.

One pull per repo at a time: a second model on the same repo, or more requests, wait for the
same pull. A pull outlives the requests that asked for it (the next one finds the model
ready); it ends early only when the model is unloaded or removed, or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlx_serve.supervisor import events as ev

if TYPE_CHECKING:
    from mlx_serve.supervisor.clock import Clock
    from mlx_serve.supervisor.events import EventBus
    from mlx_serve.supervisor.worker import ManagedWorker

__all__ = ["PROGRESS_EVENT_INTERVAL", "AutoPuller", "PullFn"]

log = logging.getLogger(__name__)

#: Downloads ``repo_id`` (the revision ``main``), yielding :func:`mlx_serve.hub.pull`'s
#: progress dicts; raises a :class:`~mlx_serve.hub.HubError` when it fails.
PullFn = Callable[[str], AsyncGenerator[dict[str, Any], None]]

#: Seconds between two ``model.pull`` progress events of one pull (the first comes at once;
#: ``pull_progress`` is always current).
PROGRESS_EVENT_INTERVAL = 2.0


def _hub_pull(repo_id: str) -> AsyncGenerator[dict[str, Any], None]:
    from mlx_serve.hub import pull  # noqa: PLC0415 - huggingface_hub only when used

    return pull(repo_id)


@dataclass(eq=False)
class _Pull:
    repo: str
    workers: dict[str, ManagedWorker]  # the models waiting for this repo, by name
    progress: dict[str, Any]
    task: asyncio.Task[None] | None = None
    per_file: dict[str, int] = field(default_factory=dict)
    last_event: float | None = None


class AutoPuller:
    """Runs the pulls ``auto_pull`` starts; the supervisor decides when, and what follows.

    ``on_success(worker, repo)`` runs once the files are there; ``on_failure(worker, repo,
    exc)`` once they cannot be (both for every model the pull was for). Neither runs for a
    pull that was cancelled: whoever cancelled it answers its waiters.
    """

    def __init__(
        self,
        *,
        events: EventBus,
        clock: Clock,
        on_success: Callable[[ManagedWorker, str], None],
        on_failure: Callable[[ManagedWorker, str, Exception], None],
        pull: PullFn | None = None,
    ) -> None:
        self._events = events
        self._clock = clock
        self._on_success = on_success
        self._on_failure = on_failure
        self._pull = pull or _hub_pull
        self._pulls: dict[str, _Pull] = {}  # by repo id

    def pulling(self, name: str) -> bool:
        """Is a pull running for model ``name``?"""
        return any(name in job.workers for job in self._pulls.values())

    def start(self, worker: ManagedWorker, repo: str) -> None:
        """Pull ``repo`` for ``worker`` unless that already happens (then it joins)."""
        job = self._pulls.get(repo)
        if job is not None:
            if worker.name not in job.workers:
                job.workers[worker.name] = worker
                worker.set_pull_progress(job.progress)
            return
        progress = {
            "repo": repo, "status": "starting", "completed_bytes": 0, "total_bytes": None,
            "percent": None, "files": None, "started_at": round(self._clock.wall(), 3),
        }  # fmt: skip
        job = _Pull(repo, {worker.name: worker}, progress)
        self._pulls[repo] = job
        worker.set_pull_progress(progress)
        self._events.emit(_pull(worker.name, repo, "started"))
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"pull-{repo}")

    async def cancel(self, name: str, reason: str) -> bool:
        """Stop pulling for model ``name``: the download ends (its partial files stay for the
        next pull) unless another model waits for the same repo. True if one ran."""
        for job in list(self._pulls.values()):
            worker = job.workers.pop(name, None)
            if worker is None:
                continue
            worker.set_pull_progress(None)
            self._events.emit(_pull(name, job.repo, "cancelled", reason=reason))
            if not job.workers and job.task is not None:
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task
            return True
        return False

    async def close(self) -> None:
        """Cancel every pull (the server is stopping) and wait for their processes to go."""
        tasks = [job.task for job in self._pulls.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, job: _Pull) -> None:
        started = self._clock.now()
        result: dict[str, Any] = {}
        try:
            async with contextlib.aclosing(self._pull(job.repo)) as progress:
                async for item in progress:
                    if item.get("status") == "success":
                        result = item
                    else:
                        self._update(job, item)
        except asyncio.CancelledError:
            for worker in self._end(job):  # the server is stopping (cancel() took its own)
                self._events.emit(_pull(worker.name, job.repo, "cancelled", reason="shutdown"))
            raise
        except Exception as exc:
            workers = self._end(job)
            if not workers:
                return
            code = getattr(exc, "code", None) or "pull_failed"
            for worker in workers:
                self._events.emit(_pull(worker.name, job.repo, "error", error=str(exc), code=code))
            for worker in workers:
                self._on_failure(worker, job.repo, exc)
            return
        workers = self._end(job)
        for worker in workers:
            self._events.emit(
                _pull(
                    worker.name, job.repo, "success",
                    bytes=result.get("bytes"), downloaded_bytes=result.get("downloaded_bytes"),
                    revision=result.get("revision"),
                    duration_s=round(self._clock.now() - started, 3),
                )
            )  # fmt: skip
        for worker in workers:
            self._on_success(worker, job.repo)

    def _end(self, job: _Pull) -> list[ManagedWorker]:
        """Forget ``job``; its models may start (or fail) from now on. Who it was for."""
        if self._pulls.get(job.repo) is job:
            del self._pulls[job.repo]
        workers = list(job.workers.values())
        job.workers.clear()
        for worker in workers:
            worker.set_pull_progress(None)
        return workers

    def _update(self, job: _Pull, item: dict[str, Any]) -> None:
        status = str(item.get("status") or "")
        progress = dict(job.progress, status=status)
        if status == "pulling manifest":
            progress.update(files=item.get("files"), total_bytes=item.get("total"),
                            revision=item.get("revision"))  # fmt: skip
        elif status == "downloading" and isinstance(item.get("file"), str):
            job.per_file[item["file"]] = int(item.get("completed") or 0)
            progress["file"] = item["file"]
        elif status == "verifying":
            progress["file"] = item.get("file")
        completed = sum(job.per_file.values())
        total = progress.get("total_bytes")
        progress["completed_bytes"] = completed
        if isinstance(total, int) and total > 0:
            progress["percent"] = round(min(100.0, 100.0 * completed / total), 1)
        job.progress = progress
        for worker in job.workers.values():
            worker.set_pull_progress(progress)
        now = self._clock.now()
        due = job.last_event is None or now - job.last_event >= PROGRESS_EVENT_INTERVAL
        if status == "downloading" and due:
            job.last_event = now
        if status == "pulling manifest" or (status == "downloading" and due):
            fields = {k: progress.get(k) for k in ("completed_bytes", "total_bytes", "percent")}
            if status == "pulling manifest":
                fields["files"] = progress.get("files")
            for worker in job.workers.values():
                self._events.emit(_pull(worker.name, job.repo, status, **fields))


def _pull(model: str, repo: str, status: str, **figures: Any) -> ev.ModelPull:
    """A ``model.pull`` event of ``server.auto_pull`` (``auto``: not asked for by a client)."""
    return ev.ModelPull(model=model, repo=repo, status=status, extra={"auto": True, **figures})
