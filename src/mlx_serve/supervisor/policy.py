"""Swap scheduling decisions as pure functions: a snapshot in, one action out.

Nothing here touches a process or a clock; :mod:`mlx_serve.supervisor.scheduler` builds the
snapshot, applies the action and asks again. That keeps the rules (who is evicted, when a busy
model must give way, when an idle one is unloaded) testable as plain data.

Room is counted two ways, and a model starts only when both allow it: by count
(``max_loaded``) and, when a memory budget is set, by bytes (each model's planned footprint,
the larger of its estimate and what it measured before). To make room, idle unpinned models
go first, least recently used first; a model with requests in flight or queued is never
stopped under them (it is drained, then stopped, once fairness says it has kept others
waiting long enough); a model that could not fit even with every evictable model gone is
refused at once instead of waiting forever.
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
    size_bytes: int = 0  # planned footprint: max(estimate, measured before)
    pinned: bool = False  # never evicted to make room for another model
    fetching: bool = False  # its files are being downloaded: it cannot start yet


@dataclass(frozen=True)
class Limits:
    max_loaded: int | None = 1  # None: no count cap (a memory budget decides)
    fair_wait: float = 10.0  # how long a busy resident model may keep another waiting
    fair_requests: int = 32  # how many new requests it may admit meanwhile
    budget_bytes: int | None = None  # None: memory is not counted


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


@dataclass(frozen=True)
class Refuse:
    """``model`` can never fit beside what may not be evicted: fail its waiters now."""

    model: str
    reason: str


Action = Start | Stop | Drain | Undrain | Refuse


@dataclass(frozen=True)
class Room:
    """How ``target`` fits beside the resident models right now (bytes and count)."""

    used_bytes: int  # planned footprints of the resident models
    needed_bytes: int  # the target's planned footprint
    budget_bytes: int | None
    resident: int
    max_loaded: int | None

    @property
    def free_bytes(self) -> int | None:
        return None if self.budget_bytes is None else self.budget_bytes - self.used_bytes

    @property
    def fits_count(self) -> bool:
        return self.max_loaded is None or self.resident < self.max_loaded

    @property
    def fits_bytes(self) -> bool:
        free = self.free_bytes
        return free is None or self.needed_bytes <= free

    @property
    def reason(self) -> str:
        """Why something must be evicted for the target: "memory" or "count"."""
        return "count" if self.fits_bytes else "memory"


def room_for(views: Mapping[str, ModelView], limits: Limits, target: ModelView) -> Room:
    resident = [v for v in views.values() if v.state in RESIDENT and v.name != target.name]
    return Room(
        used_bytes=sum(v.size_bytes for v in resident),
        needed_bytes=target.size_bytes,
        budget_bytes=limits.budget_bytes,
        resident=len(resident),
        max_loaded=limits.max_loaded,
    )


def refusal(views: Mapping[str, ModelView], limits: Limits, target: ModelView) -> str | None:
    """Why ``target`` can never be loaded while things stay as they are, or None."""
    gib = 2**30
    budget = limits.budget_bytes
    if budget is not None and target.size_bytes > budget:
        return (
            f"its planned footprint ({target.size_bytes / gib:.2f} GiB, "
            f"{target.size_bytes} bytes) exceeds the whole memory budget "
            f"({budget / gib:.2f} GiB, {budget} bytes)"
        )
    pinned = [
        v
        for v in views.values()
        if v.pinned and v.state in RESIDENT and v.name != target.name and not v.unload_requested
    ]
    if not pinned:
        return None
    names = ", ".join(sorted(v.name for v in pinned))
    held = sum(v.size_bytes for v in pinned)
    if budget is not None and target.size_bytes + held > budget:
        return (
            f"its planned footprint ({target.size_bytes / gib:.2f} GiB) does not fit beside the "
            f"pinned models ({names}: {held / gib:.2f} GiB) within the memory budget "
            f"({budget / gib:.2f} GiB)"
        )
    if limits.max_loaded is not None and len(pinned) >= limits.max_loaded:
        return f"the pinned models ({names}) hold all {limits.max_loaded} model slots"
    return None


def next_target(views: Mapping[str, ModelView]) -> ModelView | None:
    """The not-loaded model whose oldest queued request has waited longest (one whose files
    are still being downloaded cannot start, so it neither evicts nor drains anyone yet)."""
    candidates = [v for v in views.values() if v.state in DOWN and v.waiting > 0 and not v.fetching]
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
        return _idle_stop(views, now) or _over_budget_stop(views, limits)

    why_not = refusal(views, limits, target)
    if why_not is not None:
        return Refuse(target.name, why_not)
    room = room_for(views, limits, target)
    if room.fits_count and room.fits_bytes:
        return Start(target.name)

    # Room must be made, never by evicting a pinned model. A drained model with nothing in
    # flight goes first.
    resident = [v for v in views.values() if v.state in RESIDENT and not v.pinned]
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
    if not resident:
        return None
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


def _over_budget_stop(views: Mapping[str, ModelView], limits: Limits) -> Stop | None:
    """Models measured bigger than planned can push the total over the budget: evict the least
    recently used idle, unpinned one, but never the most recently used model."""
    if limits.budget_bytes is None:
        return None
    resident = [v for v in views.values() if v.state in RESIDENT]
    if sum(v.size_bytes for v in resident) <= limits.budget_bytes or len(resident) < 2:
        return None
    newest = max(resident, key=lambda v: v.last_used)
    idle = [
        v
        for v in resident
        if v is not newest
        and v.state is S.READY
        and not v.pinned
        and v.inflight == 0
        and v.waiting == 0
    ]
    if not idle:
        return None
    return Stop(min(idle, key=lambda v: v.last_used).name, "over_budget")


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
