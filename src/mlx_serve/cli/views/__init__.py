"""Rich renderables for the CLI, as pure functions of the management API's JSON.

Nothing here talks to the server or reads the clock on its own: every function takes the JSON
it renders (and ``now`` where times are relative), so the views are tested by rendering sample
JSON into an 80-column console. The layouts are built for 80 columns, the width of a default
terminal and of any non-tty output: long model names are cut with an ellipsis, never wrapped.

:mod:`.format` turns figures into short text, :mod:`.widgets` keeps lines on one line,
:mod:`.models` renders one model (``ps``, ``models list``, ``models show``), :mod:`.status`
the server (``status``), :mod:`.events` the event log (``logs``), :mod:`.reload` a reload.
"""

from .events import event_line
from .format import NONE, human_bytes, human_duration, relative_time
from .models import (
    RESIDENT_STATUSES,
    STATUS_STYLES,
    disk_text,
    idle_left,
    measured_bytes,
    models_table,
    planned_text,
    ps_view,
    show_panel,
    until_unload,
)
from .reload import reload_summary
from .status import (
    eviction_line,
    memory_line,
    requests_legend,
    spares_line,
    status_header,
    status_table,
    status_view,
)
from .widgets import PIN, Segments

__all__ = [
    "NONE",
    "PIN",
    "RESIDENT_STATUSES",
    "STATUS_STYLES",
    "Segments",
    "disk_text",
    "event_line",
    "eviction_line",
    "human_bytes",
    "human_duration",
    "idle_left",
    "measured_bytes",
    "memory_line",
    "models_table",
    "planned_text",
    "ps_view",
    "relative_time",
    "reload_summary",
    "requests_legend",
    "show_panel",
    "spares_line",
    "status_header",
    "status_table",
    "status_view",
    "until_unload",
]
