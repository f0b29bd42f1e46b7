"""Reporting a benchmark: the console, cells (a value with its unit, a ratio to a
baseline), the Markdown and rich versions of a table, and the output files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Piped output gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 150)

_UNITS = {
    "tok/s": "{:.0f} tok/s",
    "ms": "{:.1f} ms",
    "s": "{:.2f} s",
    "cpu": "{:.3f} s",
    "MiB": "{:.0f} MiB",
}


def fmt(value: float | None, unit: str) -> str:
    """A cell: ``12.3 ms``, ``1.25 s``, ``812 tok/s``...; ``—`` for no value."""
    if value is None:
        return "—"
    return _UNITS.get(unit, "{:g}").format(value)


def ratio(value: float | None, base: float | None, unit: str) -> str:
    """``x1.25 (+3.1 ms)``: ``value`` against ``base``, with the difference for times."""
    if value is None or base is None or base <= 0:
        return "—"
    text = f"x{value / base:.2f}"
    if unit == "ms":
        text += f" ({value - base:+.1f} ms)"
    elif unit == "s":
        text += f" ({value - base:+.2f} s)"
    return text


def dig(node: Any, *path: str) -> Any:
    """``node[path[0]][path[1]]...``, or None where a level is missing or not a mapping."""
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def render_markdown(
    header: list[str], rows: list[list[str]], notes: list[str], title: str | None = None
) -> str:
    """A Markdown table (first column left-aligned, the others right) and its notes."""

    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = [f"# {title}", ""] if title else []
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def print_table(
    title: str,
    header: list[str],
    rows: list[list[str]],
    notes: list[str],
    *,
    no_wrap_first: bool = False,
) -> None:
    """The same table on the console (``vs direct`` columns dimmed), then its notes."""
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(
            name,
            justify="left" if i == 0 else "right",
            style="dim" if name == "vs direct" else None,
            no_wrap=no_wrap_first and i == 0,
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in notes:
        console.print(f"- {line}", markup=False, highlight=False)


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_outputs(out_dir: Path, stem: str, markdown: str, raw: dict[str, Any]) -> None:
    """``OUT/<stem>.md`` and ``OUT/<stem>.json`` (every sample)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(markdown)
    (out_dir / f"{stem}.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
