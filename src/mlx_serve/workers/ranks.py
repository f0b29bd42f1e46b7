"""The follower ranks of a distributed model, started and watched by rank 0's process.

Rank 0 of a sharded model is the worker process the supervisor owns (``mlx_lm server``
under :mod:`mlx_serve.workers.guard`, the leader of its own process group). Before it runs
``mlx_lm server`` the guard starts the other ranks from a small JSON file written by the
driver (:mod:`mlx_serve.workers.distributed`): ranks on this machine as children in the same
process group, remote ranks through ``ssh``. So one ``killpg`` of the group ends every local
rank and every ssh connection (and with it, through the remote tty's hangup, the remote
rank), which is the trap of ``mlx.launch``: a SIGTERM to the launcher alone left its local
ranks serving.

Why not ``mlx.launch`` for the ring backend: it costs an idle core (a thread per rank and a
stdin broadcast loop polling in ``select``), it exits 0 when a rank died, and the ranks need
nothing from it but ``MLX_RANK`` and ``MLX_HOSTFILE`` (``docs/scaling.md`` has the figures).

A rank that exits, for whatever reason and with whatever code, makes the model unusable (rank
0 then blocks in its next collective): the watcher thread of that rank writes why to the log
and rank 0 exits with :data:`RANK_LOST_EXIT`, which the supervisor sees as a crash (and then
kills the group).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from mlx_serve.files import atomic_write_text

#: Rank 0's exit code when another rank of its model exited.
RANK_LOST_EXIT = 86


@dataclass(frozen=True)
class Follower:
    """One rank other than 0: how to start it, and where it runs (for messages)."""

    rank: int
    host: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    remote: bool = False
    #: ``ssh`` argv prefix that reaches ``host`` (for the reachability check of a remote rank).
    ssh: list[str] = field(default_factory=list)
    connect_timeout: float = 5.0


def write_followers(path: Path, followers: list[Follower]) -> None:
    """Write the followers for :func:`start_followers` (by the driver, before the start)."""
    atomic_write_text(path, json.dumps([asdict(f) for f in followers]))


def read_followers(path: Path) -> list[Follower]:
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return [Follower(**item) for item in data]


def start_followers(path: Path) -> None:
    """Check the remote hosts, start every follower and watch it; exit with a message (and
    code 2) if a host cannot be reached, so the start fails naming that host."""
    followers = read_followers(path)
    for follower in followers:
        if follower.remote:
            problem = _unreachable(follower)
            if problem:
                sys.stderr.write(f"mlx-serve: rank {follower.rank}: {problem}\n")
                sys.stderr.flush()
                sys.exit(2)
    for follower in followers:
        proc = subprocess.Popen(
            follower.argv,
            # A pipe only this process writes: a local follower's guard ends it when this
            # process dies; ssh forwards the hangup to a remote one.
            stdin=subprocess.PIPE,
            env={**os.environ, **follower.env},
        )
        threading.Thread(
            target=_watch, args=(follower, proc), name=f"rank-{follower.rank}", daemon=True
        ).start()


def _watch(follower: Follower, proc: subprocess.Popen[bytes]) -> None:
    code = proc.wait()
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    sys.stderr.write(
        f"mlx-serve: rank {follower.rank} ({follower.host}) {how}; a sharded model cannot "
        "run without it, ending every rank\n"
    )
    sys.stderr.flush()
    # Exit at once with a code that says why; the local followers' guards see their stdin
    # close and end themselves, and the supervisor kills what is left of the group.
    os._exit(RANK_LOST_EXIT)


def _unreachable(follower: Follower) -> str | None:
    """Why ``ssh`` cannot run a command on the follower's host, or None if it can."""
    if shutil.which(follower.ssh[0] if follower.ssh else "ssh") is None:
        return f"host {follower.host} is remote, and ssh is not installed on this machine"
    try:
        done = subprocess.run(
            [*follower.ssh, "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=follower.connect_timeout + 5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"host {follower.host} is unreachable (ssh did not answer in time)"
    if done.returncode != 0:
        said = _last_line(done.stderr) or f"ssh exited with code {done.returncode}"
        return f"host {follower.host} is unreachable or refuses ssh: {said}"
    return None


def _last_line(data: bytes | str | IO[bytes] | None) -> str:
    if not isinstance(data, bytes | str):
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
