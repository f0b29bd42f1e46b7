"""What both service managers share: the spec, plans, commands, atomic writes, status.

Installing a login service is "write one file, then run a few manager commands". Both halves
are described as data first (a :class:`ServicePlan` built by pure functions from a
:class:`ServiceSpec`) and executed second (:func:`apply_install`), so ``--dry-run`` prints
exactly what would happen and the tests check the exact commands on any OS without touching
the machine's real launchd or systemd.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from mlx_serve.files import atomic_write

__all__ = [
    "DEFAULT_MODE",
    "LABEL_PATTERN",
    "PASSTHROUGH_ENV",
    "REDACTED",
    "SECRET_ENV",
    "SECRET_MODE",
    "SERVER_DRAIN_TIMEOUT",
    "Command",
    "CommandResult",
    "Expect",
    "RemovalPlan",
    "Runner",
    "ServiceError",
    "ServicePlan",
    "ServiceSpec",
    "ServiceStatus",
    "SubprocessRunner",
    "apply_install",
    "apply_removal",
    "atomic_write",
    "build_spec",
    "check_no_control_chars",
    "run_steps",
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


# --- the spec: what the service runs -------------------------------------------------------


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


# --- commands and how they are run ---------------------------------------------------------


class Expect(StrEnum):
    """What outcome of a command counts as done."""

    SUCCESS = "success"
    """Exit 0, else the operation fails."""
    ANY = "any"
    """Either: failing is normal in some states (stopping a service that is not loaded)."""
    FAILURE = "failure"
    """Non-zero: used with ``retry_for`` to wait until something has gone away."""


@dataclass(frozen=True, slots=True)
class Command:
    """One service-manager invocation of a plan."""

    argv: tuple[str, ...]
    expect: Expect = Expect.SUCCESS
    retry_for: float = 0.0
    """Re-run every ``RETRY_INTERVAL`` until ``expect`` holds, for at most this long."""
    why: str = ""
    """Shown next to the command in ``--dry-run`` output."""

    def __str__(self) -> str:
        return shlex.join(self.argv)

    def describe(self) -> str:
        """The command as a shell line, with its expectation as a comment."""
        notes = [self.why] if self.why else []
        if self.expect is Expect.ANY:
            notes.append("a failure here is ignored")
        if self.retry_for:
            until = "it fails" if self.expect is Expect.FAILURE else "it succeeds"
            notes.append(f"repeated until {until}, for up to {self.retry_for:g}s")
        return str(self) + (f"    # {'; '.join(notes)}" if notes else "")


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runner(Protocol):
    """Runs one command and reports its outcome; never raises for a non-zero exit.

    The real one is :class:`SubprocessRunner`; tests pass a recorder, so no test can reach
    the machine's launchd or systemd.
    """

    def run(self, argv: Sequence[str]) -> CommandResult: ...


@dataclass(frozen=True, slots=True)
class SubprocessRunner:
    """Runs commands with :func:`subprocess.run`, capturing their output."""

    timeout: float = 300.0
    """Generous: ``systemctl restart`` waits for the old server to drain and stop."""

    def run(self, argv: Sequence[str]) -> CommandResult:
        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError:
            return CommandResult(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return CommandResult(124, "", f"{shlex.join(argv)}: timed out after {self.timeout}s")
        return CommandResult(done.returncode, done.stdout, done.stderr)


RETRY_INTERVAL = 0.5


def _met(expect: Expect, result: CommandResult) -> bool:
    if expect is Expect.SUCCESS:
        return result.ok
    if expect is Expect.FAILURE:
        return not result.ok
    return True


def run_steps(
    commands: Sequence[Command],
    runner: Runner,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    on_step: Callable[[Command], None] | None = None,
) -> list[CommandResult]:
    """Run ``commands`` in order, retrying as each asks; the first unmet one raises."""
    results: list[CommandResult] = []
    for command in commands:
        if on_step is not None:
            on_step(command)
        deadline = monotonic() + command.retry_for
        result = runner.run(command.argv)
        while not _met(command.expect, result) and monotonic() < deadline:
            sleep(RETRY_INTERVAL)
            result = runner.run(command.argv)
        if not _met(command.expect, result):
            if command.expect is Expect.FAILURE:
                raise ServiceError(
                    f"`{command}` still succeeds after {command.retry_for:g}s"
                    + (f" ({command.why})" if command.why else "")
                )
            output = (result.stderr or result.stdout).strip()
            raise ServiceError(
                f"`{command}` failed with exit code {result.returncode}"
                + (f": {output}" if output else "")
            )
        results.append(result)
    return results


# --- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """An install: commands before, the file, commands after. Pure data; nothing ran yet."""

    path: Path
    content: bytes
    mode: int
    directories: tuple[Path, ...] = ()
    """Created first: launchd and systemd both refuse to start a job whose log file's
    directory does not exist (they create the file, not its parents)."""
    before: tuple[Command, ...] = ()
    after: tuple[Command, ...] = ()
    notes: tuple[str, ...] = ()
    """Hints printed after a successful install."""

    @property
    def commands(self) -> tuple[Command, ...]:
        return self.before + self.after

    def describe(self) -> str:
        """Human-readable ``--dry-run`` output: the file, then every command in order."""
        lines = []
        if self.directories:
            lines.append(f"# would create directories: {', '.join(map(str, self.directories))}")
        if self.before:
            lines.append("# would run:")
            lines += [c.describe() for c in self.before]
        lines.append(f"# would write {self.path} (mode {self.mode:04o}):")
        lines.append(self.content.decode("utf-8").rstrip("\n"))
        lines.append("# then run:" if self.before else "# would run:")
        lines += [c.describe() for c in self.after]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class RemovalPlan:
    """An uninstall: stop and unregister, remove the file, let the manager forget it."""

    path: Path
    before: tuple[Command, ...] = ()
    after: tuple[Command, ...] = ()

    @property
    def commands(self) -> tuple[Command, ...]:
        return self.before + self.after

    def describe(self) -> str:
        lines = ["# would run:"]
        lines += [c.describe() for c in self.before]
        lines.append(f"# would remove {self.path}")
        if self.after:
            lines.append("# then run:")
            lines += [c.describe() for c in self.after]
        return "\n".join(lines) + "\n"


def apply_install(
    plan: ServicePlan,
    runner: Runner,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    on_step: Callable[[Command], None] | None = None,
) -> None:
    """Carry out ``plan``: directories, ``before`` commands, the file, ``after`` commands."""
    for directory in plan.directories:
        directory.mkdir(parents=True, exist_ok=True)
    run_steps(plan.before, runner, sleep=sleep, monotonic=monotonic, on_step=on_step)
    atomic_write(plan.path, plan.content, plan.mode)
    run_steps(plan.after, runner, sleep=sleep, monotonic=monotonic, on_step=on_step)


def apply_removal(
    plan: RemovalPlan,
    runner: Runner,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    on_step: Callable[[Command], None] | None = None,
) -> None:
    """Carry out ``plan``: stop and unregister, remove the file, then the ``after`` steps."""
    run_steps(plan.before, runner, sleep=sleep, monotonic=monotonic, on_step=on_step)
    plan.path.unlink(missing_ok=True)
    run_steps(plan.after, runner, sleep=sleep, monotonic=monotonic, on_step=on_step)


# --- status --------------------------------------------------------------------------------


@dataclass(slots=True)
class ServiceStatus:
    """What ``service status`` reports; ``None`` means "could not be determined"."""

    manager: str
    name: str
    path: Path
    installed: bool
    loaded: bool | None = None
    running: bool | None = None
    state: str | None = None
    enabled: bool | None = None
    pid: int | None = None
    last_exit_code: int | None = None
    last_signal: str | None = None
    program: str | None = None
    """``argv[0]`` of the installed file: the interpreter the service runs."""
    stdout_log: str | None = None
    stderr_log: str | None = None
    error: str | None = None
    """Why the manager could not be asked (no user session, command missing...)."""
    details: dict[str, str] = field(default_factory=dict)
    """The raw fields the state was read from."""

    @property
    def program_exists(self) -> bool | None:
        """False when the interpreter is gone: the venv was moved or deleted."""
        if self.program is None:
            return None
        return os.access(self.program, os.X_OK)

    def to_json(self) -> dict[str, Any]:
        return {
            "manager": self.manager,
            "name": self.name,
            "path": str(self.path),
            "installed": self.installed,
            "loaded": self.loaded,
            "running": self.running,
            "state": self.state,
            "enabled": self.enabled,
            "pid": self.pid,
            "last_exit_code": self.last_exit_code,
            "last_signal": self.last_signal,
            "program": self.program,
            "program_exists": self.program_exists,
            "stdout_log": self.stdout_log,
            "stderr_log": self.stderr_log,
            "error": self.error,
            "details": dict(self.details),
        }


def check_no_control_chars(value: str, what: str) -> str:
    """Reject newlines and other control characters: neither a plist nor a unit file
    line can carry them safely, and no real path or host name contains them."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ServiceError(f"{what} contains a control character: {value!r}")
    return value
