"""The transition table itself."""

from __future__ import annotations

import itertools

import pytest

from mlx_serve.supervisor.states import (
    DOWN,
    RESIDENT,
    TRANSITIONS,
    InvalidTransition,
    WorkerState,
    check_transition,
)

S = WorkerState


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(S)


def test_the_happy_path_is_allowed() -> None:
    path = [S.STOPPED, S.STARTING, S.READY, S.DRAINING, S.STOPPING, S.STOPPED]
    for old, new in itertools.pairwise(path):
        check_transition("m", old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [(S.STOPPED, S.READY), (S.STOPPED, S.STOPPING), (S.FAILED, S.READY), (S.STOPPING, S.READY)],
)
def test_shortcuts_are_refused(old: S, new: S) -> None:
    with pytest.raises(InvalidTransition, match=f"{old.value} -> {new.value}"):
        check_transition("m", old, new)


def test_resident_and_down_partition_the_states() -> None:
    assert set(S) == RESIDENT | DOWN
    assert not RESIDENT & DOWN
