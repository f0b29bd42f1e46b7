"""One fix to typer's help: a flag takes no value, so its help shows none.

typer's rich help (0.2x, with its own copy of click) prints the type of every option after
its name, ``<bool>`` for flags too (``--detach -d <bool>``, even ``--help <bool>``), which
reads as "this option takes a true/false value" when it takes none. The plain click help
never did that. :func:`hide_flag_types` makes flags show no type; options that take a value
keep theirs (``--port <int>``). Applied once, when the CLI package is imported; on typer
versions without this code path it does nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["hide_flag_types"]


def hide_flag_types() -> None:
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - an older typer: flags never showed a type
        return
    original: Any = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_hides_flag_types", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        if getattr(self, "is_bool_flag", False) and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._hides_flag_types = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
