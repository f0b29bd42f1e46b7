"""Query-string parameters of the HTTP API."""

from __future__ import annotations

from aiohttp import web

__all__ = ["TRUE_VALUES", "query_flag"]

#: What a boolean query parameter accepts as true (``?stream=true``, ``?force=1``), in any case.
TRUE_VALUES = frozenset({"1", "true", "yes"})


def query_flag(request: web.Request, name: str) -> bool:
    """Whether ``?name=`` is set to a true value; absent, empty or anything else is false."""
    return request.query.get(name, "").lower() in TRUE_VALUES
