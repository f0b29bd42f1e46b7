"""What ``service status`` reports, whichever manager it asked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ServiceStatus"]


@dataclass(slots=True)
class ServiceStatus:
    """What ``service status`` reports; ``None`` means "could not be determined"."""

    manager: str
    name: str
    path: Path
    installed: bool
    loaded: bool | None = None
    running: bool | None = None
    state: str | None = None
    enabled: bool | None = None
    pid: int | None = None
    last_exit_code: int | None = None
    last_signal: str | None = None
    program: str | None = None
    """``argv[0]`` of the installed file: the interpreter the service runs."""
    stdout_log: str | None = None
    stderr_log: str | None = None
    error: str | None = None
    """Why the manager could not be asked (no user session, command missing...)."""
    details: dict[str, str] = field(default_factory=dict)
    """The raw fields the state was read from."""

    @property
    def program_exists(self) -> bool | None:
        """False when the interpreter is gone: the venv was moved or deleted."""
        if self.program is None:
            return None
        return os.access(self.program, os.X_OK)

    def to_json(self) -> dict[str, Any]:
        return {
            "manager": self.manager,
            "name": self.name,
            "path": str(self.path),
            "installed": self.installed,
            "loaded": self.loaded,
            "running": self.running,
            "state": self.state,
            "enabled": self.enabled,
            "pid": self.pid,
            "last_exit_code": self.last_exit_code,
            "last_signal": self.last_signal,
            "program": self.program,
            "program_exists": self.program_exists,
            "stdout_log": self.stdout_log,
            "stderr_log": self.stderr_log,
            "error": self.error,
            "details": dict(self.details),
        }
