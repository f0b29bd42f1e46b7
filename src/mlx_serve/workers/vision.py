"""Vision models: ``mlx_vlm.server`` in a guarded subprocess.

``mlx_vlm.server --model DIR`` loads the model before it listens, but it is also a
multi-model server: every request's ``model`` field goes through its model cache, and a
value other than the preloaded one *unloads* the model and loads (or downloads) that one.
So the router must always forward :meth:`VisionDriver.upstream_model` -- exactly the
string passed as ``--model`` -- and readiness is a real generation: a one-token, text-only
chat completion, streamed because mlx_vlm's non-streamed path ends every request with a
full ``gc.collect()`` that costs ~0.2 s in a process that has imported torch.

Behaviours of mlx_vlm 0.7 the router has to know about (checked by
``tests/integration/test_vision_embedding_workers.py``):

- images: ``{"type": "image_url", "image_url": {"url": ...}}`` parts (and Responses-style
  ``{"type": "input_image", "image_url": "..."}``), any number of them. Only URLs starting
  with ``data:image/`` (case-sensitive) are decoded as base64; **any other string is
  fetched or opened**: ``http(s)://`` with ``requests.get`` (10 s timeout), anything else
  as a *local file path*. Undecodable images, other data URLs (``data:text/plain``,
  ``data:IMAGE/PNG``) and unreachable URLs all give HTTP 500
  ``{"detail": "An unexpected error occurred: Failed to load image from ..."}``, at once,
  before any stream starts. ``video_url`` / ``input_video`` and ``input_audio`` parts are
  fetched the same way (OpenCV and ``requests``).
- ``stream: true`` is OpenAI SSE ending with ``data: [DONE]``; an error after the stream
  started is sent as ``data: {"error": "<message>"}`` and the stream ends without
  ``[DONE]``.
- ``adapter_path`` in a request unloads the model and loads it again with that LoRA
  adapter (or fails with a 400, leaving it to be reloaded by the next request).
"""

from __future__ import annotations

from pathlib import Path
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
from mlx_serve.workers.process import LaunchSpec

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig


class VisionDriver(ModelByRequestSpare):
    """Starts ``python -m mlx_vlm.server`` for one model."""

    health_path = "/health"

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec:
        model = ctx.model
        argv = guarded_argv(ctx, "mlx_vlm.server", without=("torch",))
        if model.max_kv_cache_size is not None:
            # mlx_vlm's KV budget in tokens. Unlike a rotating cache it does not evict:
            # a request needing more (prompt + max_tokens) is refused with a 400.
            argv += ["--max-kv-size", str(model.max_kv_cache_size)]
        argv += flags_from_args(model.args)
        env: dict[str, str] = {}
        if Path(model.path).is_dir():
            # A local model must never reach the hub: mlx_vlm's processors look for
            # optional files there when they are missing from the directory.
            env["HF_HUB_OFFLINE"] = "1"
        return LaunchSpec(argv=argv, log_path=ctx.log_path, env=env)

    def upstream_model(self, model: ModelConfig) -> str:
        # mlx_vlm keys its model cache on this exact string; anything else reloads.
        return model.path

    # -- spares: mlx_vlm.server without --model loads the model a request names. The spare
    # runs offline (see launch_spec), so only local models may use it.

    def spare_spec(self, ctx: SpareContext) -> LaunchSpec:
        argv = spare_argv(ctx, "mlx_vlm.server", without=("torch",))
        return LaunchSpec(argv=argv, log_path=ctx.log_path, env={"HF_HUB_OFFLINE": "1"})

    def can_adopt(self, model: ModelConfig) -> bool:
        return not model.args and model.max_kv_cache_size is None and Path(model.path).is_dir()

    async def probe(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> dict[str, Any] | None:
        body = {
            "model": model.path,
            "messages": [{"role": "user", "content": "ok"}],
            "max_tokens": 1,
            "temperature": 0,
            "stream": True,
        }
        try:
            async with session.post(
                base_url + "/v1/chat/completions",
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                # A one-token stream: a few hundred bytes, read to its end.
                text = await resp.text(errors="replace")
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            return None  # not up yet, or going down (the supervisor watches for the exit)
        if resp.status in (502, 503):
            return None
        if resp.status != 200:
            raise ProbeError(f"the model failed to answer a probe: HTTP {resp.status} {text[:500]}")
        if 'data: {"error"' in text or "data: [DONE]" not in text:
            raise ProbeError(f"the model failed to generate a token: {text[-500:]}")
        return {}
