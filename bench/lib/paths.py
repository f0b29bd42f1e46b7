"""Where the benchmarks, the repository and the interpreter running them are."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
