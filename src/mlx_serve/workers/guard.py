"""Run a Python module as a worker that dies with its supervisor.

``python -m mlx_serve.workers.guard MODULE [ARGS...]`` starts a daemon thread that blocks on
stdin, then runs ``MODULE`` as ``__main__`` in this same process (no extra interpreter). The
supervisor holds the only write end of stdin; when the supervisor exits for any reason the
read returns EOF and the thread SIGKILLs this process group. Nothing else in the worker reads
stdin, so EOF cannot come early.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading


def _watch_stdin() -> None:
    # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader
    # makes the interpreter abort ("could not acquire lock ... at shutdown") on a normal exit.
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m mlx_serve.workers.guard MODULE [ARGS...]")
    module = sys.argv[1]
    threading.Thread(target=_watch_stdin, name="supervisor-guard", daemon=True).start()
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
