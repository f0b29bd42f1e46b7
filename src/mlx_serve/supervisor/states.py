"""Worker lifecycle states and the transitions allowed between them.

Stdlib only, so the table can be read (and tested) without anything else. Every state change
of a managed worker goes through :func:`check_transition`; an edge missing here is a bug in
the caller, not something to work around with a forced state.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerState(StrEnum):
    """Where one managed worker is in its life."""

    STOPPED = "stopped"  # no process
    STARTING = "starting"  # process spawned, model not yet proven to answer
    READY = "ready"  # the model answered a probe; requests are admitted
    DRAINING = "draining"  # no new requests admitted; in-flight ones finish
    STOPPING = "stopping"  # SIGTERM sent to the group, waiting for it to exit
    FAILED = "failed"  # start failed or the process died; no process remains


#: Every allowed edge. Anything else raises :class:`InvalidTransition`.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STOPPED: frozenset({WorkerState.STARTING}),
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.STOPPING, WorkerState.FAILED}),
    WorkerState.READY: frozenset({WorkerState.DRAINING, WorkerState.STOPPING, WorkerState.FAILED}),
    # DRAINING -> READY: whatever the drain was for went away (its waiters left).
    WorkerState.DRAINING: frozenset({WorkerState.READY, WorkerState.STOPPING, WorkerState.FAILED}),
    WorkerState.STOPPING: frozenset({WorkerState.STOPPED, WorkerState.FAILED}),
    WorkerState.FAILED: frozenset({WorkerState.STARTING}),
}

#: The one public name of each state: in /v1/models, /api/models, events, the CLI and the
#: dashboard. (A draining model still answers what it admitted, but takes nothing new.)
STATUS: dict[WorkerState, str] = {
    WorkerState.STOPPED: "unloaded",
    WorkerState.STARTING: "loading",
    WorkerState.READY: "loaded",
    WorkerState.DRAINING: "draining",
    WorkerState.STOPPING: "unloading",
    WorkerState.FAILED: "failed",
}

#: States in which a process may exist and so count against ``max_loaded_models``.
RESIDENT: frozenset[WorkerState] = frozenset(
    {WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING, WorkerState.STOPPING}
)

#: States in which no process exists.
DOWN: frozenset[WorkerState] = frozenset({WorkerState.STOPPED, WorkerState.FAILED})


class InvalidTransition(RuntimeError):
    """A caller asked for an edge that :data:`TRANSITIONS` does not allow."""

    def __init__(self, name: str, old: WorkerState, new: WorkerState) -> None:
        super().__init__(f"worker {name!r}: {old.value} -> {new.value} is not allowed")
        self.old = old
        self.new = new


def check_transition(name: str, old: WorkerState, new: WorkerState) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(name, old, new)
