"""How a sharded text model's ranks are started: rank 0 here, serving HTTP; the rest follow.

For the ring backend the ranks are started without ``mlx.launch`` (see
:mod:`mlx_serve.workers.ranks` for why): every rank gets ``MLX_RANK`` and ``MLX_HOSTFILE`` (a
JSON list of ``ip:port`` per rank, the format ``mlx.launch`` itself writes), rank 0 runs
``mlx_lm server`` under the guard and starts the followers, local ones directly and remote
ones over ``ssh``. The JACCL and MPI backends need what ``mlx.launch`` knows (RDMA device
lists, ``mpirun``), so for them the guard runs ``mlx.launch`` with the user's hostfile and
the process group still holds the launcher and its local ranks.

``mlx_lm`` loads the model in every rank (``sharded_load``) and rank 0 shares each request
with the others, so the command line is the same on every rank except the HTTP address.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from mlx_serve.config import ModelConfig
from mlx_serve.config.distributed import Backend, DistributedConfig, Mode, is_local_host
from mlx_serve.hub.cache import resolve_model_dir
from mlx_serve.hub.errors import HubError
from mlx_serve.workers.base import LaunchContext, LaunchRefused, flags_from_args
from mlx_serve.workers.process import LaunchSpec, free_port
from mlx_serve.workers.ranks import Follower, write_followers


class ShardingError(LaunchRefused):
    """The model cannot be sharded as configured (checked before any rank starts)."""

    code = "model_not_shardable"


def distributed_launch_spec(ctx: LaunchContext, dist: DistributedConfig) -> LaunchSpec:
    """Rank 0's command line (and, written next to its log, its followers' and the hostfile)."""
    model = ctx.model
    check_shardable(model, dist)
    server_flags = ["--model", model.path]
    if dist.mode is Mode.PIPELINE:
        server_flags.append("--pipeline")
    server_flags += flags_from_args(model.args)
    if model.max_kv_cache_size is not None:
        server_flags += ["--prompt-cache-size", str(model.max_kv_cache_size)]
    http = ["--host", ctx.host, "--port", str(ctx.port)]
    guard = [ctx.python, "-m", "mlx_serve.workers.guard", "--without", "torch"]
    if dist.backend is not Backend.RING:
        assert dist.hostfile is not None  # the schema demands one
        argv = [
            *guard, "mlx_serve.workers.mlx_launch", "--backend", dist.backend.value,
            "--hostfile", str(dist.hostfile), "--python", dist.python or ctx.python,
            "--", "-m", "mlx_lm", "server", *server_flags, *http,
        ]  # fmt: skip
        return LaunchSpec(argv=argv, log_path=ctx.log_path)

    files = ctx.log_path.parent
    files.mkdir(parents=True, exist_ok=True)
    stem = ctx.log_path.stem
    hostfile_json = json.dumps(ring_hostfile(dist))
    hostfile = files / f"{stem}.hostfile.json"
    hostfile.write_text(hostfile_json)
    followers: list[Follower] = []
    for rank, host in enumerate(dist.hosts[1:], start=1):
        if is_local_host(host):
            argv = [*guard, "mlx_lm", "server", *server_flags]
            env = {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
            followers.append(Follower(rank=rank, host=host, argv=argv, env=env))
        else:
            ssh = ssh_prefix(dist, host)
            script = remote_script(dist, model.path, rank, hostfile_json, server_flags)
            followers.append(
                Follower(
                    rank=rank, host=host, argv=[*ssh[:1], "-tt", *ssh[1:], script],
                    remote=True, ssh=ssh, connect_timeout=dist.connect_timeout,
                )
            )  # fmt: skip
    plan = files / f"{stem}.ranks.json"
    write_followers(plan, followers)
    argv = [*guard, "--followers", str(plan), "mlx_lm", "server", *server_flags, *http]
    env = {"MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile)}
    return LaunchSpec(argv=argv, log_path=ctx.log_path, env=env)


def ring_hostfile(dist: DistributedConfig) -> list[list[str]]:
    """MLX's ring hostfile: one ``["ip:port"]`` per rank. Ranks on this machine get ports
    free right now; remote ranks ``ring_port + rank`` (nothing here can see their ports)."""
    out = []
    for rank, host in enumerate(dist.hosts):
        port = free_port(host) if is_local_host(host) else dist.ring_port + rank
        out.append([f"{host}:{port}"])
    return out


def ssh_prefix(dist: DistributedConfig, host: str) -> list[str]:
    """``ssh`` with options that fail fast instead of prompting (no tty for a password)."""
    return [
        "ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(dist.connect_timeout))}",
        "-o", "LogLevel=ERROR", *dist.ssh, host,
    ]  # fmt: skip


def remote_script(
    dist: DistributedConfig, path: str, rank: int, hostfile_json: str, server_flags: list[str]
) -> str:
    """The shell command a remote rank runs: fail clearly when the model is not there, write
    the hostfile, then become ``mlx_lm server``."""
    python = dist.python or "python3"
    q = shlex.quote
    check = ""
    if path.startswith(("/", "~")):
        check = (
            f"[ -e {q(path)} ] || {{ echo {q(f'mlx-serve: the model path {path} is missing')}"
            f'" on $(hostname)" >&2; exit 3; }}; '
        )
    command = " ".join(q(a) for a in [python, "-m", "mlx_lm", "server", *server_flags])
    return (
        f'{check}f=$(mktemp) && printf %s {q(hostfile_json)} > "$f" && '
        f'MLX_RANK={rank} MLX_HOSTFILE="$f" exec {command}'
    )


def check_shardable(model: ModelConfig, dist: DistributedConfig) -> None:
    """In tensor mode every rank takes an equal share of the attention heads: refuse (before
    any rank starts) a model whose head counts do not divide by the number of ranks."""
    if dist.mode is not Mode.TENSOR:
        return
    try:
        found = resolve_model_dir(model.path)
    except HubError:
        return  # the file check before the start reports a wrong path
    if found.path is None:
        return
    try:
        config = json.loads((Path(found.path) / "config.json").read_text())
    except (OSError, ValueError):
        return
    text = config.get("text_config", config) if isinstance(config, dict) else {}
    n = dist.ranks
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = text.get(key) if isinstance(text, dict) else None
        if isinstance(heads, int) and heads % n:
            raise ShardingError(
                f"tensor mode splits the attention heads over {n} ranks, and this model's "
                f"{key} ({heads}) does not divide by {n}: use {_divisors(heads)} ranks, or "
                "mode: pipeline"
            )


def _divisors(heads: int) -> str:
    options = [str(d) for d in range(2, min(heads, 16) + 1) if heads % d == 0]
    return " or ".join(options) if options else "1"
