"""Text models: ``mlx_lm server`` in a guarded subprocess.

mlx_lm's ``/health`` says "ok" before the weights are loaded, so readiness is a one-token
completion: it only succeeds once the model has produced a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from mlx_serve.workers.base import (
    LaunchContext,
    ModelByRequestSpare,
    ProbeError,
    SpareContext,
    flags_from_args,
    guarded_argv,
    spare_argv,
)
from mlx_serve.workers.distributed import distributed_launch_spec
from mlx_serve.workers.process import LaunchSpec

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig


#: How often ``mlx_lm server`` looks for new requests while it generates (the guard's
#: ``--mlx-lm-admit-every``). Its own default is every 0.5 s: a request that arrives a few
#: milliseconds after a batch started waits for that whole batch (a tiny model's 128 tokens:
#: ~200-500 ms) instead of joining it. Measured on 8 simultaneous streams through the router
#: (2-core box, 8 bursts): 7-14 of 64 first tokens > 100 ms late and TTFT p95 193-243 ms with
#: mlx_lm's default, none late with 20 ms; then bursts of 8 straight to the worker (30 per
#: setting, interleaved): with 20 ms about 4 in 10 bursts still split (the late part waited
#: ~25 ms: TTFT p95 41 ms), with 2 ms the first tokens of a burst were at most 4 ms apart
#: (p95 23 ms, p50 15.5 vs 15.9 ms). A model whose decoding step takes longer than this looks
#: after every step. A look at an empty queue costs nothing measurable (sequential decode
#: x0.99-x1.02 of 20 ms, as noisy as two runs of the same setting). Not for sharded models:
#: there each look is an all-reduce across the ranks.
ADMIT_EVERY_S = 0.002
#: The guard's options for every text worker and spare (and the benchmark's cold-start floor).
GUARD_FLAGS = ("--mlx-lm-admit-every", str(ADMIT_EVERY_S))


class TextDriver(ModelByRequestSpare):
    """Starts ``python -m mlx_lm server`` for one model."""

    health_path = "/health"

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec:
        model = ctx.model
        if model.distributed is not None:
            return distributed_launch_spec(ctx, model.distributed)
        argv = guarded_argv(ctx, "mlx_lm", "server", without=("torch",), guard_flags=GUARD_FLAGS)
        if model.max_kv_cache_size is not None:
            # The number of distinct prompt KV caches mlx_lm keeps for prompt caching.
            argv += ["--prompt-cache-size", str(model.max_kv_cache_size)]
        argv += flags_from_args(model.args)
        return LaunchSpec(argv=argv, log_path=ctx.log_path)

    def upstream_model(self, model: ModelConfig) -> str:
        return model.path

    # -- spares: `mlx_lm server` started without --model loads the model a request names

    def spare_spec(self, ctx: SpareContext) -> LaunchSpec:
        argv = spare_argv(ctx, "mlx_lm", "server", without=("torch",), guard_flags=GUARD_FLAGS)
        return LaunchSpec(argv=argv, log_path=ctx.log_path)

    def can_adopt(self, model: ModelConfig) -> bool:
        return not model.args and model.max_kv_cache_size is None and model.distributed is None

    async def probe(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> dict[str, Any] | None:
        body = {"model": model.path, "prompt": "ok", "max_tokens": 1, "temperature": 0}
        try:
            async with session.post(
                base_url + "/v1/completions",
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return {}
                if resp.status in (502, 503):
                    return None
                raise ProbeError(
                    f"the model failed to answer a probe: HTTP {resp.status} {text[:500]}"
                )
        except (TimeoutError, aiohttp.ClientConnectionError):
            return None
