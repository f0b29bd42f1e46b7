"""Linux: a systemd user unit in ``$XDG_CONFIG_HOME/systemd/user``, managed with
``systemctl --user``.

Unit files are not shell: ``%`` starts a specifier everywhere (``%h`` = home, ``%b`` = boot
id, silently substituted), ``$`` starts a variable in command lines, and quoting/escaping
follow systemd's own rules. Every value written here goes through one of the three escaping
functions below, and the tests run ``systemd-analyze verify`` on the result.

Logging goes to append-mode files in the data directory rather than the journal: the same
place as on macOS and as the workers' logs, readable without journal permissions (on a
volatile journal an unprivileged user's ``journalctl --user`` shows nothing), and it needs
systemd >= 240, like ``Type=exec``. The cost is that the files are not rotated.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Mapping
from pathlib import Path

from .plan import Command, Expect, RemovalPlan, Runner, ServicePlan
from .spec import ServiceError, ServiceSpec, check_no_control_chars
from .status import ServiceStatus

__all__ = [
    "CONFIG_ERROR_EXIT",
    "DEFAULT_UNIT",
    "SHOW_PROPERTIES",
    "escape_path",
    "exec_line",
    "parse_systemctl_show",
    "quote_environment",
    "quote_exec_arg",
    "split_exec_line",
    "systemd_plan",
    "systemd_removal",
    "systemd_status",
    "unit_dir",
    "unit_name",
    "unit_path",
    "unit_text",
]

DEFAULT_UNIT = "mlx-serve"
RESTART_SEC = 5
CONFIG_ERROR_EXIT = 2
"""``mlx-serve start`` exits 2 on a config error (and click on a usage error): restarting
cannot fix either, so systemd is told not to (``RestartPreventExitStatus``)."""
SHOW_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "ExecMainCode",
    "ExecMainStatus",
    "UnitFileState",
    "NRestarts",
)

_SAFE_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_CLD_EXITED = 1
_SYSTEMCTL_HINT = (
    "`systemctl --user` needs your user's systemd instance: log in normally (not only `su`), "
    "or run `loginctl enable-linger $USER` and set XDG_RUNTIME_DIR=/run/user/$(id -u)"
)


def unit_name(label: str) -> str:
    """``mlx-serve`` -> ``mlx-serve.service`` (a trailing ``.service`` is accepted too)."""
    return label if label.endswith(".service") else f"{label}.service"


def unit_dir(environ: Mapping[str, str], home: Path) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user``, else ``~/.config/systemd/user``.

    The XDG spec says a relative ``XDG_CONFIG_HOME`` is invalid and must be ignored, and the
    user manager does exactly that, so a relative one is ignored here too.
    """
    xdg = environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
    return base / "systemd" / "user"


def unit_path(label: str, environ: Mapping[str, str], home: Path) -> Path:
    return unit_dir(environ, home) / unit_name(label)


# --- escaping ------------------------------------------------------------------------------


def quote_exec_arg(arg: str) -> str:
    """One ``ExecStart=`` word that systemd parses back into exactly ``arg``.

    systemd first resolves ``%`` specifiers on the line (``%%`` is a literal ``%``), then
    splits it into words, honouring double quotes with C escapes (``\\\\``, ``\\"``), and at
    exec time expands ``$VAR`` (``$$`` is a literal ``$``). Words made only of harmless
    characters are written bare so the unit stays readable.
    """
    check_no_control_chars(arg, "a command-line argument")
    if _SAFE_WORD.fullmatch(arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def exec_line(argv: tuple[str, ...] | list[str]) -> str:
    return " ".join(quote_exec_arg(arg) for arg in argv)


def quote_environment(name: str, value: str) -> str:
    """The value of one ``Environment=`` line: ``"NAME=value"``, quoted as a whole.

    ``Environment=`` unquotes and C-unescapes each assignment and resolves specifiers, but
    gives ``$`` no meaning, so only ``\\``, ``"`` and ``%`` are escaped.
    """
    check_no_control_chars(value, f"${name}")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{name}={escaped}"'


def escape_path(path: Path | str) -> str:
    """A path for ``WorkingDirectory=`` or ``append:``: taken verbatim (quotes would become
    part of the path), so only specifiers are escaped."""
    text = str(path)
    check_no_control_chars(text, "a path")
    if not Path(text).is_absolute():
        raise ServiceError(f"not an absolute path: {text!r}")
    return text.replace("%", "%%")


def split_exec_line(line: str) -> list[str]:
    """The inverse of :func:`exec_line`, to read an installed unit's command back."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        word: list[str] = []
        if line[i] == '"':
            i += 1
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                word.append(line[i])
                i += 1
            i += 1  # the closing quote
        else:
            while i < n and line[i] != " ":
                word.append(line[i])
                i += 1
        words.append("".join(word).replace("%%", "%").replace("$$", "$"))
    return words


# --- the unit ------------------------------------------------------------------------------


def unit_text(spec: ServiceSpec) -> str:
    """The unit file.

    * ``Type=exec``: ``systemctl restart`` reports an interpreter that no longer exists (a
      moved venv) as a failure instead of "started" followed by a crash loop.
    * ``KillMode=mixed``: SIGTERM goes to the server only, which stops its workers itself
      (draining requests first); only if it is still running after ``TimeoutStopSec`` does
      everything left in the cgroup get SIGKILL. ``control-group`` would SIGTERM the
      workers at the same moment, cutting off requests the server is still draining.
    * ``ExecReload``: SIGHUP means "reload the config" to the server.
    * ``After=network.target`` only orders anything in the system manager; the user manager
      has no such unit, and the server binds localhost by default anyway.
    """
    env_lines = [
        f"Environment={quote_environment(name, value)}" for name, value in spec.environment
    ]
    lines = [
        "# Written by `mlx-serve service install`; run it again rather than editing this file.",
        "[Unit]",
        f"Description={spec.description.replace('%', '%%')}",
        "After=network.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_line(spec.argv)}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={escape_path(spec.data_dir)}",
        *env_lines,
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"RestartPreventExitStatus={CONFIG_ERROR_EXIT}",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={spec.stop_timeout}",
        f"StandardOutput=append:{escape_path(spec.stdout_log)}",
        f"StandardError=append:{escape_path(spec.stderr_log)}",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"


def _systemctl(*args: str) -> tuple[str, ...]:
    return ("systemctl", "--user", *args)


def systemd_plan(
    spec: ServiceSpec, *, environ: Mapping[str, str], home: Path, user: str
) -> ServicePlan:
    """Write the unit, make the manager read it, enable it at login and (re)start it.

    ``restart`` rather than ``enable --now``: ``--now`` only starts a stopped unit, so a
    reinstall with a new ``--port`` would leave the old process running. ``reset-failed``
    first, so a unit that had given up (start limit) can be started again.
    """
    name = unit_name(spec.label)
    return ServicePlan(
        path=unit_path(spec.label, environ, home),
        content=unit_text(spec).encode("utf-8"),
        mode=spec.file_mode,
        directories=(spec.data_dir, spec.log_dir),
        after=(
            Command(_systemctl("daemon-reload"), why="read the new unit file"),
            Command(_systemctl("enable", name), why="start it at every login"),
            Command(
                _systemctl("reset-failed", name),
                Expect.ANY,
                why="clear a failed state left by an earlier install",
            ),
            Command(_systemctl("restart", name), why="start it, or restart it with this unit"),
        ),
        notes=(
            f"logs: {spec.stdout_log} and {spec.stderr_log}",
            "`mlx-serve service status` shows its state",
            "systemd stops user services when your last session ends; to keep mlx-serve "
            f"running while you are logged out, and start it at boot: "
            f"loginctl enable-linger {user}",
        ),
    )


def systemd_removal(label: str, *, environ: Mapping[str, str], home: Path) -> RemovalPlan:
    """Stop and disable the unit, delete the file, and let the manager forget it."""
    name = unit_name(label)
    return RemovalPlan(
        path=unit_path(label, environ, home),
        before=(Command(_systemctl("disable", "--now", name), why="stop it and disable it"),),
        after=(
            Command(_systemctl("daemon-reload"), why="forget the removed unit"),
            Command(_systemctl("reset-failed", name), Expect.ANY, why="drop a failed state"),
        ),
    )


# --- status --------------------------------------------------------------------------------


def parse_systemctl_show(text: str) -> dict[str, str]:
    """``systemctl show -p ...`` prints one ``Key=Value`` per line."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _read_unit(path: Path, status: ServiceStatus) -> None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key == "ExecStart":
                argv = split_exec_line(value)
                status.program = argv[0] if argv else None
            elif key in ("StandardOutput", "StandardError") and value.startswith("append:"):
                log = value.removeprefix("append:").replace("%%", "%")
                if key == "StandardOutput":
                    status.stdout_log = log
                else:
                    status.stderr_log = log


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def systemd_status(
    label: str, *, environ: Mapping[str, str], home: Path, runner: Runner
) -> ServiceStatus:
    """Installed (the unit file exists), then what the user manager says about the unit."""
    name = unit_name(label)
    path = unit_path(label, environ, home)
    status = ServiceStatus(manager="systemd", name=name, path=path, installed=path.exists())
    if status.installed:
        _read_unit(path, status)
    result = runner.run(_systemctl("show", name, "-p", ",".join(SHOW_PROPERTIES)))
    if not result.ok:
        detail = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        status.error = f"{detail} ({_SYSTEMCTL_HINT})"
        return status
    fields = parse_systemctl_show(result.stdout)
    status.details = fields
    active, sub = fields.get("ActiveState"), fields.get("SubState")
    status.loaded = fields.get("LoadState") == "loaded"
    status.running = active in ("active", "reloading")
    status.state = f"{active} ({sub})" if active and sub else active
    status.enabled = fields.get("UnitFileState", "").startswith("enabled")
    pid = _int(fields.get("MainPID"))
    status.pid = pid if pid else None
    code, value = _int(fields.get("ExecMainCode")), _int(fields.get("ExecMainStatus"))
    if code == _CLD_EXITED:
        status.last_exit_code = value
    elif code and value is not None:  # killed or dumped: the status is the signal
        status.last_signal = _signal_name(value)
    return status
