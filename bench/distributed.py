"""Sharded vs one process: decode speed and idle CPU of a model split over 2 local ranks.

Run with ``.venv/bin/python -m bench.distributed [--requests 10] [--idle 10] [--out DIR]``.

One run, side by side, on the tiny random-weight llama the tests use (nothing downloaded):

1. **decode**: ``--requests`` streamed completions of 128 tokens at temperature 0, alternating
   between one ``mlx_lm server`` process and the same weights sharded over 2 ranks on
   127.0.0.1 (ring backend, tensor mode, ranks started as mlx-serve starts them: ``MLX_RANK``
   and ``MLX_HOSTFILE``, no launcher). Per request: decode tok/s = (tokens - 1) / (first ->
   last token), and the time to the first token.
2. **idle CPU**: after the requests, ``--idle`` seconds of nothing: the CPU share (100 = one
   core) of the one-process server, of each rank, and of the same 2 ranks started by
   ``mlx.launch --backend ring`` (the launcher itself and its ranks) for comparison.

Writes ``OUT/distributed.md`` and ``OUT/distributed.json``; logs go to ``OUT/logs/distributed/``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from mlx_serve.tiny_models import build_text_model
from mlx_serve.workers.process import end_group_sync, free_port

MAX_TOKENS = 128
PROMPT = "Tell me a long story about a lighthouse keeper and her cat."


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process in its own group, output to ``log``; stdin a pipe held open (as the guard
    and mlx.launch expect)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    end_group_sync(proc, grace=5.0)


def stream(port: int, model: str) -> dict[str, float]:
    """One streamed completion: decode tok/s and TTFT (s)."""
    body = json.dumps(
        {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    sent = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = last = None
    tokens = 0
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data: {"):
            continue
        data = json.loads(line[6:])
        if data.get("usage"):
            tokens = data["usage"]["completion_tokens"]
        if data.get("choices") and data["choices"][0].get("text"):
            now = time.perf_counter()
            first = first or now
            last = now
    conn.close()
    assert first is not None and last is not None and tokens > 1, "no tokens came back"
    return {"tok_s": (tokens - 1) / (last - first), "ttft_s": first - sent, "tokens": tokens}


def wait_ready(port: int, model: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited; see {log}")
        with contextlib.suppress(OSError, AssertionError, http.client.HTTPException):
            stream(port, model)
            return
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer in 120 s; see {log}")


def cpu_share(procs: dict[str, psutil.Process], seconds: float) -> dict[str, float]:
    """CPU of each process (and its descendants) over ``seconds``, 100 = one core."""

    def total(p: psutil.Process) -> float:
        t = 0.0
        for q in [p, *p.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                c = q.cpu_times()
                t += c.user + c.system
        return t

    before = {k: total(p) for k, p in procs.items()}
    time.sleep(seconds)
    return {k: round(100 * (total(p) - before[k]) / seconds, 1) for k, p in procs.items()}


@contextlib.contextmanager
def ring(
    model: str, logs: Path, python: str
) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """2 ranks on 127.0.0.1 started directly: (rank 0's HTTP port, the rank processes)."""
    hostfile = logs / "ring.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
    port = free_port()
    procs = []
    try:
        for rank in (0, 1):
            http = ["--port", str(port)] if rank == 0 else []
            argv = [
                python,
                "-m",
                "mlx_serve.workers.guard",
                "--without",
                "torch",
                "mlx_lm",
                "server",
                "--model",
                model,
                *http,
            ]
            env = {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
            procs.append(start(argv, logs / f"rank{rank}.log", env))
        yield port, procs
    finally:
        for p in procs:
            stop(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = args.out / "logs" / "distributed"
    logs.mkdir(parents=True, exist_ok=True)
    model = str(build_text_model(logs / "tiny", seed=1))
    python = sys.executable
    single_port = free_port()
    single = start(
        [
            python,
            "-m",
            "mlx_serve.workers.guard",
            "--without",
            "torch",
            "mlx_lm",
            "server",
            "--model",
            model,
            "--port",
            str(single_port),
        ],
        logs / "single.log",
    )
    results: dict[str, Any] = {"requests": {"single": [], "sharded": []}}
    try:
        with ring(model, logs, python) as (ring_port, ranks):
            wait_ready(single_port, model, single, logs / "single.log")
            wait_ready(ring_port, model, ranks[0], logs / "rank0.log")
            for _ in range(args.requests):
                results["requests"]["single"].append(stream(single_port, model))
                results["requests"]["sharded"].append(stream(ring_port, model))
            time.sleep(1)
            results["idle_cpu_direct"] = cpu_share(
                {
                    "single": psutil.Process(single.pid),
                    "rank 0": psutil.Process(ranks[0].pid),
                    "rank 1": psutil.Process(ranks[1].pid),
                },
                args.idle,
            )
    finally:
        stop(single)
    # The same 2 ranks under mlx.launch, for its idle cost.
    port = free_port()
    launcher = start(
        [
            python,
            "-m",
            "mlx_serve.workers.mlx_launch",
            "--backend",
            "ring",
            "-n",
            "2",
            "--starting-port",
            str(free_port()),
            "--python",
            python,
            "--",
            "-m",
            "mlx_lm",
            "server",
            "--model",
            model,
            "--port",
            str(port),
        ],
        logs / "launch.log",
    )
    try:
        wait_ready(port, model, launcher, logs / "launch.log")
        time.sleep(1)
        me = psutil.Process(launcher.pid)
        ranks_under = [c for c in me.children(recursive=True) if "mlx_lm" in " ".join(c.cmdline())]
        share = {"mlx.launch": me}
        share.update({f"rank {i} (launched)": p for i, p in enumerate(ranks_under)})
        # The launcher alone: its own CPU, not its children's.
        before = sum(me.cpu_times()[:2])
        launched = cpu_share({k: v for k, v in share.items() if k != "mlx.launch"}, args.idle)
        launched["mlx.launch (itself)"] = round(
            100 * (sum(me.cpu_times()[:2]) - before) / args.idle, 1
        )
        results["idle_cpu_launch"] = launched
    finally:
        stop(launcher)
    return results


def summarize(results: dict[str, Any]) -> list[list[str]]:
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("tok_s", "ttft_s")}
        for k, v in results["requests"].items()
    }
    ratio = med["sharded"]["tok_s"] / med["single"]["tok_s"]
    rows = [
        [
            "decode tok/s, median",
            f"{med['single']['tok_s']:.0f}",
            f"{med['sharded']['tok_s']:.0f}",
            f"x{ratio:.2f}",
        ],
        [
            "time to first token, median",
            f"{1000 * med['single']['ttft_s']:.1f} ms",
            f"{1000 * med['sharded']['ttft_s']:.1f} ms",
            f"x{med['sharded']['ttft_s'] / med['single']['ttft_s']:.2f}",
        ],
    ]
    idle = results["idle_cpu_direct"]
    rows.append(
        [
            "idle CPU (100 = one core)",
            f"{idle['single']}",
            f"rank 0: {idle['rank 0']}, rank 1: {idle['rank 1']}",
            "",
        ]
    )
    la = results["idle_cpu_launch"]
    rows.append(
        ["idle CPU under mlx.launch", "", ", ".join(f"{k}: {v}" for k, v in la.items()), ""]
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    results = run(args)
    rows = summarize(results)
    header = ["figure", "one process", "sharded over 2 ranks (127.0.0.1, ring, tensor)", "ratio"]
    table = [header, ["---"] * 4, *rows]
    md = "# Distributed: one model sharded over 2 local ranks vs one process\n\n"
    md += "\n".join("| " + " | ".join(r) + " |" for r in table) + "\n\n"
    md += (
        f"- Workload: tiny random llama (hidden 64, 2 layers, 4 heads), {MAX_TOKENS} streamed "
        f"tokens at temperature 0, {args.requests} requests per target, alternating; idle CPU "
        f"over {args.idle:.0f} s after the requests.\n"
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average before {load_before[0]:.2f}.\n"
    )
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.md").write_text(md)
    (args.out / "distributed.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
