"""Run a Python module as a worker that dies with its supervisor.

``python -m mlx_serve.workers.guard MODULE [ARGS...]`` starts a daemon thread that blocks on
stdin, then runs ``MODULE`` as ``__main__`` in this same process (no extra interpreter). The
supervisor holds the only write end of stdin; when the supervisor exits for any reason the
read returns EOF and the thread SIGKILLs this process group. Nothing else in the worker reads
stdin, so EOF cannot come early.
"""

from __future__ import annotations

import inspect
import os
import runpy
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def _watch_stdin() -> None:
    # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader
    # makes the interpreter abort ("could not acquire lock ... at shutdown") on a normal exit.
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the worker's own group: it and its children
    # Not a group leader (started by hand, not by the supervisor): the group is someone
    # else's, e.g. the shell's. End only this process.
    os.kill(os.getpid(), signal.SIGKILL)


#: ``--without torch``: keep transformers from importing torch in this worker. transformers
#: imports torch whenever it is installed (it is, for the audio extras), which costs the
#: mlx_lm, mlx_vlm, embedding and tts workers about a second of start-up on every swap and
#: hundreds of MiB, for nothing: they never use it. transformers decides once, through a
#: cached ``is_torch_available()``; we make that first answer "no" by hiding torch
#: (``sys.modules[...] = None`` makes ``find_spec`` return None) and then unhide it at once,
#: because other libraries (scipy's array-API helpers) look torch up in ``sys.modules`` and
#: break on a None entry. Anything that imports torch later still can.
#: ``MLX_SERVE_WORKER_KEEP_TORCH=1`` turns this off.


def _keep_transformers_off(module: str) -> None:
    if module != "torch" or os.environ.get("MLX_SERVE_WORKER_KEEP_TORCH") == "1":
        return
    sys.modules[module] = None  # type: ignore[assignment]
    try:
        from transformers.utils import import_utils  # noqa: PLC0415 - only for this decision

        import_utils.is_torch_available()  # cached from here on
    except Exception:
        pass
    finally:
        del sys.modules[module]


#: Listen backlog for servers built on ``socketserver`` (``mlx_lm server`` is one). Its
#: default of 5 makes the kernel drop the SYN of a sixth simultaneous connection, which the
#: client only retries a second later: a burst of 8 streams through the router (whose
#: per-worker limit is ``max_concurrency``, 8 by default) lost a second on some of them.
LISTEN_BACKLOG = 128


def _raise_listen_backlog() -> None:
    import socketserver  # noqa: PLC0415 - stdlib, cheap; only the class attribute changes

    socketserver.TCPServer.request_queue_size = max(
        socketserver.TCPServer.request_queue_size, LISTEN_BACKLOG
    )


def _send_events_at_once() -> None:
    """Turn Nagle's algorithm off for servers built on ``socketserver`` (``mlx_lm server``).

    With it on, a token event written while an earlier one is still unacknowledged waits in
    the worker until the ACK comes; the router lets a fast stream's events gather in its
    socket before it reads them (``UpstreamResponse.gather``), and the kernel delays the ACK
    of data nobody has read yet, so the events it waits for would sit in the worker instead,
    until its deadline. asyncio servers (``mlx_vlm``'s uvicorn, our own workers) set
    ``TCP_NODELAY`` already.
    """
    import socketserver  # noqa: PLC0415 - stdlib, cheap; only the class attribute changes

    socketserver.StreamRequestHandler.disable_nagle_algorithm = True


def _admit_new_requests_every(seconds: float) -> None:
    """Make ``mlx_lm server`` look for new requests every ``seconds`` while it generates.

    Its generation loop serves the running batch for a ``TimeBudget`` (0.5 s by default)
    before it takes new requests, so one that arrives just after a batch started waits for
    all of it instead of joining it (mlx_lm batches continuously otherwise). The budget is
    built with its default when the server starts; the default is changed here, before that.
    An mlx-lm whose server has no such class is left as it is.
    """
    try:
        from mlx_lm import server  # noqa: PLC0415 - imported by the worker anyway
    except ImportError:
        return
    budget = getattr(server, "TimeBudget", None)
    if not isinstance(budget, type) or "budget" not in inspect.signature(budget).parameters:
        print("mlx-serve guard: mlx_lm.server.TimeBudget not found; left as is", file=sys.stderr)
        return

    class _AdmitEvery(budget):  # type: ignore[misc, valid-type]
        def __init__(self, budget: float = seconds, *args: Any, **kwargs: Any) -> None:
            super().__init__(budget, *args, **kwargs)

    setattr(server, "TimeBudget", _AdmitEvery)  # noqa: B010 - the class mlx_lm builds by name


def main() -> None:
    args = sys.argv[1:]
    followers: str | None = None
    admit_every: float | None = None
    while len(args) >= 2 and args[0] in ("--without", "--followers", "--mlx-lm-admit-every"):
        if args[0] == "--without":
            _keep_transformers_off(args[1])
        elif args[0] == "--followers":
            followers = args[1]
        else:
            admit_every = float(args[1])
        args = args[2:]
    if not args:
        sys.exit(
            "usage: python -m mlx_serve.workers.guard [--without MOD]... [--followers FILE] "
            "[--mlx-lm-admit-every SECONDS] MODULE [ARGS...]"
        )
    module = args[0]
    sys.argv = [module, *args[1:]]
    threading.Thread(target=_watch_stdin, name="supervisor-guard", daemon=True).start()
    if followers is not None:
        # Rank 0 of a sharded model: the other ranks first (see workers/ranks.py).
        from mlx_serve.workers.ranks import start_followers  # noqa: PLC0415

        start_followers(Path(followers))
    _raise_listen_backlog()
    _send_events_at_once()
    if admit_every is not None:
        _admit_new_requests_every(admit_every)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
