"""Where mlx-serve keeps its files: ``$MLX_SERVE_HOME``, else ``~/.mlx-serve``."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The data directory: logs, the pid file, demo models."""
    env = os.environ.get("MLX_SERVE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".mlx-serve"
