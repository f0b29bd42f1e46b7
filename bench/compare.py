"""Side-by-side benchmark: ``mlx_lm server`` direct vs mlx-serve (this repo) vs mlx-serve 0.3.0.

Run with ``.venv/bin/python -m bench.compare [--quick] [--out bench/results]``.

Every server is a real subprocess started the way a user starts it, serving the same two tiny
random-weight llama models built locally by :mod:`mlx_serve.tiny_models` (nothing is
downloaded). Requests never overlap across targets (the machine has 2 cores): the warm
metrics run with all servers up but idle except the one being asked (round-robin), the
lifecycle metrics (cold start, swaps, bursts) run one target after another.

- direct:     ``python -m mlx_lm server --model DIR`` (one process, one model)
- mlx-serve:  ``.venv/bin/mlx-serve start --config models.yaml`` (this repo: the working tree,
              or ``--ref REV`` to measure a commit while others edit the tree)
- 0.3.0:      ``bench/.venv-030/bin/mlx-serve start`` (the FastAPI-based mlx-serve from PyPI,
              installed into its own venv on first use with the same mlx-lm version)

The table is printed with rich and written as Markdown to ``OUT/latest.md``; the raw samples
go to ``OUT/latest.json`` and the servers' logs to ``OUT/logs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.compare_phases import Context, Settings, run_direct, run_router, run_warm_stage
from bench.compare_report import build_rows, notes, print_table, render_markdown
from bench.lib.paths import BENCH_DIR
from bench.lib.processes import run_main
from bench.lib.report import console, fresh_dir, write_outputs
from bench.lib.servers import (
    DIRECT,
    LABELS,
    LEGACY,
    LEGACY_VENV,
    LEGACY_VERSION,
    OURS,
    LegacyServer,
    OursServer,
    ensure_legacy_venv,
)
from bench.lib.source import describe_source, export_ref, import_seconds


async def run(args: argparse.Namespace) -> int:
    from mlx_serve.tiny_models import build_text_model

    settings = Settings.make(args.quick)
    out_dir: Path = args.out
    logs = fresh_dir(out_dir / "logs")
    wanted = set(args.only.split(",")) if args.only else {DIRECT, OURS, LEGACY}
    started = time.perf_counter()
    load_before = os.getloadavg()
    skipped: dict[str, str] = {}
    results: dict[str, Any] = {}

    if LEGACY in wanted:
        reason = await asyncio.to_thread(
            ensure_legacy_venv, not args.no_install, logs / "install-0.3.0.log"
        )
        if reason:
            skipped[LEGACY] = reason
            console.print(f"[bold yellow]mlx-serve {LEGACY_VERSION} is skipped:[/] {reason}")
    for target in (DIRECT, OURS, LEGACY):
        if target not in wanted:
            skipped.setdefault(target, "not selected (--only)")
    source = await asyncio.to_thread(describe_source, args.ref)
    console.print(f"mlx-serve (this repo) runs from: {source}")
    # Our worker and direct mlx_lm share .venv; 0.3.0 has its own venv (maybe other packages).
    runs = 1 if args.quick else 2
    import_s = {DIRECT: await asyncio.to_thread(import_seconds, Path(sys.executable), runs)}
    import_s[OURS] = import_s[DIRECT]
    if LEGACY not in skipped:
        import_s[LEGACY] = await asyncio.to_thread(
            import_seconds, LEGACY_VENV / "bin" / "python", runs
        )

    with tempfile.TemporaryDirectory(prefix="mlx-serve-bench-") as tmp:
        workdir = Path(tmp)
        models = {
            "a": build_text_model(workdir / "models" / "tiny-a", seed=1),
            "b": build_text_model(workdir / "models" / "tiny-b", seed=2),
        }
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=settings.request_timeout, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            ctx = Context(settings, workdir, logs, models, session)
            if args.ref:
                src = await asyncio.to_thread(export_ref, args.ref, workdir / "ours-src")
                ctx.envs[OURS] = {"PYTHONPATH": str(src)}
            runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
                DIRECT: lambda: run_direct(ctx),
                OURS: lambda: run_router(ctx, OursServer),
                LEGACY: lambda: run_router(ctx, LegacyServer),
            }
            runner_for = runners.__getitem__
            kinds = [k for k in runners if k not in skipped]
            console.rule("warm: " + ", ".join(LABELS[k] for k in kinds) + " (round-robin)")
            warm = await run_warm_stage(ctx, kinds)
            for target in kinds:
                console.rule(LABELS[target])
                results[target] = {**warm[target], "worker_import_s": import_s.get(target)}
                try:
                    results[target].update(await runner_for(target)())
                except Exception as exc:  # e.g. the server never came up: say why in each cell
                    error = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
                    for phase in ("burst", "cold", "swap", "interleaved"):
                        results[target].setdefault(phase, error)
                    console.print(f"[bold red]{LABELS[target]} failed:[/] {exc}")

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.perf_counter() - started,
        "settings": asdict(settings),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "mlx": importlib.metadata.version("mlx"),
        "mlx_lm": importlib.metadata.version("mlx-lm"),
        "loadavg_1m_before": round(load_before[0], 2),
        "mlx_serve_source": source,
    }
    rows = build_rows(results, skipped)
    note_lines = notes(results, skipped, meta)
    print_table(rows, note_lines)
    raw = {"meta": meta, "skipped": skipped, "results": results}
    write_outputs(out_dir, "latest", render_markdown(rows, note_lines), raw)
    console.print(f"\nwrote {out_dir / 'latest.md'} and {out_dir / 'latest.json'}")
    return 1 if OURS in wanted and OURS not in results else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results",
        help="where latest.md, latest.json and logs/ go",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {DIRECT},{OURS},{LEGACY}"
    )
    parser.add_argument(
        "--ref",
        default=None,
        help="measure mlx-serve as of this git revision (e.g. HEAD) instead of the working tree",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help=f"do not create {LEGACY_VENV.name} when it is missing",
    )
    args = parser.parse_args(argv)
    return run_main(run(args))


if __name__ == "__main__":
    sys.exit(main())
