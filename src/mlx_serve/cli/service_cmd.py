"""``mlx-serve service install|uninstall|status``: run the server as a login service.

Thin commands over :mod:`mlx_serve.service`. The app is built by :func:`build_app` so the
tests can hand it a recording runner (and a fake clock) instead of one that would really run
``launchctl``/``systemctl``; :data:`app` is the real one, mounted by the main CLI.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mlx_serve.cli.exit_codes import ExitCode
from mlx_serve.service import (
    Command,
    Platform,
    Runner,
    ServiceContext,
    ServiceError,
    ServiceStatus,
    SubprocessRunner,
    apply_install,
    apply_removal,
    build_spec,
    default_label,
    install_plan,
    query_status,
    removal_plan,
    service_file,
)
from mlx_serve.service.spec import (
    PASSTHROUGH_ENV,
    SECRET_ENV,
    ServiceSpec,
    check_no_control_chars,
)

__all__ = [
    "TRANSIENT_ENV",
    "ServiceEnvironment",
    "app",
    "build_app",
    "service_environment",
    "status_exit_code",
]

#: Variables the service would copy (see ``PASSTHROUGH_ENV``) that describe this shell's
#: moment rather than the machine: ``HF_HUB_OFFLINE`` is set for a test run or a train ride,
#: and a service that kept it would never download a model again. Left out unless ``--env``
#: names them.
TRANSIENT_ENV = ("HF_HUB_OFFLINE",)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ServiceEnvironment:
    """What ``service install`` takes from the installing shell, and what it leaves out."""

    environ: dict[str, str]
    """The environment handed to ``build_spec``: PATH deduplicated, transient variables out."""
    extra: tuple[tuple[str, str], ...]
    """``--env`` variables beyond the ones mlx-serve copies on its own."""
    left_out: tuple[str, ...]
    """Transient variables set in this shell and not copied."""
    path_duplicates: int
    """PATH entries dropped because they were repeated (or empty)."""


def service_environment(environ: Mapping[str, str], keep: Sequence[str] = ()) -> ServiceEnvironment:
    """Filter the installing shell's environment for the service: PATH without repeated or
    empty entries (a shell that sourced its profile twice has them), no transient variable
    unless ``keep`` names it, and the ``keep`` variables mlx-serve would not copy itself.

    Raises ``typer.BadParameter`` for a ``keep`` name that is invalid or not set."""
    env = dict(environ)
    duplicates = 0
    if env.get("PATH"):
        entries = env["PATH"].split(os.pathsep)
        unique = [e for e in dict.fromkeys(entries) if e]
        duplicates = len(entries) - len(unique)
        env["PATH"] = os.pathsep.join(unique)
    copied = {*PASSTHROUGH_ENV, *SECRET_ENV, "PATH"}
    extra: list[tuple[str, str]] = []
    for name in dict.fromkeys(keep):
        if not _ENV_NAME.fullmatch(name):
            raise typer.BadParameter(f"{name!r} is not a variable name", param_hint="--env")
        value = environ.get(name)
        if value is None:
            raise typer.BadParameter(f"${name} is not set in this shell", param_hint="--env")
        try:
            check_no_control_chars(value, f"${name}")
        except ServiceError as exc:
            raise typer.BadParameter(str(exc), param_hint="--env") from None
        if name not in copied:
            extra.append((name, value))
    left_out = tuple(n for n in TRANSIENT_ENV if env.get(n) and n not in keep)
    for name in left_out:
        del env[name]
    return ServiceEnvironment(env, tuple(extra), left_out, duplicates)


def _environment_notes(spec: ServiceSpec, env: ServiceEnvironment) -> list[str]:
    """What the service gets from this shell, in words: printed by ``--dry-run`` (as
    comments) and by ``install``."""
    copied = [n for n, _ in spec.environment if n != "PYTHONUNBUFFERED"]
    path_note = (
        f" ({env.path_duplicates} repeated or empty entr"
        f"{'y' if env.path_duplicates == 1 else 'ies'} dropped)"
        if env.path_duplicates
        else ""
    )
    names = ", ".join(f"PATH{path_note}" if n == "PATH" else n for n in copied)
    notes = [f"environment copied from this shell: {names}"]
    if env.left_out:
        flags = " ".join(f"--env {n}" for n in env.left_out)
        notes.append(
            f"left out: {', '.join(env.left_out)} (a setting of this shell, not of a service; "
            f"`{flags}` copies it)"
        )
    return notes


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="models.yaml the service serves (default: $MLX_SERVE_CONFIG, then "
        "~/.mlx-serve/models.yaml); stored as an absolute path",
    ),
]
LabelOpt = Annotated[
    str | None,
    typer.Option(
        "--label",
        help="launchd label / systemd unit name (default: com.mlx-serve.server / mlx-serve); "
        "different labels let several servers run side by side",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="print the file and the commands; change nothing")
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        metavar="NAME",
        help="also copy $NAME from this shell into the service (repeatable; "
        f"{', '.join(TRANSIENT_ENV)} is left out without it)",
        show_default=False,
    ),
]
PlatformOpt = Annotated[
    Platform | None,
    typer.Option(
        "--platform",
        hidden=True,
        help="service manager to target instead of this OS's (for tests and dry runs)",
    ),
]


def build_app(
    runner: Runner | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> typer.Typer:
    """The ``service`` sub-app, running manager commands through ``runner``."""
    service_app = typer.Typer(
        name="service",
        help="Run mlx-serve as a login service (launchd on macOS, systemd --user on Linux).",
        no_args_is_help=True,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    # soft_wrap: long paths must stay copy-pasteable, not be broken at 80 columns.
    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def get_runner() -> Runner:
        return runner if runner is not None else SubprocessRunner()

    def fail(message: str, code: ExitCode = ExitCode.FAILED) -> typer.Exit:
        console.print(f"[bold red]error:[/] {escape(message)}")
        return typer.Exit(code)

    def context(platform: Platform | None) -> ServiceContext:
        try:
            return ServiceContext.current(platform)
        except ServiceError as exc:
            raise fail(str(exc)) from exc

    def show_step(command: Command) -> None:
        console.print(f"$ {escape(command.describe())}", style="dim")

    @service_app.command()
    def install(
        *,
        config: ConfigOpt = None,
        host: Annotated[
            str | None, typer.Option(help="bind address (default from the config)")
        ] = None,
        port: Annotated[
            int | None, typer.Option(min=1, max=65535, help="port (default from the config)")
        ] = None,
        label: LabelOpt = None,
        env: EnvOpt = None,
        dry_run: DryRunOpt = False,
        platform: PlatformOpt = None,
    ) -> None:
        """Install and start the service; it then starts at every login and after a crash.

        Installing again replaces the definition and restarts the server with it.

        Without a models.yaml, the commented default one is written first (like `init`).
        """
        from mlx_serve.config import (
            ConfigError,
            example_config_text,
            find_config_path,
            load_config,
            parse_config_text,
        )
        from mlx_serve.paths import home_dir

        ctx = context(platform)
        config_path = find_config_path(config)
        new_config = not config_path.exists()
        try:
            # A fresh machine: the default config, as `init` would write it.
            cfg = (
                parse_config_text(example_config_text(), config_path)
                if new_config
                else load_config(config_path)
            )
        except ConfigError as exc:
            raise fail(str(exc), ExitCode.USAGE) from exc
        environment = service_environment(ctx.environ, env or ())
        try:
            spec = build_spec(
                executable=sys.executable,
                config_path=config_path,
                data_dir=cfg.server.data_dir or home_dir(),
                label=label or default_label(ctx.platform),
                environ=environment.environ,
                host=host,
                port=port,
                server_stop_timeout=cfg.server.stop_timeout,
            )
            if environment.extra:
                spec = replace(spec, environment=spec.environment + environment.extra)
            plan = install_plan(ctx, spec)
            secrets = ", ".join(sorted(spec.secret_names))
            notes = _environment_notes(spec, environment)
            if dry_run:
                if new_config:
                    typer.echo(
                        f"# no config at {config_path}: the default one would be written "
                        "there first (as `mlx-serve init` does)"
                    )
                for note in notes:
                    typer.echo(f"# {note}")
                typer.echo(install_plan(ctx, spec.redacted()).describe(), nl=False)
                if secrets:
                    typer.echo(
                        f"# {secrets} redacted above; the file would hold the real "
                        f"value{'s' if len(spec.secret_names) > 1 else ''} (mode 0600)"
                    )
                return
        except ServiceError as exc:
            raise fail(str(exc)) from exc
        if new_config:
            from mlx_serve.cli.init_cmd import write_example_config

            try:
                write_example_config(config_path)
            except OSError as exc:
                raise fail(f"could not write the default config {config_path}: {exc}") from exc
            console.print(
                f"wrote the default config {escape(str(config_path))} (no model is set up yet: "
                "edit it, then `mlx-serve reload`)"
            )
        try:
            apply_install(plan, get_runner(), sleep=sleep, monotonic=monotonic, on_step=show_step)
        except ServiceError as exc:
            raise fail(str(exc)) from exc
        except OSError as exc:
            raise fail(f"could not install {plan.path}: {exc}") from exc
        console.print(f"installed and started [bold]{escape(spec.label)}[/]: {plan.path}")
        for note in notes:
            console.print(f"  {escape(note)}")
        if secrets:
            console.print(
                f"note: {escape(secrets)} from your environment "
                f"{'is' if len(spec.secret_names) == 1 else 'are'} stored in that file "
                "(mode 0600, readable only by you)"
            )
        for note in plan.notes:
            console.print(f"  {escape(note)}")

    @service_app.command()
    def uninstall(
        label: LabelOpt = None,
        dry_run: DryRunOpt = False,
        platform: PlatformOpt = None,
    ) -> None:
        """Stop the service and remove its definition (logs and models stay)."""
        ctx = context(platform)
        name = label or default_label(ctx.platform)
        path = service_file(ctx, name)
        if not path.exists():
            console.print(f"not installed: no {path}; nothing to do")
            return
        plan = removal_plan(ctx, name)
        if dry_run:
            typer.echo(plan.describe(), nl=False)
            return
        try:
            apply_removal(plan, get_runner(), sleep=sleep, monotonic=monotonic, on_step=show_step)
        except ServiceError as exc:
            raise fail(str(exc)) from exc
        console.print(f"stopped and removed {path}")

    @service_app.command()
    def status(
        label: LabelOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
        platform: PlatformOpt = None,
    ) -> None:
        """Show whether the service is installed and running.

        Exit code: 0 running, 3 installed but not running, 5 not installed, 1 unknown.
        """
        ctx = context(platform)
        state = query_status(ctx, label or default_label(ctx.platform), get_runner())
        if as_json:
            typer.echo(json.dumps(state.to_json(), indent=2))
        else:
            typer.echo(_status_text(state), nl=False)
        raise typer.Exit(status_exit_code(state))

    return service_app


def status_exit_code(state: ServiceStatus) -> ExitCode:
    """``service status``'s code, from the table every command follows (not LSB's, whose 4
    would read as "API key rejected" there): running, not running, not installed, unknown."""
    if not state.installed:
        return ExitCode.NOT_INSTALLED
    if state.running:
        return ExitCode.OK
    if state.running is None:
        return ExitCode.FAILED
    return ExitCode.NOT_RUNNING


def _status_text(state: ServiceStatus) -> str:
    lines = [f"mlx-serve service {state.name} ({state.manager})"]
    if not state.installed:
        lines.append(f"  not installed: no {state.path}")
        if state.loaded:
            lines.append("  but the manager still has it loaded: run `mlx-serve service uninstall`")
        lines.append("  install it with `mlx-serve service install`")
        return "\n".join(lines) + "\n"
    lines.append(f"  file:      {state.path}")
    if state.error is not None:
        lines.append(f"  state:     unknown: {state.error}")
    else:
        running = f"{state.state or 'unknown'}" + (f", pid {state.pid}" if state.pid else "")
        if state.enabled is not None:
            running += ", enabled" if state.enabled else ", not enabled"
        lines.append(f"  state:     {running}")
        if state.last_exit_code is not None:
            lines.append(f"  last exit: {state.last_exit_code}")
        if state.last_signal is not None:
            lines.append(f"  last exit: killed by {state.last_signal}")
    if state.program is not None:
        program = state.program
        if state.program_exists is False:
            program += (
                "  MISSING: the virtualenv was moved or deleted; "
                "run `mlx-serve service install` again from the new one"
            )
        lines.append(f"  program:   {program}")
    if state.stdout_log or state.stderr_log:
        logs = " and ".join(p for p in (state.stdout_log, state.stderr_log) if p)
        lines.append(f"  logs:      {logs}")
    return "\n".join(lines) + "\n"


app = build_app()
