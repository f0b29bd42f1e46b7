"""Typed application state shared by the router's handlers."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from mlx_serve.supervisor import Supervisor

SUPERVISOR = web.AppKey("supervisor", Supervisor)
HTTP = web.AppKey("http", aiohttp.ClientSession)  # pooled connections to the workers
