"""Rich renderables that keep a line on one line at any width (80 columns included): parts
broken between, never inside; names and paths cut with an ellipsis on the side that matters
least."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

#: After the name of a pinned model (``pin: true``: never unloaded to make room for another).
PIN = "📌"


class Segments:
    """Parts of a line joined with `` · ``: on one line when they fit, else broken between two
    parts, never inside one (a part too long for a line on its own is cut with an ellipsis).
    The status header's figures stay readable in any terminal, 80 columns included."""

    SEPARATOR = " · "

    def __init__(self, parts: Iterable[Text]) -> None:
        self.parts = [p for p in parts if p.plain]

    def lines(self, width: int) -> list[Text]:
        lines: list[Text] = []
        line = Text(no_wrap=True, overflow="ellipsis")
        for part in self.parts:
            if line.plain and line.cell_len + len(self.SEPARATOR) + part.cell_len > width:
                lines.append(line)
                line = Text(no_wrap=True, overflow="ellipsis")
            if line.plain:
                line.append(self.SEPARATOR)
            line.append_text(part)
        if line.plain:
            lines.append(line)
        for text in lines:
            text.truncate(width, overflow="ellipsis")
        return lines

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max((p.cell_len for p in self.parts), default=0)
        total = sum(p.cell_len for p in self.parts) + len(self.SEPARATOR) * max(
            len(self.parts) - 1, 0
        )
        return Measurement(min(widest, options.max_width), total)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines(options.max_width)


class LabeledPath:
    """``config /path/to/models.yaml``; a path too long for the line loses its start (the
    file name is what identifies it), never wraps."""

    def __init__(self, label: str, path: str, style: str = "dim") -> None:
        self.label, self.path, self.style = label, path, style

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.label) + 1 + cell_len(self.path)
        return Measurement(min(width, 20), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = options.max_width - cell_len(self.label) - 1
        path = self.path
        if cell_len(path) > room:
            path = "…" + path[len(path) - max(room - 1, 0) :] if room > 1 else "…"
        yield Text(f"{self.label} {path}", style=self.style, no_wrap=True, overflow="crop")


class ModelName:
    """A model's name, with :data:`PIN` after it for a pinned model; a name too long for its
    column is cut with an ellipsis, the marker is kept."""

    def __init__(self, name: str, *, pinned: bool = False) -> None:
        self.name = name
        self.suffix = f" {PIN}" if pinned else ""

    @classmethod
    def of(cls, model: Mapping[str, Any]) -> ModelName:
        """The name cell of a ``/api/models`` (or ``/api/stats``) entry."""
        return cls(str(model.get("name", "?")), pinned=bool(model.get("pinned")))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.name) + cell_len(self.suffix)
        return Measurement(min(width, 8), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = max(options.max_width - cell_len(self.suffix), 1)
        text = Text(self.name, no_wrap=True, overflow="ellipsis")
        text.truncate(room, overflow="ellipsis")
        text.append(self.suffix)
        yield text


class LeftTrimmed:
    """Text that, when it does not fit, loses its start instead of its end: a model path's
    last component (``…/Qwen2.5-7B-Instruct-4bit``) is the part that identifies it."""

    def __init__(self, text: str, style: str = "", min_width: int = 12) -> None:
        self.text = text
        self.style = style
        self.min_width = min_width

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = cell_len(self.text)
        return Measurement(min(width, self.min_width), width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text, width = self.text, options.max_width
        if cell_len(text) > width:
            text = "…" + text[len(text) - max(width - 1, 0) :] if width > 1 else "…"[:width]
        yield Text(text, style=self.style, no_wrap=True, overflow="crop")
