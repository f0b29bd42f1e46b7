"""The swap policy as plain data: snapshot in, one action out."""

from __future__ import annotations

from mlx_serve.supervisor.policy import (
    Drain,
    Limits,
    ModelView,
    Start,
    Stop,
    Undrain,
    next_action,
    next_deadline,
)
from mlx_serve.supervisor.states import WorkerState as S


def views(*vs: ModelView) -> dict[str, ModelView]:
    return {v.name: v for v in vs}


LIMITS = Limits(max_loaded=1, fair_wait=10, fair_requests=4)


def test_nothing_to_do_when_nobody_waits() -> None:
    assert next_action(views(ModelView("a", S.STOPPED)), LIMITS, now=0) is None


def test_start_the_waited_for_model_when_there_is_room() -> None:
    v = views(ModelView("a", S.STOPPED, waiting=2, oldest_wait=1))
    assert next_action(v, LIMITS, now=2) == Start("a")


def test_oldest_waiter_wins() -> None:
    v = views(
        ModelView("a", S.STOPPED, waiting=5, oldest_wait=3),
        ModelView("b", S.FAILED, waiting=1, oldest_wait=1),
    )
    assert next_action(v, Limits(max_loaded=2), now=4) == Start("b")


def test_idle_resident_model_is_swapped_out_at_once() -> None:
    v = views(ModelView("a", S.READY), ModelView("b", S.STOPPED, waiting=1, oldest_wait=5))
    assert next_action(v, LIMITS, now=5) == Stop("a", "swap", for_model="b")


def test_busy_model_keeps_serving_until_fairness_bound() -> None:
    a = ModelView("a", S.READY, inflight=3, contended_admits=1)
    b = ModelView("b", S.STOPPED, waiting=1, oldest_wait=0)
    assert next_action(views(a, b), LIMITS, now=5) is None
    # time bound reached
    assert next_action(views(a, b), LIMITS, now=10) == Drain("a", for_model="b")
    # request-count bound reached
    busy = ModelView("a", S.READY, inflight=3, contended_admits=4)
    assert next_action(views(busy, b), LIMITS, now=1) == Drain("a", for_model="b")


def test_draining_model_stops_only_when_its_requests_finished() -> None:
    b = ModelView("b", S.STOPPED, waiting=1, oldest_wait=0)
    assert next_action(views(ModelView("a", S.DRAINING, inflight=1), b), LIMITS, 20) is None
    assert next_action(views(ModelView("a", S.DRAINING), b), LIMITS, 20) == Stop(
        "a", "swap", for_model="b"
    )


def test_drain_is_undone_when_its_reason_left() -> None:
    v = views(ModelView("a", S.DRAINING, inflight=1), ModelView("b", S.STOPPED))
    assert next_action(v, LIMITS, now=0) == Undrain("a")


def test_no_new_action_while_a_swap_is_in_progress() -> None:
    v = views(ModelView("a", S.STOPPING), ModelView("b", S.STOPPED, waiting=1, oldest_wait=0))
    assert next_action(v, LIMITS, now=0) is None
    v = views(ModelView("a", S.STARTING), ModelView("b", S.STOPPED, waiting=1, oldest_wait=0))
    assert next_action(v, LIMITS, now=0) is None


def test_lru_idle_model_is_evicted_with_several_resident() -> None:
    v = views(
        ModelView("a", S.READY, last_used=5),
        ModelView("b", S.READY, last_used=2),
        ModelView("c", S.READY, inflight=1, last_used=1),
        ModelView("d", S.STOPPED, waiting=1, oldest_wait=6),
    )
    assert next_action(v, Limits(max_loaded=3), now=7) == Stop("b", "swap", for_model="d")


def test_room_left_means_no_eviction() -> None:
    v = views(ModelView("a", S.READY), ModelView("b", S.STOPPED, waiting=1, oldest_wait=0))
    assert next_action(v, Limits(max_loaded=2), now=1) == Start("b")


def test_idle_timeout_unloads_only_idle_models() -> None:
    idle = ModelView("a", S.READY, last_used=0, idle_timeout=60)
    assert next_action(views(idle), LIMITS, now=59) is None
    assert next_action(views(idle), LIMITS, now=60) == Stop("a", "idle")
    busy = ModelView("a", S.READY, inflight=1, last_used=0, idle_timeout=60)
    assert next_action(views(busy), LIMITS, now=1000) is None


def test_negative_idle_timeout_never_unloads_and_zero_unloads_at_once() -> None:
    forever = ModelView("a", S.READY, last_used=0, idle_timeout=-1)
    assert next_action(views(forever), LIMITS, now=10**9) is None
    at_once = ModelView("a", S.READY, last_used=5, idle_timeout=0)
    assert next_action(views(at_once), LIMITS, now=5) == Stop("a", "idle")


def test_next_deadline_is_the_earliest_timer() -> None:
    v = views(
        ModelView("a", S.READY, last_used=0, idle_timeout=60),
        ModelView("b", S.READY, last_used=0, idle_timeout=-1),
    )
    assert next_deadline(v, LIMITS, now=0) == 60
    v = views(
        ModelView("a", S.READY, inflight=1, last_used=0, idle_timeout=60),
        ModelView("b", S.STOPPED, waiting=1, oldest_wait=3),
    )
    assert next_deadline(v, LIMITS, now=0) == 13
    assert next_deadline(views(ModelView("a", S.STOPPED)), LIMITS, now=0) is None


def test_deadlines_already_past_are_left_out() -> None:
    # A drain in progress: the fairness bound has passed and must not make the loop spin.
    v = views(
        ModelView("a", S.DRAINING, inflight=1),
        ModelView("b", S.STOPPED, waiting=1, oldest_wait=0),
    )
    assert next_deadline(v, LIMITS, now=100) is None


def test_operator_unload_drains_then_stops_and_is_not_undone() -> None:
    busy = ModelView("a", S.READY, inflight=1, unload_requested=True)
    assert next_action(views(busy), LIMITS, now=0) == Drain("a", for_model="a")
    draining = ModelView("a", S.DRAINING, inflight=1, unload_requested=True)
    assert next_action(views(draining), LIMITS, now=0) is None  # no Undrain
    done = ModelView("a", S.DRAINING, unload_requested=True)
    assert next_action(views(done), LIMITS, now=0) == Stop("a", "unload")


def test_a_model_whose_files_are_being_pulled_waits_without_evicting_anyone() -> None:
    """Its requests queue for the download (auto_pull): nothing can start for them yet, so
    no idle model is swapped out, no busy one drained, and no fairness timer runs."""
    pulling = ModelView("b", S.STOPPED, waiting=3, oldest_wait=0, fetching=True)
    idle = ModelView("a", S.READY, last_used=0, idle_timeout=600)
    busy = ModelView("a", S.READY, inflight=2, contended_admits=99)
    assert next_action(views(idle, pulling), LIMITS, now=100) is None
    assert next_action(views(busy, pulling), LIMITS, now=100) is None
    assert next_deadline(views(idle, pulling), LIMITS, now=100) == 600  # the idle timer only
    # Another model's waiters are served meanwhile.
    other = ModelView("c", S.STOPPED, waiting=1, oldest_wait=50)
    assert next_action(views(idle, pulling, other), LIMITS, now=100) == Stop(
        "a", "swap", for_model="c"
    )
    # Once the files are there, it starts like any other.
    done = ModelView("b", S.STOPPED, waiting=3, oldest_wait=0)
    assert next_action(views(done), LIMITS, now=100) == Start("b")
