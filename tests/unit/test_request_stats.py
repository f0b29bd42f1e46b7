"""Request timings and outcomes without a server: the Trace's split of a request's time, the
per-model stats, the Prometheus series, and the server log's levels."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import ModelType, parse_config_text
from mlx_serve.errors import ApiError, outcome_code
from mlx_serve.observability.prometheus import Metrics
from mlx_serve.observability.request_stats import UNKNOWN, RequestStats
from mlx_serve.router.proxy import Trace
from mlx_serve.server import AUTH_LOG_INTERVAL, EventLogger
from mlx_serve.supervisor import Supervisor
from mlx_serve.supervisor.events import Event, make_event
from mlx_serve.testing import FakeLauncher, InstantDriver

_seq = itertools.count(1)


def event(kind: str, model: str | None = None, **data: Any) -> Event:
    return replace(make_event(kind, model, **data), seq=next(_seq), ts=1_700_000_000.0)


class Clock:
    """``time.perf_counter`` for the Trace, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(time, "perf_counter", fake)
    yield fake


# ------------------------------------------------------------------------------- the Trace


def test_a_cold_start_is_load_time_not_ttft_nor_a_low_rate(clock: Clock) -> None:
    trace = Trace(model="m", endpoint="/v1/chat/completions", stream=True, arrived=clock.now)
    clock.now += 2.9  # the model loads...
    trace.admit(load_s=2.85)  # ...2.85 s of the 2.9 s wait were its start
    clock.now += 0.05
    trace.ttft_s = clock.now - trace.started  # what the relay does at the first event
    trace.chunks = 101
    clock.now += 1.0  # 100 more tokens in a second
    trace.status = 200
    summary = trace.summary()
    assert summary["load_s"] == 2.85 and summary["queued_s"] == pytest.approx(0.05)
    assert summary["ttft_s"] == 0.05
    assert summary["tokens_per_s"] == 100.0
    assert summary["latency_s"] == pytest.approx(3.95), "the whole time, waits included"
    assert summary["code"] is None


def test_a_warm_request_waits_behind_others_only(clock: Clock) -> None:
    trace = Trace(model="m", endpoint="/v1/completions", stream=False, arrived=clock.now)
    clock.now += 0.3
    trace.admit(load_s=0.0)
    clock.now += 0.5
    trace.ttft_s = clock.now - trace.started  # not streamed: the whole answer at once
    trace.completion_tokens = 50
    trace.status = 200
    summary = trace.summary()
    assert (summary["queued_s"], summary["load_s"], summary["ttft_s"]) == (0.3, 0.0, 0.5)
    assert summary["tokens_per_s"] == 100.0, "over the worker's time, not the wait"


def test_load_time_is_never_more_than_the_wait(clock: Clock) -> None:
    """The worker's readiness is on the supervisor's clock: a late mark is clamped."""
    trace = Trace(model="m", endpoint="/v1/completions", stream=False, arrived=clock.now)
    clock.now += 1.0
    trace.admit(load_s=1.2)
    assert (trace.load_s, trace.queued_s) == (1.0, 0.0)


def test_a_failed_request_carries_its_code(clock: Clock) -> None:
    trace = Trace(model="m", endpoint="/v1/chat/completions", stream=True, arrived=clock.now)
    trace.fail(ApiError(503, "no", code="model_unavailable"))
    assert trace.summary()["code"] == "model_unavailable"
    relayed = Trace(model="m", endpoint="/v1/chat/completions", stream=True, arrived=clock.now)
    relayed.status, relayed.error = 502, "the worker failed mid-stream"  # set by the relay
    assert relayed.summary()["code"] == "worker_died"
    gone = Trace(model="m", endpoint="/v1/chat/completions", stream=True, arrived=clock.now)
    gone.status = 499
    assert gone.summary()["code"] == "client_closed"


def test_outcome_codes() -> None:
    assert outcome_code(200) == "ok"
    assert outcome_code(404, "model_not_found") == "model_not_found"
    assert outcome_code(501) == "not_implemented"
    assert outcome_code(422) == "unprocessable_entity"
    assert outcome_code(599) == "http_599"


# ------------------------------------------------------------------------------ the stats


def served(
    *, ttft: float, tps: float, load: float = 0.0, queued: float = 0.0, status: int = 200
) -> dict[str, Any]:
    return {
        "endpoint": "/v1/chat/completions", "stream": True, "status": status, "code": None,
        "queued_s": queued, "load_s": load, "ttft_s": ttft, "latency_s": queued + load + 1,
        "completion_tokens": 50, "tokens_per_s": tps,
    }  # fmt: skip


def rejected(status: int, code: str) -> dict[str, Any]:
    return {"endpoint": "/v1/chat/completions", "stream": False, "status": status,
            "code": code, "latency_s": 0.001, "error": "no"}  # fmt: skip


def test_stats_keep_waits_apart_and_count_every_outcome() -> None:
    stats = RequestStats()
    stats(event("request", "m", **served(ttft=0.04, tps=90.0, load=2.9)))
    stats(event("request", "m", **served(ttft=0.05, tps=91.0, queued=0.2)))
    stats(event("request", "m", **rejected(400, "wrong_model_type")))
    stats(event("request", None, **rejected(404, "model_not_found")))
    stats(event("request", None, **rejected(401, "invalid_api_key")))
    stats(event("model.loaded", "m", duration_s=2.9, pid=1, type="text"))  # not a request
    m = stats.summary("m")
    assert (m["count"], m["errors"], m["cold_starts"]) == (3, 1, 1)
    assert m["statuses"] == {"200": 2, "400": 1}
    assert m["error_codes"] == {"wrong_model_type": 1}
    assert m["ttft_p95_s"] == 0.05 and m["tokens_per_s_p50"] == 91.0
    assert m["load_p50_s"] == 2.9, "only requests that waited for a load"
    assert m["queued_p95_s"] == 0.2
    assert stats.summary("never-used")["count"] == 0
    outcomes = stats.outcomes()
    assert (outcomes["count"], outcomes["errors"]) == (5, 3)
    assert outcomes["statuses"] == {"200": 2, "400": 1, "401": 1, "404": 1}
    assert outcomes[UNKNOWN] == {
        "count": 2,
        "errors": 2,
        "statuses": {"401": 1, "404": 1},
        "error_codes": {"model_not_found": 1, "invalid_api_key": 1},
    }


# ---------------------------------------------------------------------------- /metrics


@pytest.fixture
def metrics(tmp_path: Path) -> Metrics:
    launcher = FakeLauncher()
    supervisor = Supervisor(
        parse_config_text("models:\n  m: {path: org/m}\n"),
        data_dir=tmp_path,
        launcher=launcher,
        drivers={ModelType.TEXT: InstantDriver(launcher)},
    )
    return Metrics(supervisor)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_metrics_count_refusals_and_split_the_waits(metrics: Metrics) -> None:
    metrics(event("request", "m", **served(ttft=0.04, tps=90.0, load=2.9)))
    metrics(event("request", "m", **served(ttft=0.06, tps=90.0, queued=0.5)))
    metrics(event("request", None, **rejected(404, "model_not_found")))
    metrics(event("request", "m", **rejected(400, "wrong_model_type")))
    chat = "/v1/chat/completions"
    assert sample(metrics, "mlx_serve_requests_total", model="m", endpoint=chat, status="200") == 2
    assert (
        sample(metrics, "mlx_serve_requests_total", model=UNKNOWN, endpoint=chat, status="404") == 1
    )
    errors = "mlx_serve_request_errors_total"
    assert sample(metrics, errors, model=UNKNOWN, endpoint=chat, code="model_not_found") == 1
    assert sample(metrics, errors, model="m", endpoint=chat, code="wrong_model_type") == 1
    # TTFT after admission: the 2.9 s load is in its own histogram, once.
    assert sample(metrics, "mlx_serve_time_to_first_token_seconds_sum", model="m") == 0.1
    assert sample(metrics, "mlx_serve_time_to_first_token_seconds_bucket", model="m", le="0.1")
    assert sample(metrics, "mlx_serve_load_wait_seconds_count", model="m") == 1
    assert sample(metrics, "mlx_serve_load_wait_seconds_sum", model="m") == 2.9
    assert sample(metrics, "mlx_serve_queue_wait_seconds_sum", model="m") == 0.5


# ----------------------------------------------------------------------- the server log


def line(logger: EventLogger, kind: str, model: str | None = None, /, **data: Any) -> Any:
    return logger.describe(event(kind, model, **data))


def test_log_levels_and_no_noise() -> None:
    logger = EventLogger()
    assert line(logger, "worker.crashed", "m", exit_code=-9, log_tail="x\ny") == (
        logging.ERROR,
        "worker.crashed m exit_code=-9 (killed by SIGKILL)",
    )
    failed = {"reason": "exited with code 7 while loading", "log_tail": "...", "failures": 1}
    starting_failed = {"old_status": "loading", "status": "failed"}
    level, text = line(
        logger, "worker.state", "m", old="starting", new="failed", **starting_failed, **failed
    )
    assert level == logging.ERROR
    assert text == "model.failed m reason=exited with code 7 while loading failures=1"
    # The FAILED state after a crash repeats the crash line: not logged again.
    ready_failed = {"old_status": "loaded", "status": "failed", "reason": "x"}
    assert line(logger, "worker.state", "m", old="ready", new="failed", **ready_failed) is None
    starting = {"old_status": "unloaded", "status": "loading"}
    assert line(logger, "worker.state", "m", old="stopped", new="starting", **starting) is None
    reload_ok = {
        "status": "ok", "error": None, "trigger": "file", "added": ["c"], "removed": [],
        "changed": ["a"], "restarted": [], "updated": ["a"], "unchanged": ["b"],
        "server_changed": [], "restart_needed": [],
    }  # fmt: skip
    assert line(logger, "config.reload", **reload_ok) == (
        logging.INFO,
        "config.reload (file) added=c updated=a",
    )
    nothing = {**reload_ok, "added": [], "changed": [], "updated": []}
    assert line(logger, "config.reload", **nothing) == (
        logging.INFO,
        "config.reload (file): no changes",
    )
    level, text = line(logger, "config.reload", status="invalid", trigger="sighup",
                       error="/x/models.yaml:3: invalid YAML: unclosed quote")  # fmt: skip
    assert level == logging.WARNING
    assert text.startswith("config.reload (sighup) rejected, the running config stays in force")
    assert text.endswith("/x/models.yaml:3: invalid YAML: unclosed quote")
    assert line(logger, "config.reload", **{**reload_ok, "restart_needed": ["port"]})[0] == (
        logging.WARNING
    )
    assert line(logger, "memory.low", available_bytes=2**30, total_bytes=16 * 2**30) == (
        logging.WARNING,
        "memory.low available=1.0 GiB total=16.0 GiB",
    )
    assert line(logger, "model.loaded", "m", duration_s=1.5, pid=7, type="text", spare=None) == (
        logging.INFO,
        "model.loaded m duration_s=1.5 pid=7 type=text",
    )
    assert line(logger, "request", "m", endpoint="/v1/completions", status=200) is None


def test_auth_failures_are_warned_once_a_minute_per_client() -> None:
    now = [0.0]
    logger = EventLogger(clock=lambda: now[0])
    first = line(logger, "auth.failed", path="/v1/models", remote="10.0.0.2", reason="wrong key")
    assert first == (
        logging.WARNING,
        "auth.failed path=/v1/models remote=10.0.0.2 reason=wrong key",
    )
    for _ in range(5):
        now[0] += 1
        assert line(logger, "auth.failed", path="/x", remote="10.0.0.2", reason="wrong key") is None
    other = line(logger, "auth.failed", path="/x", remote="10.0.0.3", reason="missing")
    assert other is not None, "another client is logged at once"
    now[0] += AUTH_LOG_INTERVAL
    level, text = line(logger, "auth.failed", path="/x", remote="10.0.0.2", reason="wrong key")
    assert level == logging.WARNING and text.endswith("(5 more from this client not logged)")
