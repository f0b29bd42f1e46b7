"""Memory sizes and the memory budget as written in models.yaml.

People write sizes the way their tools print them: ``16GB`` (decimal, as Apple sells memory),
``24GiB`` (binary, as ``free -h`` and MLX report it), ``512M`` (binary, as Docker's ``-m``).
All of them are accepted and turned into integer bytes here, so nothing else deals with units.

The budget also accepts a share of physical memory (``75%``) or ``auto``; what those become in
bytes depends on the machine, so :class:`BudgetSpec` keeps what was written and
:mod:`mlx_serve.residency.budget` resolves it when the server starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

__all__ = [
    "BudgetSpec",
    "ByteSize",
    "MemoryBudget",
    "format_bytes",
    "parse_budget",
    "parse_size",
]

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_HINT = 'use e.g. "24GiB", "16GB", "512MiB", "75%" or "auto"'


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"24GiB"``, ``"16GB"``, ``"512M"``.

    ``K``/``M``/``G``/``T`` alone are binary (like Docker), ``KB``/``MB``/``GB``/``TB`` decimal,
    ``KiB``/``MiB``/``GiB``/``TiB`` binary. Zero, negative, fractional-byte and boolean values
    raise ``ValueError`` with a message that can be shown to the user as is.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r} ({_HINT})")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None or match.group(2) not in _UNITS:
            raise ValueError(f"invalid size {value!r} ({_HINT})")
        number = float(match.group(1))
        if not math.isfinite(number):
            raise ValueError(f"invalid size {value!r} ({_HINT})")
        size = int(number * _UNITS[match.group(2)])
    else:
        raise ValueError(f"invalid size {value!r} ({_HINT})")
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


@dataclass(frozen=True)
class BudgetSpec:
    """``server.memory_budget`` as written: exactly one of ``bytes``, ``share`` or ``auto``."""

    bytes: int | None = None
    share: float | None = None  # of physical memory, in (0, 1]
    auto: bool = False

    def __str__(self) -> str:
        if self.auto:
            return "auto"
        if self.share is not None:
            return f"{self.share * 100:g}%"
        return format_bytes(self.bytes)


def parse_budget(value: object) -> BudgetSpec | None:
    """``None`` (no budget), ``"auto"``, a percentage of physical memory, or a size."""
    if value is None or isinstance(value, BudgetSpec):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return BudgetSpec(auto=True)
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                raise ValueError(f"invalid memory budget {value!r} ({_HINT})") from None
            if not 0 < percent <= 100:
                raise ValueError(f"a memory budget share must be in (0%, 100%], got {value!r}")
            return BudgetSpec(share=percent / 100)
    return BudgetSpec(bytes=parse_size(value))


def format_bytes(value: int | None) -> str:
    """``1.5 GiB``, ``300 MiB``: binary units, as memory is reported by the OS and MLX."""
    if value is None:
        return "unknown"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


MemoryBudget = Annotated[
    BudgetSpec | None,
    BeforeValidator(parse_budget),
    PlainSerializer(lambda spec: None if spec is None else str(spec), return_type=str | None),
]
"""A :class:`BudgetSpec`, or ``None`` for "no budget: count models instead"."""


ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""A positive number of bytes, written as ``20MiB``, ``1GB`` or a plain integer."""
