"""The ``distributed:`` block of a model entry: one model sharded over several hosts.

The engine is MLX's own distributed runtime and ``mlx_lm server`` running under it (rank 0
serves HTTP, the other ranks follow its requests); this block only says where the ranks run
and how they talk. What is checked here is what can be checked without touching the network
or the model files: at least two ranks, rank 0 on this machine, a hostfile where the backend
needs one. What needs the files or the hosts (the head count, an unreachable host, a model
path missing on a host) is checked when the model starts, and fails that start with a
message naming the host.
"""

from __future__ import annotations

import ipaddress
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Backend", "DistributedConfig", "Mode", "is_local_host"]


class Backend(StrEnum):
    """MLX's communication backends (``mlx.launch --backend``)."""

    RING = "ring"
    """TCP sockets between the hosts (Ethernet, Thunderbolt bridge, or 127.0.0.1 for tests)."""
    JACCL = "jaccl"
    """RDMA over Thunderbolt 5 (macOS 26.2+); needs a hostfile from ``mlx.distributed_config``."""
    MPI = "mpi"
    """An installed MPI (OpenMPI); needs a hostfile."""


class Mode(StrEnum):
    """How ``mlx_lm`` splits the model over the ranks."""

    TENSOR = "tensor"
    """Every layer split across ranks (``model.shard``): each rank holds 1/n of each weight;
    attention heads must divide by the number of ranks."""
    PIPELINE = "pipeline"
    """Consecutive layers per rank (``--pipeline``): fewer model families support it."""


#: mlx.launch's default first port for the ring backend; rank i of a remote host listens on
#: ``ring_port + i``. Ranks on this machine get free ports picked at each start instead.
DEFAULT_RING_PORT = 32323


class DistributedConfig(BaseModel):
    """Where the ranks of one sharded model run, and how they communicate."""

    model_config = ConfigDict(extra="forbid")

    hosts: Annotated[list[str], Field(min_length=2)]
    """One entry per rank, rank 0 first; rank 0 must be this machine (it serves HTTP and is
    the process the supervisor owns). For the ring backend each entry is the IP address the
    other ranks reach that host at; a host may appear several times (several ranks on it)."""
    backend: Backend = Backend.RING
    mode: Mode = Mode.TENSOR
    hostfile: Path | None = None
    """mlx.launch's hostfile (JSON, as written by ``mlx.distributed_config``): required for
    ``jaccl`` and ``mpi``, whose ranks are started by ``mlx.launch`` itself."""
    python: str | None = None
    """The Python interpreter on the remote hosts (default: the same path as this one's)."""
    ssh: list[str] = Field(default_factory=list)
    """Extra ``ssh`` options for remote ranks (e.g. ``["-i", "~/.ssh/mlx"]``)."""
    ring_port: Annotated[int, Field(ge=1024, le=65000)] = DEFAULT_RING_PORT
    """First port of remote ring ranks (rank i listens on ``ring_port + i``)."""
    connect_timeout: Annotated[float, Field(gt=0, le=120)] = 5.0
    """Seconds to wait for a remote host's ssh port before the start fails as unreachable."""

    @field_validator("hosts", mode="after")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        cleaned = [h.strip() for h in hosts]
        if any(not h for h in cleaned):
            raise ValueError("a host must not be empty")
        if not is_local_host(cleaned[0]):
            raise ValueError(
                f"rank 0 ({cleaned[0]}) must be this machine: it serves HTTP and is the "
                "process mlx-serve supervises. List this machine's address first."
            )
        return cleaned

    @model_validator(mode="after")
    def _backend_needs(self) -> DistributedConfig:
        if self.backend is not Backend.RING and self.hostfile is None:
            raise ValueError(
                f"backend {self.backend.value!r} needs a hostfile (make one with "
                "`mlx.distributed_config`)"
            )
        if self.backend is Backend.RING:
            bad = [h for h in self.hosts if not _is_ip(h)]
            if bad:
                raise ValueError(
                    "the ring backend connects ranks by IP address; not an IP: " + ", ".join(bad)
                )
        if self.hostfile is not None:
            path = self.hostfile.expanduser()
            if not path.is_file():
                raise ValueError(f"hostfile does not exist: {path}")
            self.hostfile = path
        return self

    @property
    def ranks(self) -> int:
        return len(self.hosts)

    def local_ranks(self) -> int:
        """How many ranks run on this machine (their memory counts here)."""
        return sum(1 for h in self.hosts if is_local_host(h))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_local_host(host: str) -> bool:
    """Is ``host`` this machine: a loopback name or address, or one of its interfaces'?"""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    import psutil  # noqa: PLC0415 - only for a non-loopback address

    return any(
        snic.address.split("%", 1)[0] == host
        for snics in psutil.net_if_addrs().values()
        for snic in snics
    )
