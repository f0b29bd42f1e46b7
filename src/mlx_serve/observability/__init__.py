"""Watching the server: per-model request statistics, Prometheus metrics, memory, event log.

Everything here is fed by the supervisor's events (``request``, ``model.loaded``, ``swap``...)
through listeners, so the lifecycle code never calls into observability.
"""
