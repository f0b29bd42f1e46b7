"""``mlx-serve reload``: what the new models.yaml changed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.text import Text


def reload_summary(result: Mapping[str, Any]) -> Text:
    """``mlx-serve reload``: what the new models.yaml changed (``/api/reload``'s answer).

    ``changed`` splits into ``restarted`` (worker settings: the model restarts once its
    in-flight requests finish) and ``updated`` (router settings, applied at once) when the
    server says which is which; ``restart_needed`` lists server settings (host, port,
    data_dir) that only a server restart applies.
    """
    text = Text()
    if result.get("status") != "ok":
        text.append("models.yaml is invalid; nothing changed\n", style="bold red")
        if result.get("error"):
            text.append(str(result["error"]))
        return text
    split = "restarted" in result or "updated" in result
    sections: Iterable[tuple[str, str, str]] = (
        ("added", "added", "green"),
        ("removed", "removed", "red"),
        *(
            (
                ("restarted", "restarting", "yellow"),  # after their in-flight requests
                ("updated", "updated", "yellow"),
            )
            if split
            else (("changed", "changed", "yellow"),)
        ),
        ("server_changed", "server", "yellow"),
        ("restart_needed", "needs restart", "bold red"),
    )
    changed = False
    for key, label, style in sections:
        names = result.get(key) or []
        if names:
            changed = True
            text.append(f"{label:<14}", style=style)
            text.append(", ".join(map(str, names)) + "\n")
    if not changed:
        text.append("no changes\n", style="dim")
    if result.get("restarted"):
        text.append("(restarting models finish their in-flight requests first)\n", style="dim")
    if result.get("restart_needed"):
        text.append("(these server settings apply after `mlx-serve restart`)\n", style="dim")
    unchanged = result.get("unchanged") or []
    if unchanged:
        text.append(f"{'unchanged':<14}", style="dim")
        text.append(", ".join(map(str, unchanged)), style="dim")
    text.rstrip()
    return text
