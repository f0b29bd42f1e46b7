"""Residency benchmark: exactly one model at a time vs a memory budget that fits them all.

Run with ``.venv/bin/python -m bench.residency [--turns 5] [--budget 90%]`` from the repo root.

Two multi-model "turns" an assistant app makes over and over, each against a real
``mlx-serve start`` subprocess, once per configuration:

- **voice**: STT (``/v1/audio/transcriptions``, a short generated WAV) -> chat completion
  (the transcript, ``--max-tokens`` tokens, temperature 0) -> TTS (``/v1/audio/speech``, the
  answer);
- **rag**: embeddings (``/v1/embeddings``, the question; the documents are embedded once in
  the cold turn) -> chat completion (the question with the two nearest documents).

Configurations (everything else identical, ``idle_timeout: -1``, a fresh data dir each):

- **one**: no ``memory_budget`` and ``max_loaded_models`` unset: exactly one model at a time,
  so every step of a turn swaps;
- **budget**: ``memory_budget: --budget`` (default ``90%``), which fits every model here.

Each (scenario, configuration) gets its own server: one cold turn (not counted), then
``--turns`` warm turns, each timed from the client; ``model.loaded`` / ``model.unloaded`` /
``model.evicted`` / ``swap`` events are counted from ``GET /api/events`` after every turn.
At the end of a budget run ``GET /api/models`` (per-model ``memory``) and ``GET /api/stats``
(``memory``) are recorded, after one footprint sampling interval so the measured figures are
taken after the models have worked.

All models are tiny and local (nothing is downloaded): a random-weight llama
(:func:`mlx_serve.tiny_models.build_text_model`), the tiny Whisper and Soprano of
:mod:`mlx_serve.tiny_models.audio`, and the real all-MiniLM-L6-v2 from its pip package.
Writes ``OUT/residency.md`` and ``OUT/residency.json``; the servers' logs, configs and data
dirs stay in ``--logs`` (default: a fresh directory under /tmp, printed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import yaml

from bench.lib.client import wait_http_ok
from bench.lib.paths import BENCH_DIR, REPO, VENV_BIN
from bench.lib.processes import Proc, kill_group, run_main
from bench.lib.report import console
from bench.lib.stats import median, summarize
from mlx_serve.workers.process import free_port

HEALTH_TIMEOUT = 60.0
REQUEST_TIMEOUT = 180.0
SAMPLE_WAIT = 5.5  # > the server's footprint SAMPLE_INTERVAL (5 s): one sample after the turns

CHAT, STT, TTS, EMBED = "chat", "stt", "tts", "embed"
SCENARIOS: dict[str, tuple[str, ...]] = {"voice": (STT, CHAT, TTS), "rag": (EMBED, CHAT)}
ONE, BUDGET = "one", "budget"
CONFIG_LABELS = {ONE: "exactly one at a time", BUDGET: "memory budget"}
# Log lines that look alarming but are expected: mlx_lm.server's standing warning (and the
# ``warnings.warn(`` line under it), transformers on the tiny Soprano's config class.
BENIGN = (
    "mlx_lm.server is not recommended for production",
    "warnings.warn(",
    "You are using a model of type `soprano`",
)
COUNTED = ("model.loaded", "model.unloaded", "model.evicted", "swap")

DOCS = [
    "The lighthouse keeper lit the lamp every evening at dusk.",
    "Cats sleep for most of the day and hunt at night.",
    "The harbour freezes over in the coldest weeks of winter.",
    "Fresh bread is baked in the village every morning before six.",
]
QUESTION = "When does the keeper light the lamp?"


# ------------------------------------------------------------------------------ models


def build_models(models_dir: Path) -> dict[str, dict[str, Any]]:
    """The four models every server is configured with (models.yaml entries)."""
    from mlx_serve.tiny_models import build_text_model
    from mlx_serve.tiny_models.audio import build_stt_model, build_tts_model
    from mlx_serve.tiny_models.embedding import embedding_model_dir

    return {
        CHAT: {"type": "text", "path": str(build_text_model(models_dir / CHAT, seed=1))},
        STT: {"type": "stt", "path": str(build_stt_model(models_dir / STT))},
        TTS: {"type": "tts", "path": str(build_tts_model(models_dir / TTS))},
        EMBED: {"type": "embedding", "path": str(embedding_model_dir())},
    }


def make_wav(seconds: float = 1.5, rate: int = 16000) -> bytes:
    """A deterministic mono 16-bit WAV: a few tones and a little noise (the tiny Whisper says
    its fixed sentence whatever it hears)."""
    t = np.arange(int(seconds * rate)) / rate
    signal_ = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 330.0, 440.0))
    signal_ = signal_ + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    pcm = (np.clip(signal_, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


# ------------------------------------------------------------------------------ server


class Server:
    """``mlx-serve start`` on a free port with a models.yaml in ``workdir``."""

    def __init__(
        self, workdir: Path, models: dict[str, dict[str, Any]], budget: str | None
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.data_dir = workdir / "data"
        server: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "idle_timeout": -1,  # nothing unloads on its own during the run
            "stop_timeout": "5s",
            "data_dir": str(self.data_dir),
            "watch_config": False,
        }
        if budget is not None:
            server["memory_budget"] = budget
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "models.yaml"
        self.config_path.write_text(yaml.safe_dump({"server": server, "models": models}))
        self.proc: Proc | None = None
        self.worker_pids: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> float:
        argv = [
            str(VENV_BIN / "mlx-serve"),
            "start",
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
        ]
        env = {"COLUMNS": "250", "HF_HUB_OFFLINE": "1"}
        self.proc = Proc("mlx-serve", argv, self.workdir / "server.log", env=env, cwd=self.workdir)
        self.proc.start()
        try:
            return await wait_http_ok(http, self.url + "/health", HEALTH_TIMEOUT, self.exited)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{exc}; log tail:\n{self.proc.log_tail()}") from exc

    def exited(self) -> str | None:
        if self.proc is None or self.proc.popen is None or self.proc.popen.poll() is None:
            return None
        return f"the server exited with code {self.proc.popen.poll()}: {self.proc.log_tail(1)}"

    async def stop(self) -> dict[str, Any]:
        """Stop it (SIGTERM, wait, SIGKILL the group); exit code, seconds, leaked workers."""
        t0 = time.perf_counter()
        if self.proc is not None:
            await asyncio.to_thread(self.proc.stop)
        code = None if self.proc is None or self.proc.popen is None else self.proc.popen.poll()
        leaked = [pid for pid in sorted(self.worker_pids) if _alive(pid)]
        for pid in leaked:  # workers lead their own process group
            kill_group(pid)
        return {"exit_code": code, "stop_s": round(time.perf_counter() - t0, 3), "leaked": leaked}

    async def get(self, http: aiohttp.ClientSession, path: str) -> Any:
        async with http.get(self.url + path) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def events_after(self, http: aiohttp.ClientSession, seq: int) -> list[dict[str, Any]]:
        data = await self.get(http, "/api/events?limit=2000")
        events = [e for e in data["events"] if e["seq"] > seq]
        for e in events:
            if e["kind"] == "model.loaded" and isinstance(e.get("pid"), int):
                self.worker_pids.add(e["pid"])
        return events

    def trouble(self) -> dict[str, int]:
        """Suspicious lines of the server's and the workers' logs, with how often each came."""
        keys = ("Traceback", "ERROR", "WARNING", "Error", "Warning", "terminate called",
                "worker.crashed", "worker.kill", "new=failed")  # fmt: skip
        found: Counter[str] = Counter()
        logs = [self.workdir / "server.log", *sorted((self.data_dir / "logs").glob("*.log"))]
        for path in logs:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                if any(k in line for k in keys) and not any(b in line for b in BENIGN):
                    found[f"{path.name}: {' '.join(line.split())[:400]}"] += 1
        return dict(found)

    def worker_exits(self) -> dict[str, Any]:
        """From the server's event log: each model's worker exit codes and unload seconds."""
        codes: dict[str, Counter[str]] = {}
        unload_s: dict[str, list[float]] = {}
        try:
            lines = (self.data_dir / "events.jsonl").read_text().splitlines()
        except OSError:
            return {}
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            model = str(e.get("model"))
            if e.get("kind") == "worker.state" and e.get("new") == "stopped":
                codes.setdefault(model, Counter())[str(e.get("exit_code"))] += 1
            elif e.get("kind") == "model.unloaded":
                unload_s.setdefault(model, []).append(float(e.get("duration_s") or 0))
        return {"exit_codes": {m: dict(c) for m, c in codes.items()},
                "unload_s": {m: summarize(v) for m, v in unload_s.items()}}  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ------------------------------------------------------------------------------ turns


@dataclass
class Turn:
    seconds: float
    steps: dict[str, float]  # step -> seconds
    events: Counter[str] = field(default_factory=Counter)
    loaded: list[str] = field(default_factory=list)  # models whose worker started
    load_s: list[float] = field(default_factory=list)  # their model.loaded duration_s
    output: dict[str, Any] = field(default_factory=dict)


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str, wav: bytes, max_tokens: int):
        self.http, self.url, self.wav, self.max_tokens = http, url, wav, max_tokens
        self.doc_vectors: np.ndarray | None = None

    async def _json(self, path: str, body: dict[str, Any]) -> Any:
        async with self.http.post(self.url + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {resp.status}: {str(data)[:300]}")
            return data

    async def stt(self) -> str:
        form = aiohttp.FormData()
        form.add_field("file", self.wav, filename="question.wav", content_type="audio/wav")
        form.add_field("model", STT)
        async with self.http.post(self.url + "/v1/audio/transcriptions", data=form) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"transcription: HTTP {resp.status}: {str(data)[:300]}")
        return str(data["text"])

    async def chat(self, messages: list[dict[str, str]]) -> tuple[str, int | None]:
        body = {
            "model": CHAT,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        data = await self._json("/v1/chat/completions", body)
        tokens = (data.get("usage") or {}).get("completion_tokens")
        return str(data["choices"][0]["message"]["content"] or ""), tokens

    async def tts(self, text: str) -> int:
        body = {"model": TTS, "input": text, "response_format": "wav"}
        async with self.http.post(self.url + "/v1/audio/speech", json=body) as resp:
            audio = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"speech: HTTP {resp.status}: {audio[:300]!r}")
        return len(audio)

    async def embed(self, texts: list[str]) -> np.ndarray:
        data = await self._json("/v1/embeddings", {"model": EMBED, "input": texts})
        return np.array([d["embedding"] for d in data["data"]], dtype=np.float32)

    # -------------------------------------------------------------- scenarios

    async def voice(self) -> Turn:
        steps: dict[str, float] = {}
        t0 = time.perf_counter()
        heard = await self.stt()
        t1 = time.perf_counter()
        steps[STT] = t1 - t0
        answer, tokens = await self.chat(
            [
                {"role": "system", "content": "You are a voice assistant. Answer briefly."},
                {"role": "user", "content": heard},
            ]
        )
        t2 = time.perf_counter()
        steps[CHAT] = t2 - t1
        # A random-weight model may answer with nothing speakable: say something anyway.
        spoken = answer if any(c.isalpha() for c in answer) else "I did not catch that."
        audio = await self.tts(spoken)
        t3 = time.perf_counter()
        steps[TTS] = t3 - t2
        output = {
            "heard": heard,
            "answer": answer,
            "completion_tokens": tokens,
            "spoken_chars": len(spoken),
            "audio_bytes": audio,
        }
        return Turn(t3 - t0, steps, output=output)

    async def rag(self) -> Turn:
        steps: dict[str, float] = {}
        if self.doc_vectors is None:  # the corpus is indexed once, in the cold turn
            t = time.perf_counter()
            self.doc_vectors = await self.embed(DOCS)
            steps["index"] = time.perf_counter() - t
        t0 = time.perf_counter()
        query = (await self.embed([QUESTION]))[0]
        t1 = time.perf_counter()
        steps[EMBED] = t1 - t0
        scores = self.doc_vectors @ query
        best = [DOCS[i] for i in np.argsort(-scores)[:2]]
        answer, tokens = await self.chat(
            [
                {"role": "system", "content": "Answer from the context.\n" + "\n".join(best)},
                {"role": "user", "content": QUESTION},
            ]
        )
        t2 = time.perf_counter()
        steps[CHAT] = t2 - t1
        output = {"retrieved": best, "answer": answer, "completion_tokens": tokens}
        return Turn(t2 - t0 + steps.get("index", 0.0), steps, output=output)


async def run_one(
    http: aiohttp.ClientSession,
    scenario: str,
    config: str,
    *,
    workdir: Path,
    models: dict[str, dict[str, Any]],
    budget: str,
    wav: bytes,
    args: argparse.Namespace,
) -> dict[str, Any]:
    srv = Server(workdir, models, budget if config == BUDGET else None)
    result: dict[str, Any] = {
        "scenario": scenario,
        "config": config,
        "memory_budget": budget if config == BUDGET else None,
        "workdir": str(workdir),
    }
    console.rule(f"{scenario} / {CONFIG_LABELS[config]}")
    result["loadavg_1m_start"] = round(os.getloadavg()[0], 2)
    try:
        result["health_s"] = round(await srv.start(http), 3)
        client = Client(http, srv.url, wav, args.max_tokens)
        play = client.voice if scenario == "voice" else client.rag
        seq = 0
        turns: list[Turn] = []
        for i in range(args.turns + 1):
            turn = await play()
            events = await srv.events_after(http, seq)
            if events:
                seq = max(e["seq"] for e in events)
            turn.events = Counter(e["kind"] for e in events if e["kind"] in COUNTED)
            loaded = [e for e in events if e["kind"] == "model.loaded"]
            turn.loaded = [str(e["model"]) for e in loaded]
            turn.load_s = [float(e.get("duration_s") or 0) for e in loaded]
            turns.append(turn)
            label = "cold" if i == 0 else f"warm {i}"
            steps = "  ".join(f"{k} {v:.3f}s" for k, v in turn.steps.items())
            console.print(
                f"{label:>7}: {turn.seconds:6.3f}s  ({steps})  "
                f"starts={turn.events['model.loaded']} {turn.loaded}",
                markup=False,
                highlight=False,
            )
        cold, warm = turns[0], turns[1:]
        result["cold"] = _turn_json(cold)
        result["warm"] = [_turn_json(t) for t in warm]
        result["warm_seconds"] = summarize([t.seconds for t in warm])
        result["warm_steps"] = {
            step: summarize([t.steps[step] for t in warm]) for step in SCENARIOS[scenario]
        }
        result["per_warm_turn"] = {
            kind: sum(t.events[kind] for t in warm) / len(warm) for kind in COUNTED
        }
        result["warm_load_s"] = summarize([s for t in warm for s in t.load_s])
        if config == BUDGET:
            await asyncio.sleep(SAMPLE_WAIT)  # let the footprint sampler measure once more
        result["api_models"] = await srv.get(http, "/api/models")
        stats = await srv.get(http, "/api/stats")
        result["api_stats_memory"] = stats.get("memory")
        await srv.events_after(http, seq)  # pick up any worker pid for the leak check
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        console.print(f"[bold red]{scenario}/{config} failed:[/] {result['error']}")
    finally:
        result["stop"] = await srv.stop()
        result["trouble"] = srv.trouble()
        result["worker_exits"] = srv.worker_exits()
        result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        if result["stop"]["leaked"]:
            console.print(f"[bold red]leaked workers:[/] {result['stop']['leaked']}")
    return result


def _turn_json(t: Turn) -> dict[str, Any]:
    return {
        "seconds": round(t.seconds, 4),
        "steps": {k: round(v, 4) for k, v in t.steps.items()},
        "events": dict(t.events),
        "loaded": t.loaded,
        "load_s": [round(s, 4) for s in t.load_s],
        "output": t.output,
    }


# ------------------------------------------------------------------------------ report


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f} s"


def _mib(v: int | None) -> str:
    return "—" if v is None else f"{v / 2**20:.0f} MiB"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"x{a / b:.2f}"


def _range(summary: dict[str, Any]) -> str:
    if not summary.get("n"):
        return "—"
    return f"{summary['median']:.3f} s ({summary['min']:.3f}-{summary['max']:.3f})"


def _counts(r: dict[str, Any] | None) -> str:
    if not r or "per_warm_turn" not in r:
        return "—"
    p = r["per_warm_turn"]
    return f"{p['model.loaded']:g} / {p['model.unloaded']:g} / {p['model.evicted']:g}"


def build_tables(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| scenario | steps | exactly one: s per warm turn, median (min-max) "
        "| budget: s per warm turn, median (min-max) | budget / one "
        "| worker starts per warm turn, one → budget | starts / unloads / evictions per turn "
        "(one; budget) | cold turn, one; budget |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for scenario, by_config in results.items():
        one, bud = by_config.get(ONE, {}), by_config.get(BUDGET, {})
        m_one = (one.get("warm_seconds") or {}).get("median")
        m_bud = (bud.get("warm_seconds") or {}).get("median")
        starts = [(r.get("per_warm_turn") or {}).get("model.loaded") for r in (one, bud)]
        starts_cell = " → ".join("—" if s is None else f"{s:g}" for s in starts)
        cold = "; ".join(_s((r.get("cold") or {}).get("seconds")) for r in (one, bud))
        lines.append(
            f"| {scenario} | {' → '.join(SCENARIOS[scenario])} "
            f"| {_range(one.get('warm_seconds') or {})} | {_range(bud.get('warm_seconds') or {})} "
            f"| {_ratio(m_bud, m_one)} | {starts_cell} | {_counts(one)}; {_counts(bud)} | {cold} |"
        )
    for scenario, by_config in results.items():
        one = by_config.get(ONE) or {}
        loads = [sum(t["load_s"]) for t in one.get("warm") or []]
        if loads:
            turn = (one.get("warm_seconds") or {}).get("median")
            lines += [
                "",
                f"{scenario}, exactly one: loading the workers (`duration_s` of the turn's "
                f"`model.loaded` events, summed) took a median {_s(median(loads))} per warm "
                f"turn, of a median turn of {_s(turn)}.",
            ]
    lines += [
        "",
        "Per step, median seconds over the warm turns (exactly one → budget):",
        "",
        "| scenario | step | exactly one | budget | budget / one |",
        "|---|---|---:|---:|---:|",
    ]
    for scenario, by_config in results.items():
        for step in SCENARIOS[scenario]:
            vals = [
                ((by_config.get(c) or {}).get("warm_steps") or {}).get(step, {}).get("median")
                for c in (ONE, BUDGET)
            ]
            lines.append(
                f"| {scenario} | {step} | {_s(vals[0])} | {_s(vals[1])} "
                f"| {_ratio(vals[1], vals[0])} |"
            )
    return lines


def footprint_rows(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per model, its memory figures from the budget run that used it (the last one wins)."""
    rows: dict[str, dict[str, Any]] = {}
    for scenario, by_config in results.items():
        bud = by_config.get(BUDGET) or {}
        for m in (bud.get("api_models") or {}).get("models", []):
            if m["name"] not in SCENARIOS[scenario]:
                continue
            mem = m.get("memory") or {}
            rows[m["name"]] = {
                "model": m["name"],
                "type": m["type"],
                "scenario": scenario,
                "status": m["status"],
                "rss_bytes": m.get("rss_bytes"),
                **mem,
            }
    return list(rows.values())


def footprint_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | type | estimate (weights + KV + overhead) | measured (latest) | peak "
        "| planned | peak / estimate |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        est = r.get("estimate_bytes")
        parts = (
            f"{_mib(r.get('weights_bytes'))} + {_mib(r.get('kv_cache_bytes'))} + "
            f"{_mib(r.get('overhead_bytes'))}"
        )
        peak = r.get("peak_bytes") or r.get("measured_bytes")
        lines.append(
            f"| {r['model']} | {r['type']} | {_mib(est)} ({parts}) "
            f"| {_mib(r.get('measured_bytes'))} | {_mib(r.get('peak_bytes'))} "
            f"| {_mib(r.get('planned_bytes'))} | {_ratio(peak, est)} |"
        )
    return lines


def stats_lines(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = []
    for scenario, by_config in results.items():
        mem = (by_config.get(BUDGET) or {}).get("api_stats_memory") or {}
        if mem:
            out.append(
                f"- {scenario}, budget run, `/api/stats` memory at the end: budget "
                f"{_mib(mem.get('budget_bytes'))} ({mem.get('budget_source')}), planned "
                f"{_mib(mem.get('planned_bytes'))}, measured {_mib(mem.get('measured_bytes'))}, "
                f"free {_mib(mem.get('free_bytes'))}, workers' RSS "
                f"{_mib(mem.get('workers_rss_bytes'))}, router RSS "
                f"{_mib(mem.get('router_rss_bytes'))}"
            )
    return out


def _loads(values: list[float | None]) -> str:
    seen = [v for v in values if v is not None]
    return f"{min(seen):g}-{max(seen):g}" if seen else "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def render(meta: dict[str, Any], results: dict[str, dict[str, dict[str, Any]]]) -> str:
    fp = footprint_rows(results)
    lines = [
        "# Residency: exactly one model at a time vs a memory budget",
        "",
        f"`python -m bench.residency --turns {meta['turns']} --budget {meta['budget']}`, "
        f"{meta['date']}, {meta['machine']}, {meta['memory']}, Python {meta['python']}, "
        f"mlx {meta['mlx']}, mlx-lm {meta['mlx_lm']}; mlx-serve from {meta['source']}. "
        f"1-minute load average {meta['loadavg_1m_before']} before the run, "
        f"{_loads(meta['loadavg_1m_seen'])} at the start and end of each server; the run took "
        f"{meta['duration_s']:.0f} s.",
        "",
        "Models (all local, nothing downloaded): `chat` = tiny random-weight llama "
        "(2 layers, hidden 64, vocabulary 512; output is noise), `stt` = one-layer Whisper, "
        "`tts` = tiny Soprano (its 8-layer Vocos decoder is most of its 27 MB), `embed` = the "
        "real all-MiniLM-L6-v2. Every server is configured with all four; `idle_timeout: -1`; "
        f"chat answers with at most {meta['max_tokens']} tokens at temperature 0. One cold "
        f"turn per server (not counted), then {meta['turns']} warm turns.",
        "",
        "- **exactly one**: no `memory_budget`, `max_loaded_models` unset (= 1): every step "
        "of a turn needs another model, so it swaps.",
        f'- **budget**: `memory_budget: "{meta["budget"]}"`: all the models of a scenario '
        "stay resident after the cold turn.",
        "",
        *build_tables(results),
        "",
        "Worker starts / unloads / evictions are `model.loaded` / `model.unloaded` / "
        "`model.evicted` events from `GET /api/events`, counted after every warm turn.",
        "",
        "## Memory: estimate vs measured (budget runs, `GET /api/models`)",
        "",
        *footprint_table(fp),
        "",
        "Estimate = weights from the safetensors headers + KV cache for the planning context "
        "+ the per-type worker overhead (each server starts on a fresh data dir, so this is "
        "the built-in default; the overhead a load measures is saved for later estimates). "
        "Measured = the worker's process-tree RSS (latest sample), peak = the highest sample "
        "of this load. Planned = max(estimate, learned, peak): what the scheduler counts "
        "against the budget.",
        "",
        *stats_lines(results),
    ]
    problems = meta.get("problems") or []
    if problems:
        lines += ["", "## Problems seen", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def problems(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out: list[str] = []
    for scenario, by_config in results.items():
        for config, r in by_config.items():
            where = f"{scenario}/{config}"
            if r.get("error"):
                out.append(f"{where}: {r['error']}")
            stop = r.get("stop") or {}
            if stop.get("leaked"):
                out.append(f"{where}: worker pids alive after the server stopped: {stop['leaked']}")
            if stop.get("exit_code") not in (0, None):
                out.append(f"{where}: server exit code {stop['exit_code']} after SIGTERM")
            for line, n in list((r.get("trouble") or {}).items())[:8]:
                out.append(f"{where}: log ({n}x): `{line[:300]}`")
            for model, codes in ((r.get("worker_exits") or {}).get("exit_codes") or {}).items():
                # 0: clean exit; -15: died of the SIGTERM (mlx_lm.server has no handler)
                odd = {c: n for c, n in codes.items() if c not in ("0", "-15")}
                if odd:
                    out.append(f"{where}: {model} worker exit codes {codes} (of its stops)")
            if config == BUDGET and (r.get("per_warm_turn") or {}).get("model.loaded"):
                out.append(f"{where}: workers still started during warm turns under the budget")
    return out


def print_summary(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    from rich.table import Table

    table = Table(title="s per warm turn (median, min-max) and worker starts per warm turn")
    for col in ("scenario", "exactly one", "budget", "budget / one", "starts: one → budget"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for scenario, by_config in results.items():
        one, bud = by_config.get(ONE, {}), by_config.get(BUDGET, {})
        m = [(r.get("warm_seconds") or {}).get("median") for r in (one, bud)]
        starts = [(r.get("per_warm_turn") or {}).get("model.loaded") for r in (one, bud)]
        table.add_row(
            scenario,
            _range(one.get("warm_seconds") or {}),
            _range(bud.get("warm_seconds") or {}),
            _ratio(m[1], m[0]),
            " → ".join("—" if s is None else f"{s:g}" for s in starts),
        )
    console.print(table)
    fp = Table(title="memory per model, budget run (estimate vs measured)")
    for col in ("model", "estimate", "measured", "peak", "planned", "peak / estimate"):
        fp.add_column(col, justify="left" if col == "model" else "right")
    for r in footprint_rows(results):
        peak = r.get("peak_bytes") or r.get("measured_bytes")
        fp.add_row(
            r["model"],
            _mib(r.get("estimate_bytes")),
            _mib(r.get("measured_bytes")),
            _mib(r.get("peak_bytes")),
            _mib(r.get("planned_bytes")),
            _ratio(peak, r.get("estimate_bytes")),
        )
    console.print(fp)


# ------------------------------------------------------------------------------ main


async def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load_before = os.getloadavg()
    head = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "src")
    logs: Path = args.logs
    wanted = [s for s in args.scenarios.split(",") if s]
    for s in wanted:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    t0 = time.perf_counter()
    models = build_models(logs / "models")
    console.print(f"built the models in {time.perf_counter() - t0:.1f}s under {logs / 'models'}")
    wav = make_wav()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for scenario in wanted:
            results[scenario] = {}
            for config in (ONE, BUDGET):
                results[scenario][config] = await run_one(
                    http,
                    scenario,
                    config,
                    workdir=logs / f"{scenario}-{config}",
                    models=models,
                    budget=args.budget,
                    wav=wav,
                    args=args,
                )
    mem = psutil.virtual_memory()
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - started, 1),
        "turns": args.turns,
        "budget": args.budget,
        "max_tokens": args.max_tokens,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
        "memory": f"{mem.total / 2**30:.1f} GiB RAM",
        "python": platform.python_version(),
        "mlx": importlib.metadata.version("mlx"),
        "mlx_lm": importlib.metadata.version("mlx-lm"),
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_seen": [
            r.get(k)
            for by in results.values()
            for r in by.values()
            for k in ("loadavg_1m_start", "loadavg_1m_end")
        ],
        "source": f"the working tree at {head}"
        + (f" with {len(dirty.splitlines())} changed files under src/" if dirty else ""),
        "logs": str(logs),
        "models": models,
    }
    meta["problems"] = problems(results)
    console.print()
    print_summary(results)
    for p in meta["problems"]:
        console.print(f"[yellow]problem:[/] {p}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "residency.md").write_text(render(meta, results))
    raw = {"meta": meta, "results": results, "footprints": footprint_rows(results)}
    (args.out / "residency.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    console.print(
        f"\nwrote {args.out / 'residency.md'} and {args.out / 'residency.json'}; "
        f"server logs and data dirs in {logs}"
    )
    ok = all("error" not in r for by in results.values() for r in by.values())
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.residency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--turns", type=int, default=5, help="warm turns per server (default 5)")
    parser.add_argument(
        "--budget", default="90%", help='memory_budget of the budget runs (default "90%%")'
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="chat answer length")
    parser.add_argument("--scenarios", default="voice,rag", help="subset of voice,rag")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--logs",
        type=Path,
        default=None,
        help="where server configs, logs and data dirs go (default: /tmp/...)",
    )
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    args.logs = args.logs or Path(tempfile.mkdtemp(prefix="mlx-serve-residency-"))
    args.logs.mkdir(parents=True, exist_ok=True)
    return run_main(run(args))


if __name__ == "__main__":
    sys.exit(main())
