"""Figures as short text: sizes, durations, times ago, milliseconds."""

from __future__ import annotations

import json
from typing import Any

from rich.cells import cell_len

#: Shown for a value that does not apply (a memory figure of an unloaded model).
NONE = "—"

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, three significant digits at most."""
    if n is None:
        return NONE
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


_DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def human_duration(seconds: float | None, parts: int = 2) -> str:
    """``4000`` -> ``1h06m``: the ``parts`` largest units, rounded down; ``None`` -> ``—``.

    Rounding down keeps a countdown honest (``idle left 1m`` never means 0 s left) and one
    part is enough where space is short (the status table).
    """
    if seconds is None:
        return NONE
    if seconds < 0:
        return "never"
    remaining = int(seconds)
    if remaining < 1:
        return f"{seconds:.1f}s" if seconds > 0 else "0s"
    out: list[str] = []
    for unit, size in _DURATION_UNITS:
        if remaining >= size or out:
            count, remaining = divmod(remaining, size)
            out.append(f"{count:02d}{unit}" if out else f"{count}{unit}")
            if len(out) == parts:
                break
    # Trailing zero parts ("7m00s") say nothing.
    while len(out) > 1 and int(out[-1][:-1]) == 0:
        out.pop()
    return "".join(out)


def relative_time(ts: float | None, now: float, parts: int = 1) -> str:
    """``3m ago`` for a unix time; ``never`` for None."""
    if ts is None:
        return "never"
    ago = max(0.0, now - ts)
    if ago < 1:
        return "now"
    return f"{human_duration(ago, parts)} ago"


def ms(seconds: object) -> str:
    return f"{float(seconds) * 1000:.0f}" if isinstance(seconds, int | float) else NONE


def num(value: object, fmt: str = "{:.0f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else NONE


def scalar(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(map(str, value))
    return json.dumps(value, default=str)


def cut(text: str, width: int) -> str:
    return text if cell_len(text) <= width else text[: max(width - 1, 0)] + "…"


def seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return str(value)
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"
