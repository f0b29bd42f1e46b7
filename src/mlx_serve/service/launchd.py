"""macOS: a per-user LaunchAgent in ``~/Library/LaunchAgents``, managed with ``launchctl``.

Uses the modern ``bootstrap``/``bootout`` verbs on the ``gui/<uid>`` domain (``load``/
``unload`` are deprecated and report success while failing). Two launchd behaviours shape
the commands:

* ``bootout`` is asynchronous: it sends SIGTERM and returns, and until the old process has
  exited and launchd has released the label, ``bootstrap`` of the same label fails with
  "5: Input/output error". So a reinstall waits until ``launchctl print`` no longer finds the
  label (the server may drain for up to a minute) and then retries ``bootstrap`` briefly.
* ``bootstrap`` of a ``RunAtLoad`` job starts it. No ``kickstart -k`` follows: it would kill
  the instance that just started (and is reported to race it with error 37); bootout +
  bootstrap already guarantees the running server is the newly written definition.
"""

from __future__ import annotations

import contextlib
import plistlib
import re
from pathlib import Path
from typing import Any

from .plan import Command, Expect, RemovalPlan, Runner, ServicePlan
from .spec import ServiceSpec
from .status import ServiceStatus

__all__ = [
    "DEFAULT_LABEL",
    "THROTTLE_INTERVAL",
    "launchd_plan",
    "launchd_removal",
    "launchd_status",
    "parse_launchctl_print",
    "plist_dict",
    "plist_path",
]

DEFAULT_LABEL = "com.mlx-serve.server"
THROTTLE_INTERVAL = 10
"""Seconds between respawns after a crash, so a broken config cannot spin the CPU."""
BOOTSTRAP_RETRY = 15.0
"""How long ``bootstrap`` is retried while launchd finishes a bootout (error 5)."""
UNLOAD_MARGIN = 10.0
DEFAULT_EXIT_TIMEOUT = 60


def plist_path(label: str, home: Path) -> Path:
    """``~/Library/LaunchAgents/<label>.plist``: loaded at every login of this user."""
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def _domain(uid: int) -> str:
    return f"gui/{uid}"


def _target(label: str, uid: int) -> str:
    return f"gui/{uid}/{label}"


def plist_dict(spec: ServiceSpec) -> dict[str, Any]:
    """The LaunchAgent definition.

    * ``KeepAlive: {SuccessfulExit: false}``: respawn after a crash or a non-zero exit, but
      not after a clean stop (exit 0 on SIGTERM), so ``launchctl kill TERM`` really stops it.
    * ``ExitTimeOut``: launchd's default (20 s) is shorter than the server's drain plus the
      workers' grace; SIGKILL would cut streaming requests short.
    * ``ProcessType: Interactive``: ``Background`` (and ``Adaptive``, which only leaves it on
      XPC traffic, and we have none) lets macOS throttle CPU and I/O and prefer efficiency
      cores; ``Standard`` (the default) is not documented as limit-free. launchd.plist(5)
      gives ``Interactive`` jobs "the same resource limitations as apps, that is to say,
      none": inference is work the user is waiting for, as they wait for an app.
    * ``WorkingDirectory``: the data directory, which exists; launchd's default is ``/``.
    """
    return {
        "Label": spec.label,
        "ProgramArguments": list(spec.argv),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_INTERVAL,
        "ExitTimeOut": spec.stop_timeout,
        "ProcessType": "Interactive",
        "WorkingDirectory": str(spec.data_dir),
        "StandardOutPath": str(spec.stdout_log),
        "StandardErrorPath": str(spec.stderr_log),
        "EnvironmentVariables": dict(spec.environment),
    }


def launchd_plan(spec: ServiceSpec, *, uid: int, home: Path) -> ServicePlan:
    """Write the plist and (re)load it; running it twice leaves one fresh instance."""
    path = plist_path(spec.label, home)
    target = _target(spec.label, uid)
    return ServicePlan(
        path=path,
        content=plistlib.dumps(plist_dict(spec), fmt=plistlib.FMT_XML, sort_keys=True),
        mode=spec.file_mode,
        directories=(spec.data_dir, spec.log_dir),
        before=_unload_commands(target, spec.stop_timeout),
        after=(
            Command(
                ("launchctl", "enable", target),
                Expect.ANY,
                why="undo an earlier `launchctl disable`, which makes bootstrap fail",
            ),
            Command(
                ("launchctl", "bootstrap", _domain(uid), str(path)),
                Expect.SUCCESS,
                retry_for=BOOTSTRAP_RETRY,
                why="load it; RunAtLoad starts the server",
            ),
        ),
        notes=(
            f"logs: {spec.stdout_log} and {spec.stderr_log}",
            "it starts at every login; `mlx-serve service status` shows its state",
        ),
    )


def _unload_commands(target: str, exit_timeout: int) -> tuple[Command, ...]:
    return (
        Command(
            ("launchctl", "bootout", target),
            Expect.ANY,
            why="stop and unload the current instance, if one is loaded",
        ),
        Command(
            ("launchctl", "print", target),
            Expect.FAILURE,
            retry_for=exit_timeout + UNLOAD_MARGIN,
            why="wait until the old server has exited and launchd has released the label",
        ),
    )


def launchd_removal(label: str, *, uid: int, home: Path) -> RemovalPlan:
    """Stop and unload the agent (waiting for the server to exit), then delete the plist."""
    path = plist_path(label, home)
    exit_timeout = DEFAULT_EXIT_TIMEOUT
    installed = _read_plist(path)
    if installed is not None and isinstance(installed.get("ExitTimeOut"), int):
        exit_timeout = installed["ExitTimeOut"]
    return RemovalPlan(path=path, before=_unload_commands(_target(label, uid), exit_timeout))


def _read_plist(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, plistlib.InvalidFileException, ValueError):
        data = plistlib.loads(path.read_bytes())
        if isinstance(data, dict):
            return data
    return None


def parse_launchctl_print(text: str) -> dict[str, str]:
    """The top-level ``key = value`` lines of ``launchctl print <service>``.

    The format is for humans and nests blocks (``environment = { ... }``, ``arguments =
    { ... }``); only the service's own level is read, so a nested ``state`` or ``pid`` can
    never be mistaken for the service's.
    """
    fields: dict[str, str] = {}
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if line.endswith("{"):
            depth += 1
            continue
        if line == "}":
            depth -= 1
            continue
        if depth == 1 and " = " in line:
            key, _, value = line.partition(" = ")
            fields.setdefault(key.strip(), value.strip())
    return fields


_LEADING_INT = re.compile(r"-?\d+")


def _leading_int(value: str | None) -> int | None:
    if value is None:
        return None
    match = _LEADING_INT.match(value)
    return int(match.group()) if match else None


def launchd_status(label: str, *, uid: int, home: Path, runner: Runner) -> ServiceStatus:
    """Installed (the plist exists), loaded (``launchctl print`` finds it), state, pid."""
    path = plist_path(label, home)
    status = ServiceStatus(manager="launchd", name=label, path=path, installed=path.exists())
    installed = _read_plist(path) if status.installed else None
    if installed is not None:
        args = installed.get("ProgramArguments")
        if isinstance(args, list) and args and isinstance(args[0], str):
            status.program = args[0]
        for key, attr in (("StandardOutPath", "stdout_log"), ("StandardErrorPath", "stderr_log")):
            if isinstance(installed.get(key), str):
                setattr(status, attr, installed[key])
    result = runner.run(("launchctl", "print", _target(label, uid)))
    if result.returncode == 127:
        status.error = result.stderr.strip() or "launchctl not found"
        return status
    if not result.ok:
        status.loaded = False
        status.running = False
        status.state = "not loaded"
        return status
    fields = parse_launchctl_print(result.stdout)
    status.details = fields
    status.loaded = True
    status.state = fields.get("state")
    status.running = status.state == "running"
    status.pid = _leading_int(fields.get("pid"))
    status.last_exit_code = _leading_int(fields.get("last exit code"))
    status.last_signal = fields.get("last terminating signal")
    return status
