"""The exit codes of every ``mlx-serve`` command: one table, used by all of them.

Scripts tell "not running" from "refused" from "misconfigured" by these, so they are part of
the interface: the README's table, ``mlx-serve --help`` and a unit test all come from
:data:`TABLE` here.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["TABLE", "ExitCode", "table_text"]


class ExitCode(IntEnum):
    OK = 0
    """Done (``service status``: the service runs)."""
    FAILED = 1
    """The server said no, or the command could not do it: unknown model, failed load,
    a port already taken, already running, a service manager that failed."""
    USAGE = 2
    """Bad usage (an unknown option, a bad value), or no or an invalid models.yaml."""
    NOT_RUNNING = 3
    """mlx-serve is not running: nothing answers, no live server to stop (``service
    status``: installed but not running)."""
    UNAUTHORIZED = 4
    """The server wants an API key, and none or a wrong one was sent."""
    NOT_INSTALLED = 5
    """``service status``: the service is not installed."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT, as shells report it)."""


#: The table as the README and ``--help`` show it: (code, meaning).
TABLE: tuple[tuple[ExitCode, str], ...] = (
    (ExitCode.OK, "ok"),
    (ExitCode.FAILED, "the server said no, or the command failed (unknown model, port taken)"),
    (ExitCode.USAGE, "bad usage, or no / an invalid models.yaml"),
    (ExitCode.NOT_RUNNING, "mlx-serve is not running (service status: installed, not running)"),
    (ExitCode.UNAUTHORIZED, "the API key was missing or rejected"),
    (ExitCode.NOT_INSTALLED, "service status: the service is not installed"),
    (ExitCode.INTERRUPTED, "interrupted (Ctrl-C)"),
)


def table_text() -> str:
    """``  0  ok`` lines, for ``mlx-serve --help``."""
    return "\n".join(f"{int(code):>5}  {meaning}" for code, meaning in TABLE)
