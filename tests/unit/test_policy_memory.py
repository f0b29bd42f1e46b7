"""The memory budget in the pure policy: snapshots with sizes in, one action out (no processes,
the clock is a number)."""

from __future__ import annotations

from mlx_serve.residency.estimate import Estimate
from mlx_serve.residency.footprint import Footprint
from mlx_serve.supervisor.policy import (
    Drain,
    Limits,
    ModelView,
    Refuse,
    Start,
    Stop,
    next_action,
    room_for,
)
from mlx_serve.supervisor.states import WorkerState as S

MiB = 2**20


def views(*vs: ModelView) -> dict[str, ModelView]:
    return {v.name: v for v in vs}


def budget(mib: int, max_loaded: int | None = None) -> Limits:
    return Limits(max_loaded=max_loaded, budget_bytes=mib * MiB, fair_wait=10, fair_requests=4)


def resident(
    name: str,
    mib: int,
    *,
    state: S = S.READY,
    last_used: float = 0,
    inflight: int = 0,
    waiting: int = 0,
    oldest_wait: float | None = None,
    pinned: bool = False,
    unload_requested: bool = False,
) -> ModelView:
    return ModelView(
        name, state, size_bytes=mib * MiB, last_used=last_used, inflight=inflight,
        waiting=waiting, oldest_wait=oldest_wait, pinned=pinned,
        unload_requested=unload_requested,
    )  # fmt: skip


def wanted(name: str, mib: int, *, at: float = 1.0) -> ModelView:
    return ModelView(name, S.STOPPED, waiting=1, oldest_wait=at, size_bytes=mib * MiB)


def test_fits_beside_the_resident_models_so_nothing_is_evicted() -> None:
    v = views(resident("stt", 300), resident("chat", 300), wanted("tts", 300))
    assert next_action(v, budget(1000), now=2) == Start("tts")


def test_evicts_the_least_recently_used_idle_model_when_it_does_not_fit() -> None:
    v = views(
        resident("stt", 300, last_used=5),
        resident("chat", 300, last_used=3),  # least recently used
        wanted("tts", 300),
    )
    assert next_action(v, budget(700), now=6) == Stop("chat", "swap", for_model="tts")


def test_evicts_several_one_at_a_time_until_it_fits() -> None:
    v = views(
        resident("a", 300, last_used=1),
        resident("b", 300, last_used=2),
        resident("c", 300, last_used=3),
        wanted("big", 700),
    )
    assert next_action(v, budget(1000), now=4) == Stop("a", "swap", for_model="big")
    v["a"] = ModelView("a", S.STOPPED)
    assert next_action(v, budget(1000), now=4) == Stop("b", "swap", for_model="big")
    v["b"] = ModelView("b", S.STOPPED)
    assert next_action(v, budget(1000), now=4) == Start("big")


def test_a_busy_model_is_never_stopped_under_its_requests() -> None:
    v = views(
        resident("busy", 400, last_used=0, inflight=2),  # older, but working
        resident("idle", 400, last_used=5),
        wanted("new", 400, at=6),
    )
    assert next_action(v, budget(900), now=7) == Stop("idle", "swap", for_model="new")
    # With only the busy one left in the way: wait, then drain it (never stop it) once
    # fairness says it has kept the other waiting long enough.
    only_busy = views(resident("busy", 600, inflight=2), wanted("new", 400, at=6))
    assert next_action(only_busy, budget(900), now=7) is None
    assert next_action(only_busy, budget(900), now=16) == Drain("busy", for_model="new")
    drained = views(resident("busy", 600, inflight=1, state=S.DRAINING), wanted("new", 400))
    assert next_action(drained, budget(900), now=20) is None
    done = views(resident("busy", 600, state=S.DRAINING), wanted("new", 400))
    assert next_action(done, budget(900), now=21) == Stop("busy", "swap", for_model="new")


def test_a_model_with_queued_requests_is_not_evicted() -> None:
    v = views(
        resident("queued", 400, last_used=0, waiting=1, oldest_wait=5),
        resident("idle", 400, last_used=3),
        wanted("new", 400, at=1),
    )
    assert next_action(v, budget(900), now=6) == Stop("idle", "swap", for_model="new")


def test_pinned_models_are_never_evicted_for_others() -> None:
    v = views(
        resident("pinned", 300, last_used=0, pinned=True),  # least recently used, but pinned
        resident("other", 300, last_used=5),
        wanted("new", 300),
    )
    assert next_action(v, budget(700), now=6) == Stop("other", "swap", for_model="new")
    only_pinned = views(resident("pinned", 300, pinned=True), wanted("new", 300))
    assert next_action(only_pinned, budget(1000), now=1) == Start("new")


def test_a_model_that_cannot_fit_beside_pinned_models_is_refused() -> None:
    v = views(resident("pinned", 600, pinned=True), wanted("new", 500))
    action = next_action(v, budget(1000), now=1)
    assert isinstance(action, Refuse)
    assert action.model == "new"
    assert "pinned" in action.reason


def test_a_model_larger_than_the_whole_budget_is_refused_with_both_numbers() -> None:
    v = views(wanted("huge", 2000))
    action = next_action(v, budget(1000), now=1)
    assert isinstance(action, Refuse)
    assert str(2000 * MiB) in action.reason
    assert str(1000 * MiB) in action.reason


def test_learned_size_larger_than_the_estimate_is_what_counts() -> None:
    estimate = Estimate(weights_bytes=100 * MiB, kv_cache_bytes=0, overhead_bytes=100 * MiB,
                        context_tokens=None)  # fmt: skip
    learned = Footprint(estimate, learned_bytes=450 * MiB)
    assert learned.planned_bytes == 450 * MiB
    assert Footprint(estimate).planned_bytes == 200 * MiB
    # By its estimate it would fit beside "a"; by what it measured last time it does not.
    by_estimate = views(resident("a", 500), wanted("b", 200))
    assert next_action(by_estimate, budget(800), now=1) == Start("b")
    by_learned = views(resident("a", 500), wanted("b", 450))
    assert next_action(by_learned, budget(800), now=1) == Stop("a", "swap", for_model="b")


def test_the_count_cap_still_applies_under_a_budget() -> None:
    v = views(resident("a", 100, last_used=1), resident("b", 100, last_used=2), wanted("c", 100))
    assert next_action(v, budget(10_000, max_loaded=2), now=3) == Stop("a", "swap", for_model="c")
    room = room_for(v, budget(10_000, max_loaded=2), v["c"])
    assert room.fits_bytes
    assert not room.fits_count
    assert room.reason == "count"


def test_pinned_models_holding_every_slot_refuse_the_rest() -> None:
    v = views(resident("p", 100, pinned=True), wanted("c", 100))
    action = next_action(v, Limits(max_loaded=1), now=1)
    assert isinstance(action, Refuse)


def test_without_a_budget_sizes_are_ignored() -> None:
    v = views(resident("a", 10_000, last_used=1), wanted("b", 10_000))
    assert next_action(v, Limits(max_loaded=2), now=2) == Start("b")
    assert next_action(v, Limits(max_loaded=1), now=2) == Stop("a", "swap", for_model="b")


def test_models_measured_over_the_budget_give_back_the_least_recent_idle_one() -> None:
    v = views(resident("old", 600, last_used=1), resident("new", 600, last_used=5))
    assert next_action(v, budget(1000), now=6) == Stop("old", "over_budget")
    # ...but never the most recently used, nor a busy or pinned one.
    assert next_action(views(resident("only", 2000)), budget(1000), now=6) is None
    busy = views(resident("old", 600, last_used=1, inflight=1), resident("new", 600, last_used=5))
    assert next_action(busy, budget(1000), now=6) is None
    pinned = views(
        resident("old", 600, last_used=1, pinned=True), resident("new", 600, last_used=5)
    )
    assert next_action(pinned, budget(1000), now=6) is None


def test_a_pinned_model_being_unloaded_does_not_refuse_the_next_one() -> None:
    leaving = resident("pinned", 600, pinned=True, unload_requested=True, inflight=1)
    v = views(leaving, wanted("new", 500))
    assert not isinstance(next_action(v, budget(1000), now=1), Refuse)
