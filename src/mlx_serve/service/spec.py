"""What the service runs: the :class:`ServiceSpec` (command line, environment, data dir,
stop timeout), resolved from the inputs of ``service install`` by :func:`build_spec`."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "DEFAULT_MODE",
    "LABEL_PATTERN",
    "PASSTHROUGH_ENV",
    "REDACTED",
    "SECRET_ENV",
    "SECRET_MODE",
    "SERVER_DRAIN_TIMEOUT",
    "ServiceError",
    "ServiceSpec",
    "build_spec",
    "check_no_control_chars",
    "service_environment",
    "stop_timeout_for",
]

SERVER_DRAIN_TIMEOUT = 30.0
"""``mlx_serve.server.serve``'s default ``drain_timeout`` (a unit test keeps them equal)."""

PASSTHROUGH_ENV = (
    "MLX_SERVE_HOME",
    "MLX_SERVE_CONFIG",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "XDG_CACHE_HOME",
)
"""Variables copied into the service when set, because the service manager starts the server
with its own, minimal environment: without ``HF_HOME``/``HF_HUB_CACHE`` the service would
look for (and download again) models in a different cache than the one the user filled."""

SECRET_ENV = ("MLX_API_KEY", "HF_TOKEN")
"""Copied too when set, but they are credentials: the file holding them gets mode 0600 and
``--dry-run`` prints them redacted."""

DEFAULT_MODE = 0o644
SECRET_MODE = 0o600
REDACTED = "<redacted>"

LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""Valid as a launchd label and as a systemd unit name stem (no ``@`` templates, no ``/``)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STOP_MARGIN = 20.0
_MIN_STOP_TIMEOUT = 60


class ServiceError(Exception):
    """A service operation failed; the message is meant for the user as is."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Everything platform-independent about the service, already resolved to absolutes.

    The plan builders turn it into a plist or a unit without looking at the environment,
    the clock or the file system, which is what makes them testable on any OS.
    """

    label: str
    """launchd label, or the systemd unit name without ``.service``."""
    argv: tuple[str, ...]
    """The command line, ``argv[0]`` an absolute path (service managers do not search PATH
    the way a shell does)."""
    environment: tuple[tuple[str, str], ...]
    """Variables set for the server, in the order they are written."""
    secret_names: frozenset[str]
    """Which of ``environment`` are credentials."""
    data_dir: Path
    """The server's data directory: the service's working directory and its log location."""
    stop_timeout: int
    """Seconds the manager waits after SIGTERM before it SIGKILLs what is left."""
    description: str = "mlx-serve: local OpenAI-compatible inference server for MLX models"

    @property
    def log_dir(self) -> Path:
        """Where the service's stdout/stderr go; the workers' logs are in the same place."""
        return self.data_dir / "logs"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "service.out.log"

    @property
    def stderr_log(self) -> Path:
        return self.log_dir / "service.err.log"

    @property
    def has_secrets(self) -> bool:
        return any(name in self.secret_names for name, _ in self.environment)

    @property
    def file_mode(self) -> int:
        """0600 when the file will hold a credential, so only the user can read it."""
        return SECRET_MODE if self.has_secrets else DEFAULT_MODE

    def redacted(self) -> ServiceSpec:
        """The same spec with credential values replaced, for printing (``--dry-run``)."""
        env = tuple(
            (name, REDACTED if name in self.secret_names else value)
            for name, value in self.environment
        )
        return replace(self, environment=env)


def stop_timeout_for(server_stop_timeout: float) -> int:
    """How long the manager should wait for a clean stop before it SIGKILLs.

    On SIGTERM the server drains in-flight requests (``SERVER_DRAIN_TIMEOUT``), then stops
    the workers, each with ``server.stop_timeout`` of grace (in parallel). The manager must
    wait longer than both together, or it would SIGKILL a server that is stopping properly;
    at least a minute, with a margin for the interpreter's own exit.
    """
    needed = SERVER_DRAIN_TIMEOUT + server_stop_timeout + _STOP_MARGIN
    return max(_MIN_STOP_TIMEOUT, math.ceil(needed))


def service_environment(environ: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], set[str]]:
    """The variables the service gets, and which of them are secrets.

    ``PATH`` is the installing shell's, so the service finds what the user's shell finds
    (``ffmpeg`` from Homebrew: launchd's default PATH is only ``/usr/bin:/bin:...``).
    ``PYTHONUNBUFFERED`` makes anything printed reach the log file at once, not in 8 KiB
    blocks (stdout is a file there, not a terminal).
    """
    env: list[tuple[str, str]] = [("PATH", environ.get("PATH") or os.defpath)]
    env.append(("PYTHONUNBUFFERED", "1"))
    secrets: set[str] = set()
    for name in PASSTHROUGH_ENV:
        value = environ.get(name)
        if value:
            env.append((name, value))
    for name in SECRET_ENV:
        value = environ.get(name)
        if value:
            env.append((name, value))
            secrets.add(name)
    return tuple(env), secrets


def _absolute(path: Path) -> Path:
    """Absolute and normalised, but symlinks kept: a symlinked models.yaml or data dir is
    the user's choice of indirection, and the service should follow it as the shell does."""
    return Path(os.path.normpath(path.expanduser().absolute()))


def build_spec(
    *,
    executable: str,
    config_path: Path,
    data_dir: Path,
    label: str,
    environ: Mapping[str, str],
    host: str | None = None,
    port: int | None = None,
    server_stop_timeout: float = 10.0,
) -> ServiceSpec:
    """Resolve the inputs of ``service install`` into a :class:`ServiceSpec`.

    The command is ``<interpreter> -m mlx_serve.cli.main start --config <abs>``: the
    interpreter path is kept exactly as given (a venv's ``bin/python`` symlink is what
    selects the venv; resolving it to the base interpreter would lose every installed
    package, and Homebrew's stable ``opt/`` path would become a versioned Cellar path that
    the next upgrade deletes).
    """
    if not LABEL_PATTERN.fullmatch(label):
        raise ServiceError(
            f"invalid service label {label!r}: use letters, digits, '.', '_' and '-' "
            "(it must start with a letter or digit)"
        )
    if not executable or not Path(executable).is_absolute():
        raise ServiceError(f"the Python interpreter path is not absolute: {executable!r}")
    argv = [
        executable,
        "-m",
        "mlx_serve.cli.main",
        "start",
        "--config",
        str(_absolute(config_path)),
    ]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    env, secrets = service_environment(environ)
    for name, value in env:
        if not _ENV_NAME.fullmatch(name):  # pragma: no cover - the names are ours
            raise ServiceError(f"invalid environment variable name {name!r}")
        check_no_control_chars(value, f"${name}")
    for arg in argv:
        check_no_control_chars(arg, "the command line")
    check_no_control_chars(str(data_dir), "the data directory")
    return ServiceSpec(
        label=label,
        argv=tuple(argv),
        environment=env,
        secret_names=frozenset(secrets),
        data_dir=_absolute(data_dir),
        stop_timeout=stop_timeout_for(server_stop_timeout),
    )


def check_no_control_chars(value: str, what: str) -> str:
    """Reject newlines and other control characters: neither a plist nor a unit file
    line can carry them safely, and no real path or host name contains them."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ServiceError(f"{what} contains a control character: {value!r}")
    return value
