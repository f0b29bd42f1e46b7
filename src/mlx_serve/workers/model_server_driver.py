"""Driver for mlx-serve's own worker servers (embedding, tts, stt).

They load before they listen, so a 200 from ``/health`` is readiness; its body carries the
import and load times for the load event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from mlx_serve.workers.base import (
    LaunchContext,
    ProbeError,
    SpareContext,
    flags_from_args,
    guarded_argv,
    http_ok,
    spare_argv,
)
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

    # -- spares: started without --model, they wait for POST /load (see model_server.py)

    def spare_spec(self, ctx: SpareContext) -> LaunchSpec:
        return LaunchSpec(
            argv=spare_argv(ctx, self.module, without=self.without), log_path=ctx.log_path
        )

    def can_adopt(self, model: ModelConfig) -> bool:
        return not model.args

    async def spare_ready(
        self, session: aiohttp.ClientSession, base_url: str, timeout: float
    ) -> bool:
        return await http_ok(session, base_url + "/spare", timeout)

    async def adopt(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> None:
        try:
            async with session.post(
                base_url + "/load",
                json={"model": model.path},
                timeout=aiohttp.ClientTimeout(total=min(timeout, 10)),
            ) as resp:
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ProbeError(f"the spare did not take the model: {exc!r}") from exc
        if resp.status != 202:
            raise ProbeError(f"the spare refused the model: HTTP {resp.status} {text[:300]}")

    async def probe(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> dict[str, Any] | None:
        try:
            async with session.get(
                base_url + self.health_path, timeout=aiohttp.ClientTimeout(total=min(timeout, 5))
            ) as resp:
                if resp.status == 503:
                    return None  # a spare still loading the model it was given
                if resp.status != 200:
                    raise ProbeError(f"health check answered HTTP {resp.status}")
                data = await resp.json()
        except (TimeoutError, aiohttp.ClientConnectionError):
            return None
        keys = ("import_s", "load_s", "peak_rss_bytes", "mlx_active_bytes", "mlx_peak_bytes")
        return {k: data[k] for k in keys if k in data} if isinstance(data, dict) else {}
