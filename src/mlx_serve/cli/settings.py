"""Finding the server: the URL, API key and data directory a command uses.

The running server is found through its runtime file first (:mod:`mlx_serve.runtime_file`:
the address it really listens on, whatever models.yaml says now), then through the config,
which may be missing or broken (a mid-edit file must not keep the CLI from reaching or
stopping the server). Talking to it is :mod:`.client`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_serve.cli.client import Client, ClientError

if TYPE_CHECKING:
    from mlx_serve.runtime_file import RuntimeInfo

__all__ = [
    "API_KEY_ENV_VAR",
    "DEFAULT_URL",
    "URL_ENV_VAR",
    "Settings",
    "load_settings",
    "url_for",
]

URL_ENV_VAR = "MLX_SERVE_URL"
API_KEY_ENV_VAR = "MLX_API_KEY"
DEFAULT_PORT = 8095
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"

#: Seconds a server found through its runtime file has to answer ``/health`` before the CLI
#: falls back to the config's address: a local server answers in milliseconds.
HEALTH_TIMEOUT = 2.0


@dataclass(frozen=True)
class Settings:
    """Where the CLI talks to and what it knows about the local installation.

    ``data_dir`` and ``config_path`` matter for the commands that work on files (``stop``,
    ``logs --worker``, ``logs`` while the server is down); ``config_error`` is kept so those
    commands can say why they fell back to defaults instead of failing. ``server`` is the
    running server found through its runtime file (:mod:`mlx_serve.runtime_file`): when there
    is one, ``url`` and ``data_dir`` are its own, whatever the config says now.
    """

    url: str
    api_key: str | None
    data_dir: Path
    config_path: Path
    config_error: str | None = None
    model_names: Mapping[str, str] | None = None  # alias or name -> name, from the config
    server: RuntimeInfo | None = None


def load_settings(
    url: str | None = None,
    api_key: str | None = None,
    config: Path | None = None,
    *,
    discover: bool = True,
    check_health: bool = True,
) -> Settings:
    """Resolve the URL, the API key and the data directory.

    The URL: ``--url``, else ``$MLX_SERVE_URL``, else the running server's own (found through
    its runtime file, checked by its pid and, with ``check_health``, a ``/health`` answer),
    else the config's host:port, else the default. The API key: ``--api-key``, the config's
    ``server.api_key``, ``$MLX_API_KEY`` - the order the server itself uses (the runtime file
    holds no key: a reload can change it, and a second copy of a secret would go stale). The
    data directory: the running server's, else the config's ``server.data_dir``, else
    ``$MLX_SERVE_HOME`` (``~/.mlx-serve``).

    A missing or broken config is not an error here: the CLI must still be able to reach a
    running server or stop it while the file is being edited. The problem is reported in
    :attr:`Settings.config_error` for the commands that need the file. ``check_health=False``
    (``stop``) takes a live pid as enough: a server too busy to answer must still stop.
    """
    from mlx_serve.config import CONFIG_ENV_VAR, ConfigError, find_config_path, load_config
    from mlx_serve.paths import home_dir

    path = find_config_path(config)
    server_url, server_key, data_dir = DEFAULT_URL, None, home_dir()
    names: dict[str, str] | None = None
    error: str | None = None
    if path.exists():
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            # Mid-edit files are common (that is when `reload` is run): the server still runs
            # with the old settings, so find it with whatever the file still says.
            error = str(exc)
            server_url, server_key, data_dir = _salvage(path, server_url, data_dir)
        else:
            server_url = url_for(cfg.server.host, cfg.server.port)
            server_key = cfg.server.api_key
            data_dir = cfg.server.data_dir or data_dir
            names = {}
            for name, model in cfg.models.items():
                names[name] = name
                for alias in model.aliases:
                    names[alias] = name
    elif config is not None:
        error = f"{path}: config file not found"
    explicit_url = url or os.environ.get(URL_ENV_VAR, "").strip() or None
    server: RuntimeInfo | None = None
    if discover:
        from mlx_serve.runtime_file import find_server

        explicit_config = config is not None or bool(os.environ.get(CONFIG_ENV_VAR, "").strip())
        found = find_server(
            config_path=path, data_dir=data_dir, home=home_dir(), any_server=not explicit_config
        )
        if found is not None and (not check_health or _answers(found.url)):
            server = found
            data_dir = found.data_dir
            if explicit_url is None:
                server_url = found.url
    resolved_url = explicit_url or server_url
    # The server's own order: its config's key, else $MLX_API_KEY (router/auth.py).
    resolved_key = api_key or server_key or os.environ.get(API_KEY_ENV_VAR) or None
    return Settings(
        url=resolved_url.rstrip("/"),
        api_key=resolved_key,
        data_dir=data_dir,
        config_path=path,
        config_error=error,
        model_names=names,
        server=server,
    )


def _answers(url: str) -> bool:
    """Whether an mlx-serve answers ``GET /health`` at ``url`` (open even with an API key)."""
    try:
        return Client(url).health(timeout=HEALTH_TIMEOUT).get("status") == "ok"
    except (ClientError, ValueError, OSError):
        return False


def _salvage(path: Path, url: str, data_dir: Path) -> tuple[str, str | None, Path]:
    """URL, API key and data dir from the ``server:`` section of a config that does not
    validate, as far as they are readable; the defaults for what is not."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return url, None, data_dir
    server = data.get("server") if isinstance(data, dict) else None
    if not isinstance(server, dict):
        return url, None, data_dir
    host, port = server.get("host", "127.0.0.1"), server.get("port", DEFAULT_PORT)
    if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool):
        url = url_for(host, port)
    key = server.get("api_key")
    raw_dir = server.get("data_dir")
    if isinstance(raw_dir, str) and raw_dir:
        data_dir = Path(os.path.normpath((path.parent / Path(raw_dir).expanduser()).absolute()))
    return url, key if isinstance(key, str) else None, data_dir


def url_for(host: str, port: int) -> str:
    """The URL a client uses for a server bound to ``host``: a wildcard bind is reached on
    loopback, and IPv6 literals need brackets."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
