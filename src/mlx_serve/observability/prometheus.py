"""Prometheus metrics (``GET /metrics``), fed by supervisor events and sampled at scrape.

Each app gets its own registry, so several servers in one process (tests) never share or
collide on metric names. Counters and histograms move when events happen; gauges (loaded
models, queue depth, worker memory) are read from the supervisor at scrape time.

Every request outcome is counted, refusals included (``status="404"``, ``code=
"model_not_found"``), under ``model="unknown"`` when it named no configured model. Time to
first token runs from admission to a ready worker; the wait before it is split between
``queue_wait`` (behind other requests) and ``load_wait`` (for the model to start).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlx_serve.errors import outcome_code
from mlx_serve.observability.memory import system_memory, tree_rss_bytes
from mlx_serve.observability.request_stats import UNKNOWN
from mlx_serve.supervisor.events import (
    Event,
    ModelEvicted,
    ModelLoaded,
    ModelUnloaded,
    RequestFinished,
    Swap,
    WorkerCrashed,
)

if TYPE_CHECKING:
    from mlx_serve.supervisor import Supervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """The metric objects plus the event listener that moves them."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mlx_serve_requests",
            "Requests answered, refusals included, by model ('unknown': none configured), "
            "endpoint and HTTP status.",
            ["model", "endpoint", "status"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "mlx_serve_request_errors",
            "Requests that ended with an error status (>= 400), by error code.",
            ["model", "endpoint", "code"], registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "mlx_serve_time_to_first_token_seconds",
            "Time from admission to a ready worker to the first token/byte (queue and load "
            "waits excluded).",
            ["model"], buckets=_FAST, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "mlx_serve_request_duration_seconds", "Total request latency, waits included.",
            ["model", "endpoint"], buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "mlx_serve_queue_wait_seconds",
            "Time a request waited behind other requests for admission (loads excluded).",
            ["model"], buckets=(*_FAST, 20, 30, 60, 120), registry=r,
        )  # fmt: skip
        self.load_wait = Histogram(
            "mlx_serve_load_wait_seconds",
            "Time a request waited for its model to start (cold start, swap); only requests "
            "that waited for one.",
            ["model"], buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.load_duration = Histogram(
            "mlx_serve_load_duration_seconds", "Worker start to model ready.",
            ["model"], buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.swap_duration = Histogram(
            "mlx_serve_swap_duration_seconds", "Swap decided to the new model ready.",
            buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.swaps = Counter("mlx_serve_swaps", "Swaps (a model evicted for another).", registry=r)
        self.loads = Counter("mlx_serve_loads", "Models loaded.", ["model"], registry=r)
        self.unloads = Counter(
            "mlx_serve_unloads", "Models unloaded, by reason.", ["model", "reason"], registry=r
        )
        self.crashes = Counter(
            "mlx_serve_crashes", "Workers that died on their own.", ["model"], registry=r
        )
        self.evictions = Counter(
            "mlx_serve_evictions", "Models unloaded to make room for another, by reason.",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "mlx_serve_completion_tokens", "Completion tokens generated.", ["model"], registry=r
        )
        r.register(_Gauges(supervisor))
        self._swap_started: dict[str, float] = {}  # target model -> swap start (wall)

    def __call__(self, event: Event) -> None:
        model = event.model or ""
        match event:
            case RequestFinished():
                self._request(event.model or UNKNOWN, event)
            case ModelLoaded(duration_s=duration):
                self.loads.labels(model).inc()
                self.load_duration.labels(model).observe(duration)
                started = self._swap_started.pop(model, None)
                if started is not None:
                    self.swap_duration.observe(max(0.0, event.ts - started))
            case ModelUnloaded(reason=reason):
                self.unloads.labels(model, reason).inc()
            case Swap(to=to):
                self.swaps.inc()
                self._swap_started[to or ""] = event.ts
            case ModelEvicted(reason=reason):
                self.evictions.labels(model, reason).inc()
            case WorkerCrashed():
                self.crashes.labels(model).inc()

    def _request(self, model: str, r: RequestFinished) -> None:
        self.requests.labels(model, r.endpoint, str(r.status)).inc()
        if r.status >= 400:
            self.errors.labels(model, r.endpoint, r.code or outcome_code(r.status)).inc()
            return
        if r.ttft_s is not None:
            self.ttft.labels(model).observe(r.ttft_s)
        if r.queued_s is not None:
            self.queue_wait.labels(model).observe(r.queued_s)
        if r.load_s:
            self.load_wait.labels(model).observe(r.load_s)
        if r.latency_s is not None:
            self.latency.labels(model, r.endpoint).observe(r.latency_s)
        if r.completion_tokens is not None:
            self.tokens.labels(model).inc(r.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges(Collector):
    """Values read at scrape time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sup = self._supervisor
        loaded = GaugeMetricFamily("mlx_serve_loaded_models", "Models with a worker process.")
        loaded.add_metric([], len(sup.loaded()))
        yield loaded
        queue = GaugeMetricFamily("mlx_serve_queue_depth", "Requests waiting for a model.")
        queue.add_metric([], sup.scheduler.waiting())
        yield queue
        inflight = GaugeMetricFamily(
            "mlx_serve_inflight_requests", "Admitted, unfinished.", labels=["model"]
        )
        rss = GaugeMetricFamily(
            "mlx_serve_worker_rss_bytes",
            "Resident memory of a worker's process tree.",
            labels=["model"],
        )
        for view in sup.views():
            inflight.add_metric([view.name], view.inflight)
            if view.resident:
                value = tree_rss_bytes(view.pid)
                if value is not None:
                    rss.add_metric([view.name], value)
        yield inflight
        yield rss
        yield from _memory_gauges(sup)
        mem = system_memory()
        available = GaugeMetricFamily(
            "mlx_serve_system_available_memory_bytes", "Available memory."
        )
        available.add_metric([], mem.available_bytes)
        yield available


def _memory_gauges(sup: Supervisor) -> Iterator[GaugeMetricFamily]:
    """The budget and each model's footprint as the scheduler plans with it."""
    report = sup.memory_report()
    for key, name, doc in (
        ("budget_bytes", "mlx_serve_memory_budget_bytes", "The memory budget (if one is set)."),
        ("planned_bytes", "mlx_serve_memory_planned_bytes", "Planned bytes of loaded models."),
        ("free_bytes", "mlx_serve_memory_free_bytes", "Budget minus planned bytes."),
    ):
        value = report.get(key)
        if isinstance(value, int):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
    families = {
        "estimate": GaugeMetricFamily(
            "mlx_serve_model_memory_estimate_bytes",
            "A model's footprint estimated from its files (weights + KV cache + overhead).",
            labels=["model"],
        ),
        "measured": GaugeMetricFamily(
            "mlx_serve_model_memory_measured_bytes",
            "A loaded model's latest measured footprint.",
            labels=["model"],
        ),
        "planned": GaugeMetricFamily(
            "mlx_serve_model_memory_planned_bytes",
            "The footprint the scheduler plans with: max(estimate, measured before).",
            labels=["model"],
        ),
    }
    for view in sup.views():
        footprint = view.footprint
        if footprint.estimate is not None:
            families["estimate"].add_metric([view.name], footprint.estimate.total_bytes)
        if footprint.measured_bytes is not None:
            families["measured"].add_metric([view.name], footprint.measured_bytes)
        families["planned"].add_metric([view.name], footprint.planned_bytes)
    yield from families.values()
