"""The model lifecycle: per-worker state machines, the swap scheduler, timers and events.

No HTTP parsing happens here; the router asks for a lease on a ready worker and forwards.
"""

from mlx_serve.supervisor.scheduler import QueueFull, ShuttingDown
from mlx_serve.supervisor.snapshot import WorkerView
from mlx_serve.supervisor.states import WorkerState
from mlx_serve.supervisor.supervisor import Lease, Supervisor
from mlx_serve.supervisor.worker import ManagedWorker, WorkerStartError

__all__ = [
    "Lease",
    "ManagedWorker",
    "QueueFull",
    "ShuttingDown",
    "Supervisor",
    "WorkerStartError",
    "WorkerState",
    "WorkerView",
]
