"""The lifecycle event log on disk: JSON lines, rotated, under the data directory.

Together with the in-memory ring (for queries and the dashboard) and the SSE stream (for
``logs -f``), this is the third sink of the same events: the one that survives a restart.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path

from mlx_serve.supervisor.events import Event

MAX_BYTES = 10 * 2**20
BACKUPS = 3


class EventLogFile:
    """A listener that appends each event to ``events.jsonl`` (rotated at 10 MiB, 3 kept)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.to_json(), default=str, separators=(",", ":"))
        record = logging.LogRecord("mlx_serve.events", logging.INFO, "", 0, line, None, None)
        self._handler.emit(record)

    def close(self) -> None:
        self._handler.close()


def read_events(path: Path, limit: int = 1000) -> list[dict[str, object]]:
    """The last ``limit`` events of the current file (for ``mlx-serve logs`` when offline)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[-limit:]
    except OSError:
        return []
    events: list[dict[str, object]] = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash mid-write
    return events
