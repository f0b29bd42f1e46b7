"""Which events a reader asked for: ``GET /api/events?model=&type=&since=`` and ``mlx-serve
logs --model --type --since`` (the server's ring of events, its live stream, and the event
log file the CLI reads while the server is down all use this one filter)."""

from __future__ import annotations

__all__ = ["event_matches"]


def event_matches(
    kind: str,
    model: str | None,
    ts: object,
    *,
    want_model: str | None = None,
    want_kind: str | None = None,
    since: float | None = None,
) -> bool:
    """Whether an event of ``kind`` about ``model`` at unix time ``ts`` passes the filter.

    ``want_kind`` is a kind or a family: ``worker`` matches ``worker.state`` and
    ``worker.crashed``. ``ts`` is whatever the event holds (a line of the file may lack it):
    with ``since``, an event without a numeric time does not match.
    """
    return (
        (want_model is None or model == want_model)
        and (want_kind is None or kind == want_kind or kind.startswith(want_kind + "."))
        and (since is None or (isinstance(ts, int | float) and ts >= since))
    )
