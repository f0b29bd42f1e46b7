"""Driver for mlx-serve's own worker servers (embedding, tts, stt).

They load before they listen, so a 200 from ``/health`` is readiness; its body carries the
import and load times for the load event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from mlx_serve.workers.base import LaunchContext, ProbeError, flags_from_args, guarded_argv
from mlx_serve.workers.process import LaunchSpec

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig


class ModelServerDriver:
    """Starts ``python -m <module> --model PATH --host H --port P`` under the guard."""

    health_path = "/health"

    def __init__(self, module: str, *, without: tuple[str, ...] = ()) -> None:
        self.module = module
        self.without = without  # modules to hide from the worker (see workers/guard.py)

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec:
        argv = guarded_argv(ctx, self.module, without=self.without)
        argv += flags_from_args(ctx.model.args)
        return LaunchSpec(argv=argv, log_path=ctx.log_path)

    def upstream_model(self, model: ModelConfig) -> str:
        return model.path

    async def probe(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> dict[str, Any] | None:
        try:
            async with session.get(
                base_url + self.health_path, timeout=aiohttp.ClientTimeout(total=min(timeout, 5))
            ) as resp:
                if resp.status != 200:
                    raise ProbeError(f"health check answered HTTP {resp.status}")
                data = await resp.json()
        except (TimeoutError, aiohttp.ClientConnectionError):
            return None
        keys = ("import_s", "load_s", "peak_rss_bytes", "mlx_active_bytes", "mlx_peak_bytes")
        return {k: data[k] for k in keys if k in data} if isinstance(data, dict) else {}
