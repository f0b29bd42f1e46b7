"""Run mlx-serve as a per-user login service: launchd on macOS, systemd ``--user`` on Linux.

The platform code is split into pure plan builders (:func:`launchd_plan`,
:func:`systemd_plan`: a spec in, file bytes and commands out) and one executor
(:func:`apply_install`) that runs commands through a :class:`Runner`. This module picks the
platform and hands the builders the facts about the current user (:class:`ServiceContext`),
all of which are injectable, so both platforms are exercised by the tests on any OS.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .launchd import (
    DEFAULT_LABEL,
    launchd_plan,
    launchd_removal,
    launchd_status,
    parse_launchctl_print,
    plist_path,
)
from .plan import (
    Command,
    CommandResult,
    Expect,
    RemovalPlan,
    Runner,
    ServicePlan,
    SubprocessRunner,
    apply_install,
    apply_removal,
    run_steps,
)
from .spec import ServiceError, ServiceSpec, build_spec
from .status import ServiceStatus
from .systemd import (
    DEFAULT_UNIT,
    parse_systemctl_show,
    systemd_plan,
    systemd_removal,
    systemd_status,
    unit_path,
)

__all__ = [
    "DEFAULT_LABEL",
    "DEFAULT_UNIT",
    "Command",
    "CommandResult",
    "Expect",
    "Platform",
    "RemovalPlan",
    "Runner",
    "ServiceContext",
    "ServiceError",
    "ServicePlan",
    "ServiceSpec",
    "ServiceStatus",
    "SubprocessRunner",
    "apply_install",
    "apply_removal",
    "build_spec",
    "default_label",
    "detect_platform",
    "install_plan",
    "launchd_plan",
    "parse_launchctl_print",
    "parse_systemctl_show",
    "query_status",
    "removal_plan",
    "run_steps",
    "service_file",
    "systemd_plan",
]


class Platform(StrEnum):
    """The service manager, named after the manager rather than the OS."""

    LAUNCHD = "launchd"
    SYSTEMD = "systemd"


def detect_platform(sys_platform: str = sys.platform) -> Platform:
    """launchd on macOS, systemd on Linux; anything else is refused with a clear error."""
    if sys_platform == "darwin":
        return Platform.LAUNCHD
    if sys_platform.startswith("linux"):
        return Platform.SYSTEMD
    raise ServiceError(
        f"`mlx-serve service` supports macOS (launchd) and Linux (systemd), not {sys_platform}"
    )


def default_label(platform: Platform) -> str:
    """Reverse-DNS for launchd, as its labels are by convention; the plain name for systemd."""
    return DEFAULT_LABEL if platform is Platform.LAUNCHD else DEFAULT_UNIT


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """The facts about the current user the plans depend on."""

    platform: Platform
    home: Path
    uid: int
    user: str
    environ: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls, platform: Platform | None = None) -> ServiceContext:
        """This process's user; ``Path.home()`` honours ``$HOME``, as the tests rely on."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (some containers)
            user = str(os.getuid())
        return cls(
            platform=platform or detect_platform(),
            home=Path.home(),
            uid=os.getuid(),
            user=user,
            environ=dict(os.environ),
        )


def service_file(ctx: ServiceContext, label: str) -> Path:
    """Where the plist or unit file of ``label`` lives."""
    if ctx.platform is Platform.LAUNCHD:
        return plist_path(label, ctx.home)
    return unit_path(label, ctx.environ, ctx.home)


def install_plan(ctx: ServiceContext, spec: ServiceSpec) -> ServicePlan:
    if ctx.platform is Platform.LAUNCHD:
        return launchd_plan(spec, uid=ctx.uid, home=ctx.home)
    return systemd_plan(spec, environ=ctx.environ, home=ctx.home, user=ctx.user)


def removal_plan(ctx: ServiceContext, label: str) -> RemovalPlan:
    if ctx.platform is Platform.LAUNCHD:
        return launchd_removal(label, uid=ctx.uid, home=ctx.home)
    return systemd_removal(label, environ=ctx.environ, home=ctx.home)


def query_status(ctx: ServiceContext, label: str, runner: Runner) -> ServiceStatus:
    if ctx.platform is Platform.LAUNCHD:
        return launchd_status(label, uid=ctx.uid, home=ctx.home, runner=runner)
    return systemd_status(label, environ=ctx.environ, home=ctx.home, runner=runner)
