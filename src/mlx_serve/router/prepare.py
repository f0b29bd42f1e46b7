"""From a client's request to a worker: the model it names, the checks for its endpoint, the
model's defaults, and a traced lease on the worker.

Every dialect (OpenAI, Anthropic, Responses, Ollama) and the management API go through
these, so a request is checked, counted and refused the same way whichever shape it came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mlx_serve.config import ModelType, parse_duration
from mlx_serve.errors import ApiError
from mlx_serve.grammar import with_article
from mlx_serve.router.keys import SUPERVISOR
from mlx_serve.router.proxy import TRACED, Trace, load_wait
from mlx_serve.router.tool_checks import check_tool_fields
from mlx_serve.router.validation import (
    check_chat,
    check_completion,
    check_embeddings,
    check_images,
    check_rerank,
    check_speech,
    strip_fields,
)
from mlx_serve.supervisor import (
    Lease,
    QueueFull,
    ShuttingDown,
    Supervisor,
    WorkerStartError,
)

#: Which model types may answer which endpoint.
ENDPOINT_TYPES: dict[str, frozenset[ModelType]] = {
    "/v1/chat/completions": frozenset({ModelType.TEXT, ModelType.VISION}),
    "/v1/completions": frozenset({ModelType.TEXT}),
    "/v1/embeddings": frozenset({ModelType.EMBEDDING}),
    "/v1/audio/speech": frozenset({ModelType.TTS}),
    "/v1/audio/transcriptions": frozenset({ModelType.STT}),
    "/v1/audio/translations": frozenset({ModelType.STT}),
    "/v1/rerank": frozenset({ModelType.RERANK}),
}

#: Where a model of each type is served, for "wrong endpoint" errors.
TYPE_ENDPOINTS: dict[ModelType, str] = {
    ModelType.TEXT: "/v1/chat/completions or /v1/completions",
    ModelType.VISION: "/v1/chat/completions",
    ModelType.EMBEDDING: "/v1/embeddings",
    ModelType.TTS: "/v1/audio/speech",
    ModelType.STT: "/v1/audio/transcriptions",
    ModelType.RERANK: "/v1/rerank",
}

#: Retry-After (seconds) suggested when the queue is full or a model is unavailable.
RETRY_AFTER = "5"


def resolve_or_404(supervisor: Supervisor, requested: str, *, param: str | None = None) -> str:
    """The configured model ``requested`` names (or aliases); a 404 listing the models if none."""
    name = supervisor.resolve(requested)
    if name is None:
        available = ", ".join(sorted(supervisor.workers)) or "(none configured)"
        raise ApiError(
            404,
            f"model {requested!r} not found; available models: {available}",
            param=param,
            code="model_not_found",
        )
    return name


def resolve_model(supervisor: Supervisor, body: dict[str, Any], endpoint: str) -> str:
    """The configured model name the body's ``model`` field names, checked for this endpoint."""
    requested = body.get("model")
    if not isinstance(requested, str) or not requested.strip():
        raise ApiError(
            400, "'model' is required: the name of a configured model", param="model",
            code="missing_model",
        )  # fmt: skip
    name = resolve_or_404(supervisor, requested, param="model")
    model_type = supervisor.workers[name].model.type
    allowed = ENDPOINT_TYPES.get(endpoint)
    if allowed is not None and model_type not in allowed:
        raise ApiError(
            400,
            f"model {requested!r} is {with_article(model_type.value)} model; it is served at "
            f"{TYPE_ENDPOINTS[model_type]}, not {endpoint}",
            param="model",
            code="wrong_model_type",
            model=name,
        )
    return name


def pop_keep_alive(body: dict[str, Any]) -> float | None:
    """Remove ``keep_alive`` from the body (workers do not know it) and parse it (seconds)."""
    if "keep_alive" not in body:
        return None
    raw = body.pop("keep_alive")
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise ApiError(
            400, "'keep_alive' must be a duration like \"30m\" or seconds", param="keep_alive"
        )
    try:
        return parse_duration(raw)
    except (ValueError, TypeError) as exc:
        raise ApiError(
            400,
            f'invalid keep_alive {raw!r}: use a duration like "30m", "1h", seconds, '
            "-1 (never unload) or 0 (unload after this request)",
            param="keep_alive",
            code="invalid_keep_alive",
        ) from exc


def _check_context_length(context_length: int | None, body: dict[str, Any]) -> None:
    if context_length is None:
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > context_length:
            raise ApiError(
                400,
                f"'{key}' is {value}, more than the model's context length ({context_length})",
                param=key,
                code="context_length_exceeded",
            )


def lifecycle_error(exc: QueueFull | WorkerStartError | ShuttingDown) -> ApiError:
    """What a client is told when the supervisor cannot give it a worker."""
    if isinstance(exc, QueueFull):
        return ApiError(503, str(exc), code="queue_full", headers={"Retry-After": RETRY_AFTER})
    if isinstance(exc, ShuttingDown):
        return ApiError(503, "mlx-serve is shutting down", code="shutting_down")
    if exc.code == "insufficient_memory":  # retrying will not help: 507, no Retry-After
        return ApiError(507, str(exc), code=exc.code)
    if exc.http_status is not None:
        # The supervisor knows the status: 404 for a model whose files are not on disk
        # (model_not_downloaded / model_files_missing, as Ollama answers "try pulling it
        # first"; not a 503, which clients retry), the hub's own for a failed auto pull.
        return ApiError(exc.http_status, str(exc), code=exc.code or "model_unavailable")
    if exc.retry_after is not None:  # a crash loop backing off: when to try again
        retry = str(max(1, math.ceil(exc.retry_after)))
        return ApiError(503, str(exc), code=exc.code, headers={"Retry-After": retry})
    return ApiError(503, str(exc), code="model_unavailable", headers={"Retry-After": RETRY_AFTER})


@contextlib.asynccontextmanager
async def traced_lease(
    request: web.Request, name: str, keep_alive: float | None, trace: Trace
) -> AsyncIterator[Lease]:
    """Hold ``name``'s worker for one traced request, the OpenAI routes' and the dialects'
    alike: the wait split into load and queue, lifecycle failures as client errors, and one
    ``request`` event with the outcome when the block ends (so the outcome middleware skips
    the request)."""
    supervisor = request.app[SUPERVISOR]
    request[TRACED] = True
    asked_at = supervisor.clock.now()
    try:
        async with supervisor.lease(name, keep_alive=keep_alive) as lease:
            trace.admit(load_s=load_wait(lease, asked_at))
            yield lease
    except ApiError as exc:
        trace.fail(exc)
        raise
    except (QueueFull, WorkerStartError, ShuttingDown) as exc:
        error = lifecycle_error(exc)
        trace.fail(error)
        raise error from exc
    except asyncio.CancelledError:
        trace.status, trace.error = 499, "client closed the request"
        raise
    finally:
        supervisor.events.emit(trace.event(name))


#: Body checks per JSON endpoint.
JSON_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "/v1/chat/completions": check_chat,
    "/v1/completions": check_completion,
    "/v1/embeddings": check_embeddings,
    "/v1/audio/speech": check_speech,
    "/v1/rerank": check_rerank,
}


@dataclass(frozen=True)
class Prepared:
    """A checked request for one model: what every dialect hands to a worker."""

    name: str
    """The configured model."""
    requested: str
    """The name the client used (an alias or a ``:tag`` form): what it gets back."""
    keep_alive: float | None
    body: dict[str, Any]
    """The OpenAI body with the model's defaults merged in; ``model`` is ``requested``."""
    endpoint: str
    """The worker's endpoint (an OpenAI path)."""

    def payload(self, upstream_model: str) -> bytes:
        return json.dumps({**self.body, "model": upstream_model}).encode()


def prepare(
    supervisor: Supervisor,
    body: dict[str, Any],
    endpoint: str,
    *,
    clamp_max_tokens: bool = False,
) -> Prepared:
    """Validate an OpenAI-shaped ``body`` for ``endpoint``: the model, ``keep_alive``, the
    model's defaults, the endpoint's checks, images and the context length. Raises 4xx.

    ``clamp_max_tokens``: a ``max_tokens`` over the model's ``context_length`` is lowered to it
    instead of refused. For dialects whose clients always send a large one (Claude Code asks
    for 32000 on every request) and cannot be told otherwise.
    """
    name = resolve_model(supervisor, body, endpoint)
    try:
        keep_alive = pop_keep_alive(body)
        worker = supervisor.workers[name]
        body = strip_fields({**worker.model.defaults, **body})  # the client's own values win
        if worker.model.distributed is not None:
            # A sharded mlx_lm server hangs for good after a client leaves mid-stream on a
            # seeded request (its ranks fall out of step while /health still says ok):
            # dropped, as any sampler setting a model cannot honour (docs/scaling.md).
            body.pop("seed", None)
        JSON_CHECKS[endpoint](body)
        if endpoint == "/v1/chat/completions":
            check_tool_fields(body)
        if worker.model.type is ModelType.VISION and "messages" in body:
            allow_remote = supervisor.config.server.allow_remote_images
            check_images(body["messages"], allow_remote=allow_remote)
        limit = worker.model.context_length
        if clamp_max_tokens and limit is not None:
            for key in ("max_tokens", "max_completion_tokens"):
                if isinstance(body.get(key), int) and body[key] > limit:
                    body[key] = limit
        _check_context_length(limit, body)
    except ApiError as exc:
        exc.model = exc.model or name  # a request for this model: counted under it
        raise
    return Prepared(name, body["model"], keep_alive, body, endpoint)
