"""Unit tests for mlx_serve.service and `mlx-serve service`: plans, files, commands, status.

No test runs launchctl or systemctl: the CLI is built with a recording runner, and a guard
fails any test that would start one of them for real. ``systemd-analyze verify`` (which
only reads files) checks the generated unit on Linux.
"""

from __future__ import annotations

import inspect
import json
import os
import plistlib
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mlx_serve.cli.service_cmd import (
    TRANSIENT_ENV,
    build_app,
    service_environment,
    status_exit_code,
)
from mlx_serve.files import atomic_write
from mlx_serve.service import (
    CommandResult,
    Expect,
    Platform,
    ServiceContext,
    ServiceError,
    ServiceSpec,
    build_spec,
    detect_platform,
    install_plan,
    parse_launchctl_print,
    parse_systemctl_show,
    removal_plan,
)
from mlx_serve.service.launchd import launchd_status
from mlx_serve.service.plan import Command, SubprocessRunner, run_steps
from mlx_serve.service.spec import (
    PASSTHROUGH_ENV,
    SECRET_ENV,
    SERVER_DRAIN_TIMEOUT,
    stop_timeout_for,
)
from mlx_serve.service.systemd import (
    escape_path,
    quote_environment,
    quote_exec_arg,
    split_exec_line,
    systemd_status,
    unit_dir,
    unit_text,
)

UID = os.getuid()
LABEL = "com.mlx-serve.server"
TARGET = f"gui/{UID}/{LABEL}"
UNIT = "mlx-serve.service"
MANAGERS = {"launchctl", "systemctl", "loginctl"}


# --- fixtures and fakes --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_real_service_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that would run launchctl/systemctl/loginctl on this machine."""
    real_run = subprocess.run

    def guarded(args: Any, *a: Any, **kw: Any) -> Any:
        argv0 = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        if Path(str(argv0)).name in MANAGERS:
            raise AssertionError(f"a test tried to run {args!r} for real")
        return real_run(args, *a, **kw)

    monkeypatch.setattr(subprocess, "run", guarded)


class FakeClock:
    """``sleep`` advances ``monotonic``: retry loops finish instantly and deterministically."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


LAUNCHCTL_PRINT_RUNNING = f"""\
gui/501/{LABEL} = {{
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/{LABEL}.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/me/venv/bin/python
\targuments = {{
\t\t/Users/me/venv/bin/python
\t\t-m
\t\tmlx_serve.cli.main
\t\tstart
\t}}

\tworking directory = /Users/me/.mlx-serve

\tenvironment = {{
\t\tPATH => /opt/homebrew/bin:/usr/bin:/bin
\t\tXPC_SERVICE_NAME => {LABEL}
\t}}

\tdomain = gui/501 [100008]
\tminimum runtime = 10
\texit timeout = 60
\truns = 1
\tpid = 4242
\timmediate reason = speculative
\tlast exit code = (never exited)

\tendpoints = {{
\t\t"com.example" = {{
\t\t\tport = 0x1a03
\t\t\tstate = active
\t\t\tpid = 1
\t\t}}
\t}}

\tspawn type = interactive (4)
\tjob state = running
\tproperties = keepalive | runatload | inferred program
}}
"""

LAUNCHCTL_PRINT_CRASHED = f"""\
gui/501/{LABEL} = {{
\tactive count = 0
\tstate = not running
\truns = 3
\tlast exit code = 78: EX_CONFIG
\tspawn type = interactive (4)
}}
"""

LAUNCHCTL_PRINT_SIGNALED = f"""\
gui/501/{LABEL} = {{
\tstate = spawn scheduled
\tlast terminating signal = Killed: 9
}}
"""


class FakeLaunchd:
    """launchctl as far as the plans use it: one label, loaded or not."""

    def __init__(self, *, bootstrap_failures: int = 0, never_exits: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.loaded = False
        self.bootstrap_failures = bootstrap_failures
        self.never_exits = never_exits

    def run(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(tuple(argv))
        assert argv[0] == "launchctl"
        verb = argv[1]
        if verb == "bootout":
            if not self.loaded:
                return CommandResult(3, "", "Boot-out failed: 3: No such process")
            self.loaded = self.never_exits
            return CommandResult(0)
        if verb == "print":
            if self.loaded:
                return CommandResult(0, LAUNCHCTL_PRINT_RUNNING)
            return CommandResult(113, "", f'Could not find service "{LABEL}" in domain')
        if verb == "bootstrap":
            if self.bootstrap_failures:
                self.bootstrap_failures -= 1
                return CommandResult(5, "", "Bootstrap failed: 5: Input/output error")
            if self.loaded:
                return CommandResult(37, "", "Bootstrap failed: 37: Operation already in progress")
            self.loaded = True
            return CommandResult(0)
        if verb == "enable":
            return CommandResult(0)
        raise AssertionError(f"unexpected launchctl call {argv}")


SYSTEMCTL_SHOW_RUNNING = """\
LoadState=loaded
ActiveState=active
SubState=running
MainPID=4321
ExecMainCode=0
ExecMainStatus=0
UnitFileState=enabled
NRestarts=0
"""


class FakeSystemctl:
    """``systemctl --user``: every verb succeeds unless told otherwise."""

    def __init__(
        self, *, fail: dict[str, CommandResult] | None = None, show: str = SYSTEMCTL_SHOW_RUNNING
    ) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail or {}
        self.show = show

    def run(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(tuple(argv))
        assert list(argv[:2]) == ["systemctl", "--user"]
        verb = argv[2]
        if verb in self.fail:
            return self.fail[verb]
        if verb == "show":
            return CommandResult(0, self.show)
        return CommandResult(0)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    """An isolated user: HOME, XDG_CONFIG_HOME and the data dir under tmp_path."""
    values: dict[str, str | None] = dict.fromkeys((*PASSTHROUGH_ENV, *SECRET_ENV))
    values.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        MLX_SERVE_HOME=str(tmp_path / "data"),
        PATH="/opt/homebrew/bin:/usr/bin:/bin",
    )
    return values


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "cfg" / "models.yaml"
    path.parent.mkdir()
    path.write_text("server:\n  stop_timeout: 20s\nmodels: {}\n", encoding="utf-8")
    return path


def cli(runner: Any, clock: FakeClock | None = None) -> typer.Typer:
    """The service app mounted the way the main CLI mounts it."""
    clock = clock or FakeClock()
    root = typer.Typer()
    root.add_typer(build_app(runner, sleep=clock.sleep, monotonic=clock.monotonic))
    return root


def invoke(
    runner: Any, args: list[str], env: dict[str, str | None], clock: FakeClock | None = None
) -> Any:
    return CliRunner().invoke(cli(runner, clock), ["service", *args], env=env)


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


def make_spec(tmp_path: Path, label: str = LABEL, **environ: str) -> ServiceSpec:
    return build_spec(
        executable="/opt/venv/bin/python",
        config_path=tmp_path / "models.yaml",
        data_dir=tmp_path / "data",
        label=label,
        environ={"PATH": "/usr/bin:/bin", **environ},
        port=9000,
    )


# --- the spec ------------------------------------------------------------------------------


def test_drain_timeout_matches_the_server() -> None:
    from mlx_serve.server import serve

    assert inspect.signature(serve).parameters["drain_timeout"].default == SERVER_DRAIN_TIMEOUT


def test_stop_timeout_outlasts_drain_and_worker_grace() -> None:
    assert stop_timeout_for(10.0) == 60
    assert stop_timeout_for(100.0) == 150
    assert stop_timeout_for(10.0) > SERVER_DRAIN_TIMEOUT + 10.0


def test_spec_runs_the_interpreter_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    monkeypatch.chdir(tmp_path)
    spec = build_spec(
        executable=str(venv_python),
        config_path=Path("models.yaml"),
        data_dir=tmp_path / "data",
        label=LABEL,
        environ={"PATH": "/a:/b", "MLX_SERVE_HOME": "/srv/mlx", "HF_HOME": "/hf", "OTHER": "x"},
        host="0.0.0.0",
        port=9000,
        server_stop_timeout=20,
    )
    # The venv's symlink is kept: resolving it would run the base interpreter without the venv.
    assert spec.argv == (
        str(venv_python),
        "-m",
        "mlx_serve.cli.main",
        "start",
        "--config",
        str(tmp_path / "models.yaml"),
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
    )
    assert dict(spec.environment) == {
        "PATH": "/a:/b",
        "PYTHONUNBUFFERED": "1",
        "MLX_SERVE_HOME": "/srv/mlx",
        "HF_HOME": "/hf",
    }
    assert spec.secret_names == frozenset()
    assert spec.file_mode == 0o644
    assert spec.stop_timeout == 70
    assert spec.stdout_log == tmp_path / "data" / "logs" / "service.out.log"


def test_spec_marks_secrets_and_redacts_them(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, MLX_API_KEY="sk-123", HF_TOKEN="hf_abc")
    assert spec.secret_names == {"MLX_API_KEY", "HF_TOKEN"}
    assert spec.file_mode == 0o600
    shown = dict(spec.redacted().environment)
    assert shown["MLX_API_KEY"] == shown["HF_TOKEN"] == "<redacted>"
    assert shown["PATH"] == "/usr/bin:/bin"


@pytest.mark.parametrize("label", ["", "-x", "a/b", "a b", "tmpl@x", "x" * 201])
def test_spec_rejects_bad_labels(tmp_path: Path, label: str) -> None:
    with pytest.raises(ServiceError, match="invalid service label"):
        build_spec(
            executable="/usr/bin/python3",
            config_path=tmp_path / "m.yaml",
            data_dir=tmp_path,
            label=label,
            environ={},
        )


def test_spec_rejects_control_characters_and_relative_interpreters(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="control character"):
        build_spec(
            executable="/usr/bin/python3",
            config_path=tmp_path / "m.yaml",
            data_dir=tmp_path,
            label=LABEL,
            environ={},
            host="evil\nExecStartPre=/bin/sh",
        )
    with pytest.raises(ServiceError, match="not absolute"):
        build_spec(
            executable="python3",
            config_path=tmp_path / "m.yaml",
            data_dir=tmp_path,
            label=LABEL,
            environ={},
        )


def test_detect_platform() -> None:
    assert detect_platform("darwin") is Platform.LAUNCHD
    assert detect_platform("linux") is Platform.SYSTEMD
    with pytest.raises(ServiceError, match="win32"):
        detect_platform("win32")


# --- launchd -------------------------------------------------------------------------------


def launchd_ctx(tmp_path: Path) -> ServiceContext:
    return ServiceContext(Platform.LAUNCHD, home=tmp_path / "home", uid=UID, user="me")


def test_plist_round_trips_with_the_right_keys(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, MLX_SERVE_HOME=str(tmp_path / "data"))
    plan = install_plan(launchd_ctx(tmp_path), spec)
    assert plan.path == tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    plist = plistlib.loads(plan.content)
    assert plist["Label"] == LABEL
    args = plist["ProgramArguments"]
    assert args[:5] == ["/opt/venv/bin/python", "-m", "mlx_serve.cli.main", "start", "--config"]
    assert Path(args[0]).is_absolute() and Path(args[5]).is_absolute()
    assert args[6:] == ["--port", "9000"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 10
    assert plist["ExitTimeOut"] == spec.stop_timeout >= 60
    assert plist["ProcessType"] == "Interactive"
    data = tmp_path / "data"
    assert plist["WorkingDirectory"] == str(data)
    assert plist["StandardOutPath"] == str(data / "logs" / "service.out.log")
    assert plist["StandardErrorPath"] == str(data / "logs" / "service.err.log")
    assert plist["EnvironmentVariables"] == {
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "MLX_SERVE_HOME": str(data),
    }
    assert plan.mode == 0o644
    assert plan.directories == (data, data / "logs")


def test_plist_with_a_secret_is_private(tmp_path: Path) -> None:
    plan = install_plan(launchd_ctx(tmp_path), make_spec(tmp_path, MLX_API_KEY="sk-1"))
    assert plan.mode == 0o600
    assert plistlib.loads(plan.content)["EnvironmentVariables"]["MLX_API_KEY"] == "sk-1"


def test_launchd_plan_commands(tmp_path: Path) -> None:
    plan = install_plan(launchd_ctx(tmp_path), make_spec(tmp_path))
    assert [c.argv for c in plan.before] == [
        ("launchctl", "bootout", TARGET),
        ("launchctl", "print", TARGET),
    ]
    assert [c.expect for c in plan.before] == [Expect.ANY, Expect.FAILURE]
    assert plan.before[1].retry_for >= plan_stop_timeout(plan)
    assert [c.argv for c in plan.after] == [
        ("launchctl", "enable", TARGET),
        ("launchctl", "bootstrap", f"gui/{UID}", str(plan.path)),
    ]
    assert plan.after[1].expect is Expect.SUCCESS and plan.after[1].retry_for > 0
    removal = removal_plan(launchd_ctx(tmp_path), LABEL)
    assert removal.commands == plan.before
    assert removal.path == plan.path


def plan_stop_timeout(plan: Any) -> int:
    timeout: int = plistlib.loads(plan.content)["ExitTimeOut"]
    return timeout


def test_parse_launchctl_print_reads_only_the_service_level() -> None:
    fields = parse_launchctl_print(LAUNCHCTL_PRINT_RUNNING)
    assert fields["state"] == "running"  # not the nested endpoint's "active"
    assert fields["pid"] == "4242"  # not the nested endpoint's "1"
    assert fields["last exit code"] == "(never exited)"
    assert "PATH" not in fields and "-m" not in fields


def test_launchd_status_running_crashed_signaled_and_absent(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def status_for(result: CommandResult) -> Any:
        calls: list[tuple[str, ...]] = []

        class Runner:
            def run(self, argv: Sequence[str]) -> CommandResult:
                calls.append(tuple(argv))
                return result

        status = launchd_status(LABEL, uid=UID, home=home, runner=Runner())
        assert calls == [("launchctl", "print", TARGET)]
        return status

    running = status_for(CommandResult(0, LAUNCHCTL_PRINT_RUNNING))
    assert (running.loaded, running.running, running.pid) == (True, True, 4242)
    assert running.last_exit_code is None
    assert running.installed is False and status_exit_code(running) == 5

    crashed = status_for(CommandResult(0, LAUNCHCTL_PRINT_CRASHED))
    assert (crashed.running, crashed.pid, crashed.last_exit_code) == (False, None, 78)
    assert crashed.state == "not running"

    signaled = status_for(CommandResult(0, LAUNCHCTL_PRINT_SIGNALED))
    assert signaled.last_signal == "Killed: 9"
    assert signaled.state == "spawn scheduled"

    absent = status_for(CommandResult(113, "", "Could not find service"))
    assert (absent.loaded, absent.running, absent.state) == (False, False, "not loaded")

    missing = status_for(CommandResult(127, "", "launchctl: command not found"))
    assert missing.running is None and "not found" in (missing.error or "")


# --- systemd -------------------------------------------------------------------------------


def systemd_ctx(tmp_path: Path, environ: dict[str, str] | None = None) -> ServiceContext:
    if environ is None:
        environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    return ServiceContext(
        Platform.SYSTEMD, home=tmp_path / "home", uid=UID, user="me", environ=environ
    )


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, keyed ``Section.Key``, values in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_unit_has_the_right_directives(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, MLX_SERVE_HOME=str(tmp_path / "data"))
    d = directives(unit_text(spec))
    data = tmp_path / "data"
    assert d["Unit.Description"][0].startswith("mlx-serve")
    assert d["Unit.After"] == ["network.target"]
    assert d["Service.Type"] == ["exec"]
    assert split_exec_line(d["Service.ExecStart"][0]) == list(spec.argv)
    assert d["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Service.Restart"] == ["on-failure"]
    assert d["Service.RestartSec"] == ["5"]
    assert d["Service.RestartPreventExitStatus"] == ["2"]
    assert d["Service.KillMode"] == ["mixed"]
    assert d["Service.KillSignal"] == ["SIGTERM"]
    assert int(d["Service.TimeoutStopSec"][0]) == spec.stop_timeout >= 60
    assert d["Service.WorkingDirectory"] == [str(data)]
    assert d["Service.Environment"] == [
        '"PATH=/usr/bin:/bin"',
        '"PYTHONUNBUFFERED=1"',
        f'"MLX_SERVE_HOME={data}"',
    ]
    assert d["Service.StandardOutput"] == [f"append:{data}/logs/service.out.log"]
    assert d["Service.StandardError"] == [f"append:{data}/logs/service.err.log"]
    assert d["Install.WantedBy"] == ["default.target"]


def test_unit_path_respects_xdg_config_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert unit_dir({}, home) == home / ".config" / "systemd" / "user"
    assert unit_dir({"XDG_CONFIG_HOME": "/cfg"}, home) == Path("/cfg/systemd/user")
    assert unit_dir({"XDG_CONFIG_HOME": "relative"}, home) == home / ".config" / "systemd" / "user"
    plan = install_plan(systemd_ctx(tmp_path), make_spec(tmp_path, "mlx-serve"))
    assert plan.path == tmp_path / "xdg" / "systemd" / "user" / UNIT


def test_systemd_plan_commands(tmp_path: Path) -> None:
    plan = install_plan(systemd_ctx(tmp_path), make_spec(tmp_path, "mlx-serve"))
    assert plan.before == ()
    assert [c.argv for c in plan.after] == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", UNIT),
        ("systemctl", "--user", "reset-failed", UNIT),
        ("systemctl", "--user", "restart", UNIT),
    ]
    assert [c.expect for c in plan.after] == [
        Expect.SUCCESS,
        Expect.SUCCESS,
        Expect.ANY,
        Expect.SUCCESS,
    ]
    assert any("loginctl enable-linger me" in note for note in plan.notes)
    removal = removal_plan(systemd_ctx(tmp_path), "mlx-serve")
    assert [c.argv for c in removal.before] == [("systemctl", "--user", "disable", "--now", UNIT)]
    assert [c.argv for c in removal.after] == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "reset-failed", UNIT),
    ]


def test_unit_with_a_secret_is_private_and_escaped(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, MLX_API_KEY='a"b\\c%d$e')
    plan = install_plan(systemd_ctx(tmp_path), spec)
    assert plan.mode == 0o600
    assert 'Environment="MLX_API_KEY=a\\"b\\\\c%%d$e"' in plan.content.decode()


TRICKY = [
    "plain",
    "with space",
    "100%",
    "%h",
    "$HOME",
    "${X}",
    "$$",
    'quo"te',
    "back\\slash",
    "trailing\\",
    ";",
    "\\;",
    "'single'",
    "",
    "ünïcödé",
    "a=b",
    "--port",
]


@pytest.mark.parametrize("arg", TRICKY)
def test_exec_quoting_round_trips(arg: str) -> None:
    quoted = quote_exec_arg(arg)
    assert split_exec_line(f"/usr/bin/python3 {quoted} -m x") == [
        "/usr/bin/python3",
        arg,
        "-m",
        "x",
    ]
    # Nothing systemd would interpret survives unescaped: %, $ and " only in escaped forms.
    body = quoted.replace("%%", "").replace("$$", "").replace('\\"', "").replace("\\\\", "")
    assert "%" not in body and "$" not in body
    if quoted.startswith('"'):
        assert '"' not in body[1:-1]


def test_exec_quoting_leaves_plain_words_alone() -> None:
    assert quote_exec_arg("/usr/bin/python3") == "/usr/bin/python3"
    assert quote_exec_arg("--config") == "--config"
    assert quote_exec_arg("a b") == '"a b"'
    assert quote_exec_arg("50%") == '"50%%"'
    assert quote_exec_arg("$HOME") == '"$$HOME"'


def test_environment_and_path_escaping() -> None:
    assert quote_environment("PATH", "/a b:/c") == '"PATH=/a b:/c"'
    assert quote_environment("K", "%h$x") == '"K=%%h$x"'  # $ means nothing in Environment=
    assert escape_path("/data/100% sure") == "/data/100%% sure"
    with pytest.raises(ServiceError, match="absolute"):
        escape_path("relative/dir")
    with pytest.raises(ServiceError, match="control character"):
        quote_exec_arg("a\nb")


SYSTEMCTL_SHOW_FAILED = """\
LoadState=loaded
ActiveState=failed
SubState=failed
MainPID=0
ExecMainCode=1
ExecMainStatus=2
UnitFileState=enabled
NRestarts=0
"""

SYSTEMCTL_SHOW_KILLED = """\
LoadState=loaded
ActiveState=activating
SubState=auto-restart
MainPID=0
ExecMainCode=2
ExecMainStatus=9
UnitFileState=disabled
NRestarts=3
"""

SYSTEMCTL_SHOW_NOT_FOUND = """\
LoadState=not-found
ActiveState=inactive
SubState=dead
MainPID=0
ExecMainCode=0
ExecMainStatus=0
UnitFileState=
NRestarts=0
"""


def test_parse_systemctl_show() -> None:
    fields = parse_systemctl_show(SYSTEMCTL_SHOW_RUNNING)
    assert fields["ActiveState"] == "active" and fields["MainPID"] == "4321"
    assert parse_systemctl_show("UnitFileState=\nX=a=b\n") == {"UnitFileState": "", "X": "a=b"}


@pytest.mark.parametrize(
    ("show", "expected"),
    [
        (SYSTEMCTL_SHOW_RUNNING, (True, "active (running)", 4321, None, None, True, 0)),
        (SYSTEMCTL_SHOW_FAILED, (False, "failed (failed)", None, 2, None, True, 3)),
        (
            SYSTEMCTL_SHOW_KILLED,
            (False, "activating (auto-restart)", None, None, "SIGKILL", False, 3),
        ),
        (SYSTEMCTL_SHOW_NOT_FOUND, (False, "inactive (dead)", None, None, None, False, 3)),
    ],
)
def test_systemd_status_parsing(tmp_path: Path, show: str, expected: tuple[Any, ...]) -> None:
    ctx = systemd_ctx(tmp_path)
    plan = install_plan(ctx, make_spec(tmp_path, "mlx-serve"))
    atomic_write(plan.path, plan.content, plan.mode)
    fake = FakeSystemctl(show=show)
    status = systemd_status("mlx-serve", environ=ctx.environ, home=ctx.home, runner=fake)
    assert fake.calls == [
        (
            "systemctl",
            "--user",
            "show",
            UNIT,
            "-p",
            "LoadState,ActiveState,SubState,MainPID,ExecMainCode,ExecMainStatus,"
            "UnitFileState,NRestarts",
        )
    ]
    got = (
        status.running,
        status.state,
        status.pid,
        status.last_exit_code,
        status.last_signal,
        status.enabled,
        status_exit_code(status),
    )
    assert got == expected
    assert status.installed
    assert status.program == "/opt/venv/bin/python"
    assert status.stdout_log == str(tmp_path / "data" / "logs" / "service.out.log")


def test_systemd_status_without_a_user_manager(tmp_path: Path) -> None:
    ctx = systemd_ctx(tmp_path)
    no_bus = CommandResult(1, "", "Failed to connect to bus: No medium found")
    fake = FakeSystemctl(fail={"show": no_bus})
    status = systemd_status("mlx-serve", environ=ctx.environ, home=ctx.home, runner=fake)
    assert status.running is None
    assert "No medium found" in (status.error or "") and "enable-linger" in (status.error or "")
    assert status_exit_code(status) == 5  # not installed wins


# --- systemd-analyze verify ------------------------------------------------------------------


def systemd_verify(unit: Path, tmp_path: Path) -> tuple[int, list[str]]:
    """``systemd-analyze --user verify``; returns the exit code and the lines about ``unit``.

    verify exits 0 for unknown keys and unparsable values (it only logs them), so the
    output is what decides; lines about other units on this machine are not ours to judge.
    The user manager it simulates needs a private runtime directory, which a test process
    (no login session) does not have.
    """
    exe = shutil.which("systemd-analyze")
    if exe is None:
        if sys.platform.startswith("linux"):
            pytest.fail(
                "systemd-analyze is missing: install systemd (Debian: apt-get install -y "
                "systemd) so the generated unit can be verified"
            )
        pytest.skip("systemd-analyze exists only on Linux")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    done = subprocess.run(
        [exe, "--user", "verify", str(unit)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "LC_ALL": "C", "SYSTEMD_PAGER": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).splitlines()
    ours = [line for line in output if unit.name in line or str(unit) in line]
    if done.returncode != 0 and not ours:
        ours = output or [f"exit code {done.returncode}"]
    return done.returncode, ours


def write_unit(tmp_path: Path, spec: ServiceSpec) -> Path:
    unit = tmp_path / "verify" / UNIT
    unit.parent.mkdir(exist_ok=True)
    unit.write_text(unit_text(spec), encoding="utf-8")
    return unit


def test_systemd_analyze_accepts_the_generated_unit(tmp_path: Path) -> None:
    data = tmp_path / "data dir with 100% spaces"
    spec = build_spec(
        executable=sys.executable,
        config_path=tmp_path / "my config" / "models.yaml",
        data_dir=data,
        label="mlx-serve",
        environ={"PATH": os.environ.get("PATH", "/usr/bin"), "MLX_API_KEY": 'k%e"y$'},
        host="127.0.0.1",
        port=8095,
    )
    code, problems = systemd_verify(write_unit(tmp_path, spec), tmp_path)
    assert (code, problems) == (0, [])


def test_systemd_analyze_parses_a_quoted_interpreter_path_back_exactly(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists, so it proves the path survived quoting.
    exe = tmp_path / "my venv" / "100% bin" / "python"
    exe.parent.mkdir(parents=True)
    shutil.copy("/bin/true", exe)
    spec = build_spec(
        executable=str(exe),
        config_path=tmp_path / "models.yaml",
        data_dir=tmp_path / "data",
        label="mlx-serve",
        environ={"PATH": "/usr/bin"},
    )
    assert systemd_verify(write_unit(tmp_path, spec), tmp_path) == (0, [])

    exe.unlink()
    code, problems = systemd_verify(write_unit(tmp_path, spec), tmp_path)
    assert code != 0
    assert any(f"{exe} is not executable" in line for line in problems), problems


def test_systemd_analyze_check_would_catch_a_bad_directive(tmp_path: Path) -> None:
    # The harness must see problems verify only logs (exit code 0): a typo'd KillMode.
    spec = make_spec(tmp_path, "mlx-serve")
    unit = write_unit(tmp_path, spec)
    text = unit.read_text().replace("KillMode=mixed", "KillMode=mixd")
    text = text.replace("/opt/venv/bin/python", sys.executable)
    unit.write_text(text)
    code, problems = systemd_verify(unit, tmp_path)
    assert any("mixd" in line for line in problems), (code, problems)


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_write_sets_the_mode_regardless_of_umask(tmp_path: Path) -> None:
    target = tmp_path / "dir" / "unit.service"
    old = os.umask(0)
    try:
        atomic_write(target, b"secret", 0o600)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"public", 0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["unit.service"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_atomic_write_never_leaves_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "x.plist"
    target.write_bytes(b"old and complete")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    if failing == "replace":
        monkeypatch.setattr(Path, "replace", boom)
    else:
        monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new", 0o644)
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["x.plist"]  # no temp file left


# --- running steps -------------------------------------------------------------------------


def test_run_steps_retries_until_met_and_reports_failures() -> None:
    clock = FakeClock()
    results = iter([CommandResult(5), CommandResult(5), CommandResult(0)])

    class Flaky:
        def run(self, argv: Sequence[str]) -> CommandResult:
            return next(results)

    run_steps(
        [Command(("x",), retry_for=10)], Flaky(), sleep=clock.sleep, monotonic=clock.monotonic
    )
    assert clock.now == 1.0

    class Always:
        def __init__(self, result: CommandResult) -> None:
            self.result = result

        def run(self, argv: Sequence[str]) -> CommandResult:
            return self.result

    with pytest.raises(ServiceError, match=r"`a b` failed with exit code 3: nope"):
        run_steps([Command(("a", "b"))], Always(CommandResult(3, "", "nope\n")))
    run_steps([Command(("a",), Expect.ANY)], Always(CommandResult(3)))
    with pytest.raises(ServiceError, match="still succeeds after 5s"):
        run_steps(
            [Command(("a",), Expect.FAILURE, retry_for=5)],
            Always(CommandResult(0)),
            sleep=clock.sleep,
            monotonic=clock.monotonic,
        )


def test_subprocess_runner_reports_instead_of_raising() -> None:
    runner = SubprocessRunner(timeout=30)
    done = runner.run([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"])
    assert (done.returncode, done.stdout.strip()) == (3, "out")
    missing = runner.run(["/nonexistent/definitely-not-a-command"])
    assert missing.returncode == 127 and "not found" in missing.stderr


def test_the_guard_stops_real_service_managers() -> None:
    with pytest.raises(AssertionError, match="for real"):
        SubprocessRunner().run(["systemctl", "--user", "status"])


# --- the CLI -------------------------------------------------------------------------------


def test_cli_install_launchd_writes_the_plist_and_loads_it(
    tmp_path: Path, env: dict[str, str | None], config_file: Path
) -> None:
    fake = FakeLaunchd()
    result = invoke(fake, ["install", "--config", str(config_file), "--platform", "launchd"], env)
    assert result.exit_code == 0, result.output
    plist_file = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    expected = [
        ("launchctl", "bootout", TARGET),
        ("launchctl", "print", TARGET),
        ("launchctl", "enable", TARGET),
        ("launchctl", "bootstrap", f"gui/{UID}", str(plist_file)),
    ]
    assert fake.calls == expected
    plist = plistlib.loads(plist_file.read_bytes())
    assert plist["ProgramArguments"] == [
        sys.executable,
        "-m",
        "mlx_serve.cli.main",
        "start",
        "--config",
        str(config_file),
    ]
    assert plist["ExitTimeOut"] == 70  # 30 s drain + the config's 20 s stop_timeout + margin
    assert plist["EnvironmentVariables"]["MLX_SERVE_HOME"] == str(tmp_path / "data")
    assert (tmp_path / "data" / "logs").is_dir()
    assert "installed and started" in result.stderr

    # Again: the running instance is unloaded, waited for, and replaced; one stays loaded.
    fake.calls.clear()
    before = plist_file.read_bytes()
    again = invoke(fake, ["install", "--config", str(config_file), "--platform", "launchd"], env)
    assert again.exit_code == 0, again.output
    assert fake.calls == [
        ("launchctl", "bootout", TARGET),
        ("launchctl", "print", TARGET),
        ("launchctl", "enable", TARGET),
        ("launchctl", "bootstrap", f"gui/{UID}", str(plist_file)),
    ]
    assert fake.loaded
    assert plist_file.read_bytes() == before


def test_cli_install_launchd_rides_out_launchds_bootout_race(
    env: dict[str, str | None], config_file: Path
) -> None:
    fake = FakeLaunchd(bootstrap_failures=2)
    result = invoke(fake, ["install", "-c", str(config_file), "--platform", "launchd"], env)
    assert result.exit_code == 0, result.output
    assert [c[1] for c in fake.calls].count("bootstrap") == 3
    assert fake.loaded


def test_cli_install_launchd_fails_when_the_old_server_never_exits(
    env: dict[str, str | None], config_file: Path
) -> None:
    fake = FakeLaunchd(never_exits=True)
    fake.loaded = True
    clock = FakeClock()
    result = invoke(fake, ["install", "-c", str(config_file), "--platform", "launchd"], env, clock)
    assert result.exit_code == 1
    assert "still succeeds after 80s" in result.stderr  # ExitTimeOut 70 + 10 margin
    assert not any(c[1] == "bootstrap" for c in fake.calls)


def test_cli_install_systemd_writes_the_unit_and_starts_it(
    tmp_path: Path, env: dict[str, str | None], config_file: Path
) -> None:
    fake = FakeSystemctl()
    args = ["install", "-c", str(config_file), "--port", "9001", "--platform", "systemd"]
    result = invoke(fake, args, {**env, "MLX_API_KEY": "sk-live"})
    assert result.exit_code == 0, result.output
    expected = [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", UNIT),
        ("systemctl", "--user", "reset-failed", UNIT),
        ("systemctl", "--user", "restart", UNIT),
    ]
    assert fake.calls == expected
    unit = tmp_path / "xdg" / "systemd" / "user" / UNIT
    text = unit.read_text()
    d = directives(text)
    assert split_exec_line(d["Service.ExecStart"][0])[-2:] == ["--port", "9001"]
    assert '"MLX_API_KEY=sk-live"' in d["Service.Environment"]
    assert stat.S_IMODE(unit.stat().st_mode) == 0o600
    assert "loginctl enable-linger" in result.stderr
    assert "MLX_API_KEY" in result.stderr and "sk-live" not in result.output

    fake.calls.clear()
    again = invoke(fake, args, {**env, "MLX_API_KEY": "sk-live"})
    assert again.exit_code == 0, again.output
    assert fake.calls == expected  # daemon-reload + restart: the new definition runs
    assert unit.read_text() == text


def test_cli_install_reports_a_failing_manager(
    env: dict[str, str | None], config_file: Path
) -> None:
    no_bus = CommandResult(1, "", "Failed to connect to bus: No medium found")
    fake = FakeSystemctl(fail={"daemon-reload": no_bus})
    result = invoke(fake, ["install", "-c", str(config_file), "--platform", "systemd"], env)
    assert result.exit_code == 1
    assert "systemctl --user daemon-reload" in result.stderr
    assert "No medium found" in result.stderr
    assert fake.calls == [("systemctl", "--user", "daemon-reload")]


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_cli_dry_run_prints_everything_and_changes_nothing(
    tmp_path: Path, env: dict[str, str | None], config_file: Path, platform: str
) -> None:
    fake = FakeLaunchd() if platform == "launchd" else FakeSystemctl()
    before = files_under(tmp_path)
    secret_env = {**env, "MLX_API_KEY": "sk-do-not-print"}
    args = ["install", "-c", str(config_file), "--dry-run", "--platform", platform]
    result = invoke(fake, args, secret_env)
    assert result.exit_code == 0, result.output
    assert fake.calls == []
    assert files_under(tmp_path) == before
    out = result.stdout
    assert "sk-do-not-print" not in result.output
    assert "MLX_API_KEY redacted" in out and "(mode 0600)" in out
    if platform == "launchd":
        assert "<key>ProgramArguments</key>" in out
        assert f"launchctl bootout {TARGET}" in out
        assert f"launchctl bootstrap gui/{UID} " in out
    else:
        assert "ExecStart=" in out and "KillMode=mixed" in out
        assert "systemctl --user daemon-reload" in out
        assert f"systemctl --user restart {UNIT}" in out
        assert 'Environment="MLX_API_KEY=<redacted>"' in out


def test_cli_install_needs_a_valid_config(tmp_path: Path, env: dict[str, str | None]) -> None:
    fake = FakeSystemctl()
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: lots\n")
    invalid = invoke(fake, ["install", "-c", str(bad), "--platform", "systemd"], env)
    assert invalid.exit_code == 2 and "port" in invalid.stderr
    assert fake.calls == []


def test_cli_install_on_a_fresh_machine_writes_the_default_config(
    tmp_path: Path, env: dict[str, str | None]
) -> None:
    """No models.yaml yet: --dry-run shows what would be installed (and that the default
    config would be written first) without writing it; install writes it and says so."""
    from mlx_serve.config import example_config_text, load_config

    fake = FakeSystemctl()
    default = tmp_path / "home" / ".mlx-serve" / "models.yaml"
    before = files_under(tmp_path)
    dry = invoke(fake, ["install", "--dry-run", "--platform", "systemd"], env)
    assert dry.exit_code == 0, dry.output
    assert f"# no config at {default}: the default one would be written there" in dry.stdout
    assert f"--config {default}" in dry.stdout and "ExecStart=" in dry.stdout
    assert files_under(tmp_path) == before and fake.calls == []

    result = invoke(fake, ["install", "--platform", "systemd"], env)
    assert result.exit_code == 0, result.output
    assert default.read_text() == example_config_text()
    load_config(default)  # what it wrote is a valid config
    assert f"wrote the default config {default}" in " ".join(result.stderr.split())
    assert "installed and started" in result.stderr
    assert ("systemctl", "--user", "restart", UNIT) in fake.calls

    # Installed again: the config is the user's now, never overwritten.
    default.write_text(example_config_text() + "# mine\n")
    again = invoke(fake, ["install", "--platform", "systemd"], env)
    assert again.exit_code == 0, again.output
    assert default.read_text().endswith("# mine\n") and "wrote the default" not in again.stderr


def test_service_environment_dedupes_path_and_leaves_transient_variables_out() -> None:
    environ = {
        "PATH": "/opt/homebrew/bin:/usr/bin::/opt/homebrew/bin:/bin:/usr/bin",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": "/data/hf",
        "EDITOR": "vim",
    }
    env = service_environment(environ)
    assert env.environ["PATH"] == "/opt/homebrew/bin:/usr/bin:/bin"
    assert env.path_duplicates == 3
    assert "HF_HUB_OFFLINE" not in env.environ and env.left_out == ("HF_HUB_OFFLINE",)
    assert env.environ["HF_HOME"] == "/data/hf" and env.extra == ()

    kept = service_environment(environ, ["HF_HUB_OFFLINE", "EDITOR"])
    assert kept.environ["HF_HUB_OFFLINE"] == "1" and kept.left_out == ()
    assert kept.extra == (("EDITOR", "vim"),), "a variable mlx-serve would not copy itself"
    for bad in (["NOT_SET_ANYWHERE"], ["1BAD"]):
        with pytest.raises(typer.BadParameter):
            service_environment(environ, bad)
    assert TRANSIENT_ENV == ("HF_HUB_OFFLINE",)


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_cli_dry_run_says_what_it_copies_from_the_environment(
    tmp_path: Path, env: dict[str, str | None], config_file: Path, platform: str
) -> None:
    fake = FakeLaunchd() if platform == "launchd" else FakeSystemctl()
    shell = {
        **env,
        "PATH": "/opt/homebrew/bin:/usr/bin:/opt/homebrew/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "EDITOR": "vim",
    }
    args = ["install", "-c", str(config_file), "--dry-run", "--platform", platform]
    result = invoke(fake, args, shell)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert (
        "# environment copied from this shell: PATH (1 repeated or empty entry dropped), "
        "MLX_SERVE_HOME, HF_HOME\n" in out
    )
    assert "# left out: HF_HUB_OFFLINE (a setting of this shell, not of a service; " in out
    assert "`--env HF_HUB_OFFLINE` copies it)" in out
    assert "HF_HUB_OFFLINE" not in out.split("# left out:")[1].split("\n", 1)[1]
    assert "/opt/homebrew/bin:/usr/bin:/bin" in out
    assert "/opt/homebrew/bin:/usr/bin:/opt/homebrew/bin" not in out
    assert "EDITOR" not in out

    asked = invoke(fake, [*args, "--env", "HF_HUB_OFFLINE", "--env", "EDITOR"], shell)
    assert asked.exit_code == 0, asked.output
    assert "# left out" not in asked.stdout
    assert "HF_HUB_OFFLINE" in asked.stdout.split("# environment copied")[1].split("\n")[0]
    if platform == "launchd":
        assert "<key>HF_HUB_OFFLINE</key>" in asked.stdout and "<key>EDITOR</key>" in asked.stdout
    else:
        assert '"HF_HUB_OFFLINE=1"' in asked.stdout or "HF_HUB_OFFLINE=1" in asked.stdout
        assert "EDITOR=vim" in asked.stdout

    missing = invoke(fake, [*args, "--env", "NOPE_NOT_SET"], shell)
    assert missing.exit_code == 2 and "NOPE_NOT_SET is not set" in missing.stderr

    # A real install says the same, on stderr.
    installed = invoke(fake, [*args[:-3], "--platform", platform], shell)
    assert installed.exit_code == 0, installed.output
    assert "left out: HF_HUB_OFFLINE" in " ".join(installed.stderr.split())


def test_cli_uninstall(tmp_path: Path, env: dict[str, str | None], config_file: Path) -> None:
    launchd = FakeLaunchd()
    assert (
        invoke(launchd, ["install", "-c", str(config_file), "--platform", "launchd"], env).exit_code
        == 0
    )
    plist_file = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert plist_file.exists()

    launchd.calls.clear()
    dry = invoke(launchd, ["uninstall", "--dry-run", "--platform", "launchd"], env)
    assert launchd.calls == []
    assert f"launchctl bootout {TARGET}" in dry.stdout
    assert dry.exit_code == 0 and f"would remove {plist_file}" in dry.stdout
    assert plist_file.exists()

    result = invoke(launchd, ["uninstall", "--platform", "launchd"], env)
    assert result.exit_code == 0, result.output
    assert launchd.calls == [("launchctl", "bootout", TARGET), ("launchctl", "print", TARGET)]
    assert not plist_file.exists() and not launchd.loaded

    launchd.calls.clear()
    nothing = invoke(launchd, ["uninstall", "--platform", "launchd"], env)
    assert nothing.exit_code == 0 and "not installed" in nothing.stderr
    assert launchd.calls == []

    systemd = FakeSystemctl()
    assert (
        invoke(systemd, ["install", "-c", str(config_file), "--platform", "systemd"], env).exit_code
        == 0
    )
    unit = tmp_path / "xdg" / "systemd" / "user" / UNIT
    systemd.calls.clear()
    result = invoke(systemd, ["uninstall", "--platform", "systemd"], env)
    assert result.exit_code == 0, result.output
    assert systemd.calls == [
        ("systemctl", "--user", "disable", "--now", UNIT),
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "reset-failed", UNIT),
    ]
    assert not unit.exists()


def test_cli_status_exit_codes_and_json(
    tmp_path: Path, env: dict[str, str | None], config_file: Path
) -> None:
    fake = FakeSystemctl(show=SYSTEMCTL_SHOW_NOT_FOUND)
    absent = invoke(fake, ["status", "--platform", "systemd"], env)
    assert absent.exit_code == 5, "not installed: 4 would read as 'API key rejected'"
    assert "not installed" in absent.stdout and "mlx-serve service install" in absent.stdout

    assert (
        invoke(fake, ["install", "-c", str(config_file), "--platform", "systemd"], env).exit_code
        == 0
    )
    fake.show = SYSTEMCTL_SHOW_RUNNING
    running = invoke(fake, ["status", "--platform", "systemd"], env)
    assert running.exit_code == 0, running.output
    assert "active (running), pid 4321, enabled" in running.stdout
    assert str(tmp_path / "data" / "logs" / "service.out.log") in running.stdout

    fake.show = SYSTEMCTL_SHOW_FAILED
    failed = invoke(fake, ["status", "--json", "--platform", "systemd"], env)
    assert failed.exit_code == 3
    data = json.loads(failed.stdout)
    assert data["installed"] is True and data["running"] is False
    assert data["last_exit_code"] == 2 and data["program"] == sys.executable
    assert data["program_exists"] is True

    fake.show = "LoadState=loaded\nActiveState=\n"
    fake.fail = {"show": CommandResult(1, "", "Failed to connect to bus")}
    unknown = invoke(fake, ["status", "--platform", "systemd"], env)
    assert unknown.exit_code == 1, unknown.output


def test_cli_status_notices_a_moved_virtualenv(
    tmp_path: Path, env: dict[str, str | None], config_file: Path
) -> None:
    launchd = FakeLaunchd()
    assert (
        invoke(launchd, ["install", "-c", str(config_file), "--platform", "launchd"], env).exit_code
        == 0
    )
    plist_file = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    plist = plistlib.loads(plist_file.read_bytes())
    plist["ProgramArguments"][0] = str(tmp_path / "moved-venv" / "bin" / "python")
    plist_file.write_bytes(plistlib.dumps(plist))
    result = invoke(launchd, ["status", "--platform", "launchd"], env)
    assert result.exit_code == 0, result.output  # still running: the old process lives on
    assert "MISSING" in result.stdout and "moved-venv" in result.stdout


def test_mounted_help_lists_the_commands() -> None:
    result = CliRunner().invoke(cli(FakeSystemctl()), ["service", "--help"])
    assert result.exit_code == 0
    for name in ("install", "uninstall", "status"):
        assert name in result.stdout
    assert (
        "--platform"
        not in CliRunner().invoke(cli(FakeSystemctl()), ["service", "install", "--help"]).stdout
    )
