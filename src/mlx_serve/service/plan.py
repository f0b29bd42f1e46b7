"""How a service is installed or removed: plans (:class:`ServicePlan`, :class:`RemovalPlan`)
of service-manager commands around one file, and their execution through a :class:`Runner`.

Installing a login service is "write one file, then run a few manager commands". Both halves
are described as data first (a plan built by pure functions from a
:class:`~mlx_serve.service.spec.ServiceSpec`) and executed second (:func:`apply_install`), so
``--dry-run`` prints exactly what would happen and the tests check the exact commands on any
OS without touching the machine's real launchd or systemd.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from mlx_serve.files import atomic_write

from .spec import ServiceError

__all__ = [
    "RETRY_INTERVAL",
    "Command",
    "CommandResult",
    "Expect",
    "RemovalPlan",
    "Runner",
    "ServicePlan",
    "SubprocessRunner",
    "apply_install",
    "apply_removal",
    "run_steps",
]

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
