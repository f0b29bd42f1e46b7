"""The contract between the lifecycle code and one kind of worker.

A driver knows how to spawn a model type's server (:meth:`WorkerDriver.launch_spec`) and how
to tell that the model really answers (:meth:`WorkerDriver.probe`). It owns no process and no
state: :class:`mlx_serve.supervisor.worker.ManagedWorker` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import aiohttp

    from mlx_serve.config import ModelConfig
    from mlx_serve.workers.process import LaunchSpec


@dataclass(frozen=True)
class LaunchContext:
    """What a driver needs to build a worker's command line."""

    name: str
    model: ModelConfig
    host: str
    port: int
    log_path: Path
    python: str  # the interpreter workers run under (the supervisor's own)


@dataclass(frozen=True)
class SpareContext:
    """What a driver needs to start a spare: a worker with its imports done and no model."""

    host: str
    port: int
    log_path: Path
    python: str


class LaunchRefused(OSError):
    """The driver refuses to start this model as configured (before any process runs).

    ``code`` names the problem for clients and the event log; the start fails without a
    crash-loop backoff, since retrying cannot help until models.yaml changes.
    """

    code = "model_config_invalid"


class ProbeError(Exception):
    """The worker answered, and the answer says the model will never be ready."""


class WorkerDriver(Protocol):
    """How one model type is started and proven ready.

    Before a start, the supervisor checks that the model's files are on disk (a local
    directory with ``config.json`` and weights, or a hub repo in the cache) for the drivers
    it ships; a driver handed to it in their place (a test's fake) is not checked unless it
    has the optional attribute ``needs_model_files = True``.
    """

    #: Request path that answers as soon as the HTTP server is up (liveness, not readiness).
    health_path: str

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec: ...

    def upstream_model(self, model: ModelConfig) -> str:
        """The ``model`` value to forward: the worker's own path, so it never loads another."""

    async def probe(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> dict[str, Any] | None:
        """A dict once the model has answered a real request, else None ("not yet").

        The dict holds details for the load event (e.g. import and load times the worker
        measured); it may be empty. :class:`ProbeError` means the worker is up but the model
        failed and retrying will not help.
        """


class SpareDriver(Protocol):
    """A driver whose worker can be started without a model and given one later.

    Optional: :func:`spare_support` tells whether a driver has it. A spare is started with no
    per-model flags, so :meth:`can_adopt` must say no for a model whose worker would be
    started differently (flags from ``args``, a KV cache setting): that one starts cold.
    """

    def spare_spec(self, ctx: SpareContext) -> LaunchSpec: ...

    def can_adopt(self, model: ModelConfig) -> bool: ...

    async def spare_ready(
        self, session: aiohttp.ClientSession, base_url: str, timeout: float
    ) -> bool:
        """Has the spare finished its imports and does it listen?"""

    async def adopt(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> None:
        """Tell a ready spare which model it serves; readiness is then probed as for a cold
        start. Raises :class:`ProbeError` if the spare refuses."""


class ModelByRequestSpare:
    """Spare support for servers that load whatever model a request names (``mlx_lm server``
    and ``mlx_vlm.server`` without ``--model``): ready once they answer ``/health``, and
    nothing to send on adoption: the readiness probe names the model, which loads it."""

    async def spare_ready(
        self, session: aiohttp.ClientSession, base_url: str, timeout: float
    ) -> bool:
        return await http_ok(session, base_url + "/health", timeout)

    async def adopt(
        self, session: aiohttp.ClientSession, base_url: str, model: ModelConfig, timeout: float
    ) -> None:
        return None


def spare_support(driver: object) -> SpareDriver | None:
    """``driver`` as a :class:`SpareDriver`, or None if it cannot run spares."""
    needed = ("spare_spec", "can_adopt", "spare_ready", "adopt")
    if all(callable(getattr(driver, name, None)) for name in needed):
        return driver  # type: ignore[return-value]
    return None


def spare_argv(
    ctx: SpareContext,
    *module: str,
    without: tuple[str, ...] = (),
    guard_flags: tuple[str, ...] = (),
) -> list[str]:
    """Like :func:`guarded_argv`, without ``--model``: the spare learns it later."""
    hide = [arg for mod in without for arg in ("--without", mod)]
    return [
        ctx.python, "-m", "mlx_serve.workers.guard", *hide, *guard_flags, *module,
        "--host", ctx.host, "--port", str(ctx.port),
    ]  # fmt: skip


async def http_ok(session: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """Does ``GET url`` answer 200 within ``timeout``? (False while the port is closed.)"""
    import aiohttp  # noqa: PLC0415 - typing-only at module level

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=min(timeout, 5))) as r:
            await r.read()
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


def guarded_argv(
    ctx: LaunchContext,
    *module: str,
    without: tuple[str, ...] = (),
    guard_flags: tuple[str, ...] = (),
) -> list[str]:
    """``python -m mlx_serve.workers.guard [--without M]... MODULE... --model --host --port``:
    how every worker is started, so it dies with its supervisor (see workers/guard.py).
    ``guard_flags`` are the guard's own options for this kind of worker."""
    hide = [arg for mod in without for arg in ("--without", mod)]
    return [
        ctx.python, "-m", "mlx_serve.workers.guard", *hide, *guard_flags, *module,
        "--model", ctx.model.path, "--host", ctx.host, "--port", str(ctx.port),
    ]  # fmt: skip


def flags_from_args(args: dict[str, str | int | float | bool | None] | list[str]) -> list[str]:
    """``args`` from models.yaml as command-line flags: ``{kv_bits: 4}`` -> ``--kv-bits 4``.

    ``True`` is a bare flag, ``False``/``None`` leave the flag out, a list passes through as is.
    """
    if isinstance(args, list):
        return list(args)
    flags: list[str] = []
    for key, value in args.items():
        flag = key if key.startswith("-") else "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        else:
            flags += [flag, str(value)]
    return flags
