"""The runtime file: how every command finds the running server, whatever the config says now.

The server (the ``mlx-serve start`` process holding the data dir's instance lock, see
:mod:`mlx_serve.pidfile`) writes ``<data_dir>/mlx-serve.runtime.json`` once it listens: its
pid, the URL it really listens on (``--port`` included), the data dir, the config file it was
started with, its version, when it started, and the ``--host``/``--port`` it was given (so
``restart`` can give them again). It is written atomically (a temp file renamed over it) and
removed when the server exits, errors included; only a SIGKILL leaves it behind, and a reader
recognises that by the pid (dead, or reused by a process younger than the server).

Finding it when the config cannot say where the data dir is. ``server.data_dir`` is in the
config, and the config may be broken (a YAML error mid-edit) or edited (``data_dir`` changed
while the server runs), or be another file than the server's (started with ``--config X``,
asked without). So a server whose data dir is not the default one (``$MLX_SERVE_HOME``, else
``~/.mlx-serve``) also writes a copy of its record into the default one, as
``servers/<key>.json``, the key derived from its data dir: one server per data dir means one
file per server, and a server started again on the same data dir replaces a stale one. A
reader looks at the data dir its config names (when readable), the default data dir and its
``servers/``: a handful of small files, no scan of the disk, nothing that depends on the
config being valid.

Which server, when several run (different data dirs): the one started with the config file
the command uses (the same file, even if it was edited or broken since); else the one on the
data dir that config names; else, when the user named no config at all, the only one running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from mlx_serve.files import atomic_write_text

__all__ = [
    "POINTER_DIR",
    "RUNTIME_FILE",
    "RuntimeInfo",
    "candidates",
    "find_server",
    "is_alive",
    "pointer_path",
    "read_runtime",
    "remove_runtime",
    "runtime_path",
    "same_dir",
    "write_runtime",
]

RUNTIME_FILE = "mlx-serve.runtime.json"
POINTER_DIR = "servers"

#: How much later than the process's creation a server may record its start (it records the
#: time it listened; the process began a little earlier). A pid reused by a process created
#: after the recorded start is a stranger.
_START_SLACK = 2.0


@dataclass(frozen=True)
class RuntimeInfo:
    """One running server, as its runtime file describes it."""

    pid: int
    url: str
    """What a client connects to: a wildcard bind (``0.0.0.0``) is reached on loopback."""
    host: str
    port: int
    data_dir: Path
    config_path: Path | None
    version: str
    started_at: float
    """Unix time at which it started listening."""
    argv_host: str | None = None
    """``--host`` as given to ``start`` (None: from the config)."""
    argv_port: int | None = None
    """``--port`` as given to ``start`` (None: from the config)."""

    @property
    def api_url(self) -> str:
        """The OpenAI base URL clients are configured with."""
        return f"{self.url}/v1"

    @property
    def dashboard_url(self) -> str:
        return f"{self.url}/dashboard"

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "config_path": str(self.config_path) if self.config_path is not None else None,
            "version": self.version,
            "started_at": self.started_at,
            "argv_host": self.argv_host,
            "argv_port": self.argv_port,
        }

    @classmethod
    def from_json(cls, data: object) -> RuntimeInfo | None:
        """The record, or None if ``data`` is not one (a foreign or truncated file)."""
        if not isinstance(data, dict):
            return None
        try:
            pid, port, started = data["pid"], data["port"], data["started_at"]
            url, host, data_dir = data["url"], data["host"], data["data_dir"]
            config, version = data.get("config_path"), data.get("version")
            argv_host, argv_port = data.get("argv_host"), data.get("argv_port")
        except KeyError:
            return None
        ints_ok = all(
            isinstance(v, int) and not isinstance(v, bool) for v in (pid, port)
        ) and isinstance(started, int | float)
        strs_ok = all(isinstance(v, str) for v in (url, host, data_dir))
        if not (ints_ok and strs_ok) or pid <= 0:
            return None
        return cls(
            pid=pid,
            url=url,
            host=host,
            port=port,
            data_dir=Path(data_dir),
            config_path=Path(config) if isinstance(config, str) and config else None,
            version=version if isinstance(version, str) else "?",
            started_at=float(started),
            argv_host=argv_host if isinstance(argv_host, str) else None,
            argv_port=argv_port if isinstance(argv_port, int) else None,
        )


def runtime_path(data_dir: Path) -> Path:
    return data_dir / RUNTIME_FILE


def pointer_path(home: Path, data_dir: Path) -> Path:
    """Where a server on ``data_dir`` leaves its copy in the default data dir ``home``."""
    key = hashlib.sha256(str(_absolute(data_dir)).encode()).hexdigest()[:16]
    return home / POINTER_DIR / f"{key}.json"


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(path.expanduser().absolute()))


def same_dir(a: Path, b: Path) -> bool:
    """Whether two paths name one directory, compared as absolute, normalised paths."""
    return _absolute(a) == _absolute(b)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file, following symlinks; by name if either is gone."""
    with contextlib.suppress(OSError):
        return a.samefile(b)
    return _absolute(a).resolve() == _absolute(b).resolve()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Readers see the old file or the new one, never half of one.
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_runtime(info: RuntimeInfo, home: Path) -> list[Path]:
    """Write the record into its data dir (and the pointer copy into ``home`` when the data
    dir is another one); return the files written, for :func:`remove_runtime`."""
    written = [runtime_path(info.data_dir)]
    _write_json(written[0], info.to_json())
    if not same_dir(info.data_dir, home):
        pointer = pointer_path(home, info.data_dir)
        try:
            _write_json(pointer, info.to_json())
        except OSError:
            pass  # an unwritable default dir costs discovery with a broken config, not serving
        else:
            written.append(pointer)
    return written


def remove_runtime(paths: Iterable[Path], pid: int | None = None) -> None:
    """Remove the files that still describe ``pid`` (default: this process): a server that
    has already replaced them keeps its own."""
    pid = os.getpid() if pid is None else pid
    for path in paths:
        info = read_runtime(path)
        if info is not None and info.pid == pid:
            path.unlink(missing_ok=True)


def read_runtime(path: Path) -> RuntimeInfo | None:
    """The record in ``path``; None if there is none or it is not one. Not validated."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return RuntimeInfo.from_json(json.loads(text))
    except ValueError:
        return None


def is_alive(info: RuntimeInfo) -> bool:
    """Whether the process the record names still runs and is that server: alive, not a
    zombie, an ``mlx-serve start`` command line, and not younger than the recorded start
    (a pid reused by another program after a crash must never be taken for the server)."""
    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = " ".join(proc.cmdline())
        created = proc.create_time()
    except (psutil.Error, OSError):
        return False
    return "mlx" in cmdline and "start" in cmdline and created <= info.started_at + _START_SLACK


def candidates(data_dirs: Iterable[Path], home: Path) -> Iterator[tuple[Path, RuntimeInfo]]:
    """Every record in the runtime files of ``data_dirs`` and the pointers in ``home``,
    live or not, each pid once."""
    paths = [runtime_path(d) for d in dict.fromkeys(_absolute(d) for d in [*data_dirs, home])]
    with contextlib.suppress(OSError):
        paths += sorted((home / POINTER_DIR).glob("*.json"))
    seen: set[int] = set()
    for path in paths:
        info = read_runtime(path)
        if info is not None and info.pid not in seen:
            seen.add(info.pid)
            yield path, info


def find_server(
    *, config_path: Path, data_dir: Path, home: Path, any_server: bool
) -> RuntimeInfo | None:
    """The live server the command means (see the module docstring for the order), or None.

    ``data_dir`` is the one the config names (or the default); ``any_server``: the user named
    no config, so the only server running is the one they mean."""
    live = [info for _, info in candidates([data_dir], home) if is_alive(info)]
    for info in live:
        if info.config_path is not None and _same_file(info.config_path, config_path):
            return info
    for info in live:
        if same_dir(info.data_dir, data_dir):
            return info
    if any_server and len(live) == 1:
        return live[0]
    return None
