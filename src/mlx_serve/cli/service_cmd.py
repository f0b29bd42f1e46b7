"""``mlx-serve service install|uninstall|status``: run the server as a login service.

Thin commands over :mod:`mlx_serve.service`. The app is built by :func:`build_app` so the
tests can hand it a recording runner (and a fake clock) instead of one that would really run
``launchctl``/``systemctl``; :data:`app` is the real one, mounted by the main CLI.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

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

__all__ = ["app", "build_app"]

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
    )
    # soft_wrap: long paths must stay copy-pasteable, not be broken at 80 columns.
    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def get_runner() -> Runner:
        return runner if runner is not None else SubprocessRunner()

    def fail(message: str, code: int = 1) -> typer.Exit:
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
        dry_run: DryRunOpt = False,
        platform: PlatformOpt = None,
    ) -> None:
        """Install and start the service; it then starts at every login and after a crash.

        Installing again replaces the definition and restarts the server with it.
        """
        from mlx_serve.config import ConfigError, find_config_path, load_config
        from mlx_serve.paths import home_dir

        ctx = context(platform)
        config_path = find_config_path(config)
        if not config_path.exists():
            raise fail(f"no config at {config_path}; run `mlx-serve init` to write one")
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            raise fail(str(exc), 2) from exc
        try:
            spec = build_spec(
                executable=sys.executable,
                config_path=config_path,
                data_dir=cfg.server.data_dir or home_dir(),
                label=label or default_label(ctx.platform),
                environ=ctx.environ,
                host=host,
                port=port,
                server_stop_timeout=cfg.server.stop_timeout,
            )
            plan = install_plan(ctx, spec)
            secrets = ", ".join(sorted(spec.secret_names))
            if dry_run:
                typer.echo(install_plan(ctx, spec.redacted()).describe(), nl=False)
                if secrets:
                    typer.echo(
                        f"# {secrets} redacted above; the file would hold the real "
                        f"value{'s' if len(spec.secret_names) > 1 else ''} (mode 0600)"
                    )
                return
        except ServiceError as exc:
            raise fail(str(exc)) from exc
        try:
            apply_install(plan, get_runner(), sleep=sleep, monotonic=monotonic, on_step=show_step)
        except ServiceError as exc:
            raise fail(str(exc)) from exc
        except OSError as exc:
            raise fail(f"could not install {plan.path}: {exc}") from exc
        console.print(f"installed and started [bold]{escape(spec.label)}[/]: {plan.path}")
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

        Exit code: 0 running, 3 installed but not running, 4 not installed, 1 unknown.
        """
        ctx = context(platform)
        state = query_status(ctx, label or default_label(ctx.platform), get_runner())
        if as_json:
            typer.echo(json.dumps(state.to_json(), indent=2))
        else:
            typer.echo(_status_text(state), nl=False)
        raise typer.Exit(state.exit_code)

    return service_app


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
