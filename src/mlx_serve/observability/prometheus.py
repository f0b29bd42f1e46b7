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
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlx_serve.errors import outcome_code
from mlx_serve.observability.memory import system_memory, tree_rss_bytes
from mlx_serve.observability.request_stats import UNKNOWN
from mlx_serve.supervisor.events import Event

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
        data, model = event.data, event.model or ""
        if event.kind == "request":
            self._request(event.model or UNKNOWN, data)
        elif event.kind == "model.loaded":
            self.loads.labels(model).inc()
            if isinstance(data.get("duration_s"), int | float):
                self.load_duration.labels(model).observe(data["duration_s"])
            started = self._swap_started.pop(model, None)
            if started is not None:
                self.swap_duration.observe(max(0.0, event.ts - started))
        elif event.kind == "model.unloaded":
            self.unloads.labels(model, str(data.get("reason", ""))).inc()
        elif event.kind == "swap":
            self.swaps.inc()
            self._swap_started[str(data.get("to", ""))] = event.ts
        elif event.kind == "model.evicted":
            self.evictions.labels(model, str(data.get("reason", ""))).inc()
        elif event.kind == "worker.crashed":
            self.crashes.labels(model).inc()

    def _request(self, model: str, data: dict[str, Any]) -> None:
        endpoint = str(data.get("endpoint", ""))
        status = data.get("status", 0)
        self.requests.labels(model, endpoint, str(status)).inc()
        if not isinstance(status, int) or status >= 400:
            code = data.get("code")
            if not isinstance(code, str) or not code:
                code = outcome_code(status if isinstance(status, int) else 0)
            self.errors.labels(model, endpoint, code).inc()
            return
        for key, metric in (("ttft_s", self.ttft), ("queued_s", self.queue_wait)):
            if isinstance(data.get(key), int | float):
                metric.labels(model).observe(data[key])
        load = data.get("load_s")
        if isinstance(load, int | float) and load > 0:
            self.load_wait.labels(model).observe(load)
        if isinstance(data.get("latency_s"), int | float):
            self.latency.labels(model, endpoint).observe(data["latency_s"])
        if isinstance(data.get("completion_tokens"), int):
            self.tokens.labels(model).inc(data["completion_tokens"])

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
