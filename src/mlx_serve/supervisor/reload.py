"""Applying a changed models.yaml to a running supervisor without dropping loaded models.

:func:`diff_configs` is pure: old config + new config -> what changed. :func:`apply_config`
acts on it: unchanged models keep their workers (and their pids); added models are created
unloaded; removed models drain and stop; a model whose process-level settings changed (path,
type, worker flags, KV cache) restarts only after its in-flight requests finish, and the
process keeps its old settings until then (the router must never send a new path to an old
worker). Settings that only the router reads (defaults, aliases, timeouts) apply at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlx_serve.config import Config, ConfigError, ModelConfig, load_config
from mlx_serve.supervisor import events as ev

if TYPE_CHECKING:
    from pathlib import Path

    from mlx_serve.supervisor.supervisor import Supervisor

#: Model fields the worker process is started with: changing one needs a restart. (``pin``,
#: ``preload``, timeouts, defaults and aliases are read by the router and scheduler only.)
PROCESS_FIELDS = ("type", "path", "args", "max_kv_cache_size", "max_concurrency")
#: Server fields that only take effect when the server restarts.
RESTART_FIELDS = ("host", "port", "data_dir")


@dataclass
class ConfigDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # process settings changed
    updated: list[str] = field(default_factory=list)  # router-only settings changed
    unchanged: list[str] = field(default_factory=list)
    server_changed: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)  # server.host/port/data_dir

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": sorted(self.restarted + self.updated),
            "restarted": self.restarted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "server_changed": self.server_changed,
            "restart_needed": self.restart_needed,
        }


def _process_view(model: ModelConfig) -> dict[str, Any]:
    return {k: getattr(model, k) for k in PROCESS_FIELDS}


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    diff = ConfigDiff()
    for name, model in new.models.items():
        before = old.models.get(name)
        if before is None:
            diff.added.append(name)
        elif _process_view(before) != _process_view(model):
            diff.restarted.append(name)
        elif before != model:
            diff.updated.append(name)
        else:
            diff.unchanged.append(name)
    diff.removed = [name for name in old.models if name not in new.models]
    old_server, new_server = old.server.model_dump(), new.server.model_dump()
    for key, value in new_server.items():
        if old_server.get(key) != value:
            (diff.restart_needed if key in RESTART_FIELDS else diff.server_changed).append(key)
    return diff


async def apply_config(supervisor: Supervisor, new: Config) -> ConfigDiff:
    """Make ``supervisor`` serve ``new``; see the module docstring for what happens to whom."""
    old = supervisor.config
    diff = diff_configs(old, new)
    # Host, port and data dir stay as they are until a restart; everything else moves.
    live_server = new.server.model_copy(
        update={key: getattr(old.server, key) for key in RESTART_FIELDS}
    )
    new = new.model_copy(update={"server": live_server})
    new.source = old.source if new.source is None else new.source
    budget = supervisor.budget
    if old.server.memory_budget != live_server.memory_budget:
        budget = await asyncio.to_thread(supervisor.resolve_budget, new)
    supervisor.config = new
    for worker in supervisor.workers.values():
        worker.set_server(live_server)
    scheduler = supervisor.scheduler
    scheduler.queue_limit = live_server.queue_limit

    for name in diff.added:
        supervisor.add_worker(name, new.models[name])
    for name in diff.updated:
        supervisor.workers[name].update_router_settings(new.models[name])
    stops: list[asyncio.Task[None]] = []
    for name in diff.restarted:
        worker = supervisor.workers[name]
        # A running process keeps its old settings until it stops; the new ones apply at
        # its next start (the router must never send a new path to an old worker).
        if worker.update_model(new.models[name]):
            stops.append(asyncio.create_task(supervisor.unload(name)))
        supervisor.footprints.plan(worker)
    for worker in supervisor.workers.values():
        worker.reset_slots()  # a new max_concurrency for every model not loaded right now
    supervisor.set_budget(budget)
    supervisor.spares.stop_timeout = min(live_server.stop_timeout, 5.0)
    supervisor.configure_spares()
    for name in diff.removed:
        stops.append(asyncio.create_task(supervisor.remove_worker(name)))
    if stops:
        await asyncio.gather(*stops, return_exceptions=True)
    scheduler.wake()
    return diff


async def reload_from_file(supervisor: Supervisor, path: Path, *, trigger: str) -> dict[str, Any]:
    """Parse ``path`` and apply it; an invalid file leaves everything as it was.

    Returns (and emits as a ``config.reload`` event) the outcome: ``status`` ``ok`` with the
    diff, or ``invalid`` with the error naming file, line and key.
    """
    async with supervisor.reload_lock:
        return await _reload(supervisor, path, trigger=trigger)


async def _reload(supervisor: Supervisor, path: Path, *, trigger: str) -> dict[str, Any]:
    try:
        new = await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        result: dict[str, Any] = {"status": "invalid", "error": str(exc), "trigger": trigger}
        supervisor.events.emit(_reload_event(result))
        return result
    diff = await apply_config(supervisor, new)
    result = {"status": "ok", "error": None, "trigger": trigger, **diff.to_json()}
    supervisor.events.emit(_reload_event(result))
    return result


def _reload_event(result: dict[str, Any]) -> ev.ConfigReload:
    outcome = {k: v for k, v in result.items() if k not in ("status", "trigger", "error")}
    return ev.ConfigReload(
        status=str(result["status"]),
        trigger=result.get("trigger"),
        error=result.get("error"),
        extra=outcome,
    )
