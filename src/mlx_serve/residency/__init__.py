"""Memory-aware residency: how big a model is before it loads, what it measured after, and
the budget they are planned against. The decisions themselves are in
:mod:`mlx_serve.supervisor.policy`; this package only supplies the numbers."""

from .budget import Budget, resolve_budget
from .estimate import Estimate, estimate_model
from .footprint import Footprint
from .ledger import FootprintLedger

__all__ = [
    "Budget",
    "Estimate",
    "Footprint",
    "FootprintLedger",
    "estimate_model",
    "resolve_budget",
]
