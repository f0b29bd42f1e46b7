"""Driver for mlx-serve's own worker servers (embedding, tts, stt).

They load before they listen, so a 200 from ``/health`` is readiness; its body carries the
import and load times for the load event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from mlx_serve.workers.base import LaunchContext, ProbeError, flags_from_args
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
        argv = [
            ctx.python, "-m", "mlx_serve.workers.guard",
            *(arg for mod in self.without for arg in ("--without", mod)),
            self.module,
            "--model", ctx.model.path, "--host", ctx.host, "--port", str(ctx.port),
            *flags_from_args(ctx.model.args),
        ]  # fmt: skip
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
