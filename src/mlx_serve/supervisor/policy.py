"""Swap scheduling decisions as pure functions: a snapshot in, one action out.

Nothing here touches a process or a clock; :mod:`mlx_serve.supervisor.scheduler` builds the
snapshot, applies the action and asks again. That keeps the rules (who is evicted, when a busy
model must give way, when an idle one is unloaded) testable as plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlx_serve.supervisor.states import DOWN, RESIDENT, WorkerState

S = WorkerState


@dataclass(frozen=True)
class ModelView:
    """What the policy may know about one model at one instant."""

    name: str
    state: WorkerState
    inflight: int = 0  # admitted requests not yet finished
    waiting: int = 0  # requests queued for this model
    oldest_wait: float | None = None  # when its oldest queued request arrived
    last_used: float = 0.0  # when its last request ended (or it became ready)
    contended_admits: int = 0  # requests admitted while another model was waiting
    idle_timeout: float = 600.0  # negative: never unload when idle
    unload_requested: bool = False  # an operator asked for it to be unloaded


@dataclass(frozen=True)
class Limits:
    max_loaded: int = 1
    fair_wait: float = 10.0  # how long a busy resident model may keep another waiting
    fair_requests: int = 32  # how many new requests it may admit meanwhile


@dataclass(frozen=True)
class Start:
    model: str


@dataclass(frozen=True)
class Stop:
    model: str
    reason: str  # "idle" | "swap" | "unload"
    for_model: str | None = None  # the model this stop makes room for


@dataclass(frozen=True)
class Drain:
    model: str
    for_model: str


@dataclass(frozen=True)
class Undrain:
    model: str


Action = Start | Stop | Drain | Undrain


def next_target(views: Mapping[str, ModelView]) -> ModelView | None:
    """The not-loaded model whose oldest queued request has waited longest."""
    candidates = [v for v in views.values() if v.state in DOWN and v.waiting > 0]
    return min(candidates, key=lambda v: v.oldest_wait or 0.0, default=None)


def fairness_exceeded(victim: ModelView, target: ModelView, limits: Limits, now: float) -> bool:
    """Has ``victim`` kept ``target`` waiting long enough that it must stop admitting?"""
    waited = now - (target.oldest_wait if target.oldest_wait is not None else now)
    return waited >= limits.fair_wait or victim.contended_admits >= limits.fair_requests


def next_action(views: Mapping[str, ModelView], limits: Limits, now: float) -> Action | None:
    """The one thing to do next, or None when nothing needs doing right now.

    Start/stop actions are serialized by the caller: while one runs, this is not consulted
    for another (a STARTING or STOPPING model here means "wait").
    """
    if any(v.state in (S.STARTING, S.STOPPING) for v in views.values()):
        return None
    # Explicit unloads first: drain, then stop once nothing is in flight.
    for v in views.values():
        if v.unload_requested and v.state in (S.READY, S.DRAINING):
            if v.inflight == 0:
                return Stop(v.name, "unload")
            if v.state is S.READY:
                return Drain(v.name, for_model=v.name)
    target = next_target(views)

    if target is None:
        # Whatever a drain was for has gone (its waiters left): admit again.
        for v in views.values():
            if v.state is S.DRAINING and not v.unload_requested:
                return Undrain(v.name)
        return _idle_stop(views, now)

    resident = [v for v in views.values() if v.state in RESIDENT]
    if len(resident) < limits.max_loaded:
        return Start(target.name)

    # Room must be made. A drained model with nothing in flight goes first.
    for v in resident:
        if v.state is S.DRAINING and v.inflight == 0:
            return Stop(v.name, "swap", for_model=target.name)
    if any(v.state is S.DRAINING for v in resident):
        return None  # already freeing a slot; wait for its in-flight requests
    # An idle model (nothing in flight, nobody waiting) can go at once: least recently used.
    idle = [v for v in resident if v.inflight == 0 and v.waiting == 0]
    if idle:
        victim = min(idle, key=lambda v: v.last_used)
        return Stop(victim.name, "swap", for_model=target.name)
    # Everyone is busy. The least recently used gives way once fairness says so.
    busiest_last = min(resident, key=lambda v: v.last_used)
    if fairness_exceeded(busiest_last, target, limits, now):
        return Drain(busiest_last.name, for_model=target.name)
    return None


def _idle_stop(views: Mapping[str, ModelView], now: float) -> Stop | None:
    for v in sorted(views.values(), key=lambda v: v.last_used):
        if (
            v.state is S.READY
            and v.inflight == 0
            and v.waiting == 0
            and v.idle_timeout >= 0
            and now - v.last_used >= v.idle_timeout
        ):
            return Stop(v.name, "idle")
    return None


def next_deadline(views: Mapping[str, ModelView], limits: Limits, now: float) -> float | None:
    """The earliest future instant at which :func:`next_action` could answer differently with
    no other change: an idle timeout running out or a fairness bound being reached.

    Instants already past are left out: they were acted upon, or the action waits for a state
    change (a drain finishing, a start completing) that wakes the scheduler by itself. Keeping
    them would make the scheduler spin for as long as a drain lasts.
    """
    times: list[float] = []
    for v in views.values():
        if v.state is S.READY and v.inflight == 0 and v.waiting == 0 and v.idle_timeout >= 0:
            times.append(v.last_used + v.idle_timeout)
    target = next_target(views)
    if target is not None and target.oldest_wait is not None:
        times.append(target.oldest_wait + limits.fair_wait)
    return min((t for t in times if t > now), default=None)
