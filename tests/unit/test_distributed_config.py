"""The ``distributed:`` block: what models.yaml accepts, and the rank commands built from it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_serve.config import ConfigError, ModelConfig, parse_config_text
from mlx_serve.config.distributed import DistributedConfig, is_local_host
from mlx_serve.residency import estimate_model
from mlx_serve.workers.base import LaunchContext
from mlx_serve.workers.distributed import ShardingError, distributed_launch_spec, remote_script
from mlx_serve.workers.ranks import RANK_LOST_EXIT, Follower, read_followers, write_followers


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    return str(info.value)


def model_yaml(distributed: str, extra: str = "") -> str:
    return f"models:\n  big:\n    path: org/big\n{extra}    distributed:\n{distributed}"


def test_a_minimal_entry_is_ring_tensor_on_this_machine() -> None:
    config = parse_config_text(model_yaml("      hosts: [127.0.0.1, 127.0.0.1]\n"))
    dist = config.models["big"].distributed
    assert dist is not None
    assert (dist.backend.value, dist.mode.value, dist.ranks, dist.local_ranks()) == (
        "ring",
        "tensor",
        2,
        2,
    )


@pytest.mark.parametrize(
    ("block", "extra", "says"),
    [
        ("      hosts: [127.0.0.1]\n", "", "at least 2"),
        ("      hosts: [10.255.0.7, 127.0.0.1]\n", "", "rank 0 (10.255.0.7) must be this machine"),
        ("      hosts: [127.0.0.1, mac-studio.local]\n", "", "not an IP: mac-studio.local"),
        ("      hosts: [127.0.0.1, 127.0.0.1]\n      backend: jaccl\n", "", "needs a hostfile"),
        ("      hosts: [127.0.0.1, 127.0.0.1]\n      mode: data\n", "", "tensor"),
        ("      hosts: [127.0.0.1, 127.0.0.1]\n      ranks: 2\n", "", "ranks"),
        ("      hosts: [127.0.0.1, 127.0.0.1]\n", "    type: embedding\n", "only text models"),
    ],
)
def test_mistakes_are_named(block: str, extra: str, says: str) -> None:
    assert says in config_error(model_yaml(block, extra))


def test_local_hosts() -> None:
    assert is_local_host("127.0.0.1") and is_local_host("localhost") and is_local_host("::1")
    assert not is_local_host("192.0.2.1")


def test_memory_counts_the_ranks_on_this_machine(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    (root / "model.safetensors").write_bytes(b"\0" * 4000)
    one = ModelConfig(path=str(root))
    remote = DistributedConfig(hosts=["127.0.0.1", "192.0.2.1"])
    local = DistributedConfig(hosts=["127.0.0.1", "127.0.0.1"])
    half = estimate_model(ModelConfig(path=str(root), distributed=remote))
    both = estimate_model(ModelConfig(path=str(root), distributed=local))
    whole = estimate_model(one)
    assert half.weights_bytes == whole.weights_bytes // 2 == both.weights_bytes // 2  # type: ignore[operator]
    assert both.overhead_bytes == 2 * half.overhead_bytes


def launch_ctx(tmp_path: Path, model: ModelConfig) -> LaunchContext:
    return LaunchContext(
        name="big",
        model=model,
        host="127.0.0.1",
        port=8123,
        log_path=tmp_path / "logs" / "big.log",
        python=sys.executable,
    )


def test_rank_commands(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    dist = DistributedConfig(hosts=["127.0.0.1", "127.0.0.1", "192.0.2.1"], mode="pipeline")
    spec = distributed_launch_spec(launch_ctx(tmp_path, ModelConfig(path=str(root))), dist)
    argv = list(spec.argv)
    assert argv[argv.index("--followers") + 1].endswith("big.ranks.json")
    assert argv[-4:] == ["--host", "127.0.0.1", "--port", "8123"] and "--pipeline" in argv
    assert spec.env["MLX_RANK"] == "0"
    hostfile = json.loads(Path(spec.env["MLX_HOSTFILE"]).read_text())
    assert len(hostfile) == 3 and hostfile[2] == ["192.0.2.1:32325"]
    local, remote = read_followers(Path(argv[argv.index("--followers") + 1]))
    assert (local.rank, local.remote, local.env["MLX_RANK"]) == (1, False, "1")
    assert "--host" not in local.argv  # followers serve no HTTP
    assert (remote.rank, remote.remote, remote.argv[:2]) == (2, True, ["ssh", "-tt"])
    assert "MLX_RANK=2" in remote.argv[-1] and "is missing" in remote.argv[-1]


def test_tensor_mode_refuses_heads_that_do_not_divide(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"num_attention_heads": 6}))
    dist = DistributedConfig(hosts=["127.0.0.1"] * 4)
    with pytest.raises(ShardingError, match=r"\(6\) does not divide by 4: use 2 or 3 or 6"):
        distributed_launch_spec(launch_ctx(tmp_path, ModelConfig(path=str(root))), dist)


def test_remote_script_reports_a_missing_model_path() -> None:
    dist = DistributedConfig(hosts=["127.0.0.1", "192.0.2.1"], python="/bin/false")
    script = remote_script(dist, "/nowhere/model", 1, "[]", ["--model", "/nowhere/model"])
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 3
    assert "mlx-serve: the model path /nowhere/model is missing on" in done.stderr
    assert shlex.split(script)  # one well-formed shell command


def test_a_follower_that_exits_ends_rank_0_with_its_own_code(tmp_path: Path) -> None:
    """Any exit of a rank, even a clean one, ends rank 0 (mlx.launch exited 0 here)."""
    plan = tmp_path / "ranks.json"
    write_followers(plan, [Follower(rank=1, host="127.0.0.1", argv=["true"])])
    leader = [
        sys.executable,
        "-c",
        "import sys, time; from pathlib import Path; "
        "from mlx_serve.workers.ranks import start_followers; "
        f"start_followers(Path({str(plan)!r})); time.sleep(30)",
    ]
    done = subprocess.run(leader, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == RANK_LOST_EXIT
    assert "rank 1 (127.0.0.1) exited with code 0" in done.stderr


def test_jaccl_and_mpi_run_under_mlx_launch_with_the_hostfile(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text("[]")
    dist = DistributedConfig(hosts=["127.0.0.1", "127.0.0.1"], backend="mpi", hostfile=hostfile)
    spec = distributed_launch_spec(launch_ctx(tmp_path, ModelConfig(path="org/big")), dist)
    argv = list(spec.argv)
    assert argv[argv.index("mlx_serve.workers.mlx_launch") :][:5] == [
        "mlx_serve.workers.mlx_launch", "--backend", "mpi", "--hostfile", str(hostfile),
    ]  # fmt: skip
    assert argv[argv.index("--") + 1 :][:4] == ["-m", "mlx_lm", "server", "--model"]
    assert "MLX_RANK" not in spec.env  # mlx.launch sets it per rank
