"""Which mlx-serve code a benchmark measures: the working tree, or a commit exported with
``git archive`` (others may edit the tree while it runs), and its import time."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench.lib.paths import REPO


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def describe_source(ref: str | None) -> str:
    """Which mlx-serve code is measured: a commit, or the working tree (and whether dirty)."""
    try:
        if ref:
            return f"git {ref} = {git('rev-parse', '--short', ref)}"
        dirty = " + uncommitted changes in src/" if git("status", "--porcelain", "src") else ""
        return f"working tree (HEAD {git('rev-parse', '--short', 'HEAD')}{dirty})"
    except (OSError, subprocess.SubprocessError):
        return "working tree (not a git checkout?)"


def export_ref(ref: str, dest: Path) -> Path:
    """``src/`` as of ``ref`` (read with git archive) under ``dest``; PYTHONPATH for it.

    Others may be editing the working tree while the benchmark runs; a commit holds still.
    The editable install only appends the working tree's src/ to sys.path, so PYTHONPATH wins.
    """
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    src = dest / "src"
    check = subprocess.run(
        [sys.executable, "-c", "import mlx_serve; print(mlx_serve.__file__)"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=60,
    )
    if not check.stdout.strip().startswith(str(src)):
        raise RuntimeError(f"PYTHONPATH={src} does not win over the installed mlx_serve: {check}")
    return src


def import_seconds(python: Path, runs: int) -> float | None:
    """How long ``import mlx_lm.server`` takes in that interpreter (best of ``runs``): most of
    a worker's start, so it explains cold start and swap times."""
    best: float | None = None
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(
            [str(python), "-c", "import mlx_lm.server"], capture_output=True, check=False
        )
        took = time.perf_counter() - t0
        if done.returncode != 0:
            return None
        best = took if best is None else min(best, took)
    return best
