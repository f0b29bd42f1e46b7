"""Typed application state shared by the router's handlers."""

from __future__ import annotations

from aiohttp import web

from mlx_serve.observability.prometheus import Metrics
from mlx_serve.observability.request_stats import RequestStats
from mlx_serve.router.upstream import Preopened
from mlx_serve.supervisor import Supervisor

SUPERVISOR = web.AppKey("supervisor", Supervisor)
STATS = web.AppKey("stats", RequestStats)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAMS = web.AppKey("upstreams", Preopened)
