"""What earlier loads measured, kept across restarts in ``<data_dir>/footprints.json``.

An estimate from the files is a guess; the footprint a model reached last time it was loaded
is a fact about this machine. The scheduler plans with the larger of the two, so a model
that outgrew its estimate once is never again packed in as if it were smaller.

Per model: the peak measured during its last load (forgotten when its path or type changes).
Per type: the worker overhead (measured footprint minus weights) of the latest load, which
refines every estimate of that type, including models never loaded yet.

The file is rewritten atomically; a data dir that cannot be written is reported once and the
server carries on with what it has in memory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from mlx_serve.files import atomic_write

__all__ = ["FootprintLedger"]

log = logging.getLogger(__name__)


class FootprintLedger:
    """Learned footprints, in memory, saved to one JSON file on request."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._models: dict[str, dict[str, Any]] = {}
        self._overhead: dict[str, int] = {}
        self._warned = False
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        if not isinstance(data, dict):
            return
        models, overhead = data.get("models"), data.get("overhead")
        if isinstance(models, dict):
            self._models = {
                str(name): entry
                for name, entry in models.items()
                if isinstance(entry, dict) and _positive_int(entry.get("bytes"))
            }
        if isinstance(overhead, dict):
            self._overhead = {str(k): v for k, v in overhead.items() if _positive_int(v)}

    def learned(self, name: str, *, path: str, model_type: str) -> int | None:
        """The peak of ``name``'s last load, if it was the same model then."""
        entry = self._models.get(name)
        if entry is None or entry.get("path") != path or entry.get("type") != model_type:
            return None
        return int(entry["bytes"])

    def overhead(self, model_type: str) -> int | None:
        return self._overhead.get(model_type)

    def record_peak(self, name: str, *, path: str, model_type: str, peak_bytes: int) -> None:
        self._models[name] = {
            "path": path,
            "type": model_type,
            "bytes": int(peak_bytes),
            "updated": round(time.time(), 3),
        }

    def record_overhead(self, model_type: str, overhead_bytes: int) -> None:
        if overhead_bytes > 0:
            self._overhead[model_type] = int(overhead_bytes)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "models": self._models, "overhead": self._overhead}

    def snapshot(self) -> bytes:
        """The file's content now (taken on the event loop; :meth:`write` may run elsewhere)."""
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()

    def save(self) -> None:
        self.write(self.snapshot())

    def write(self, payload: bytes) -> None:
        """Write the file; on failure warn once and keep going (serving matters more)."""
        if self.path is None:
            return
        try:
            atomic_write(self.path, payload, 0o644)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot save learned model footprints to %s: %s", self.path, exc)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
