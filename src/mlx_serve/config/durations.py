"""Human-friendly durations for timeouts in models.yaml.

Timeouts are written by hand and read by people, so ``10m`` is accepted alongside ``600``.
The syntax follows Go's ``time.ParseDuration`` (as used by Ollama's ``keep_alive``) because
that is what users of local model servers already know. Everything is converted to float
seconds so the rest of the code never deals with units. A leading ``-`` means "forever"
for the fields that allow it (e.g. ``idle_timeout: -1`` keeps a model loaded).
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["Duration", "OptionalDuration", "parse_duration", "parse_optional_duration"]

_UNIT_SECONDS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# "ms" must come before "m" and "s" so "500ms" is not read as 500 minutes plus garbage.
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_PLAIN_NUMBER = re.compile(rf"[+-]?{_NUMBER}")
_WITH_UNITS = re.compile(rf"([+-]?)((?:{_NUMBER}(?:ms|s|m|h|d))+)")

_HINT = "use e.g. 30s, 10m, 1h30m or seconds"


def _invalid(value: object) -> ValueError:
    return ValueError(f"invalid duration {value!r} ({_HINT})")


def parse_duration(value: object) -> float:
    """Convert a duration (seconds as a number, or a string like ``1h30m``) to float seconds.

    Accepted: ints/floats (seconds), numeric strings (``"90"``, ``"-1"``, ``"2.5"``) and
    unit strings made of one or more ``<number><unit>`` parts with units ``ms``, ``s``,
    ``m``, ``h``, ``d`` (``"500ms"``, ``"1h30m"``, ``"-1s"``), with an optional leading sign.
    Booleans, NaN/infinity and anything else raise ``ValueError`` with a message that can
    be shown to the user as is.
    """
    try:
        seconds = _parse(value)
    except OverflowError as exc:  # a 400-digit integer: no float holds it
        raise _invalid(value) from exc
    # "999...9" parses to inf; a duration nobody can wait for is a mistake, and inf would
    # also leak into JSON answers as the non-standard Infinity.
    if not math.isfinite(seconds):
        raise _invalid(value)
    return seconds


def _parse(value: object) -> float:
    # bool is an int subclass; "idle_timeout: yes" is a mistake, not one second.
    if isinstance(value, bool):
        raise _invalid(value)
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise _invalid(value)
    text = value.strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    match = _WITH_UNITS.fullmatch(text)
    if match is None:
        raise _invalid(value)
    sign, body = match.groups()
    seconds = sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _PART.findall(body))
    return -seconds if sign == "-" else seconds


def parse_optional_duration(value: object) -> float | None:
    """Like :func:`parse_duration` but passes ``None`` through (meaning "use the default")."""
    if value is None:
        return None
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A float number of seconds that also accepts strings such as ``"10m"`` or ``"1h30m"``."""

OptionalDuration = Annotated[float | None, BeforeValidator(parse_optional_duration)]
"""A :data:`Duration` or ``None``; ``None`` means "inherit the server-wide setting"."""
