"""A small synchronous HTTP client for the CLI, on ``http.client`` from the standard library.

The CLI must start instantly, so it never imports aiohttp (or httpx, ~100 ms): every command
makes one or two requests, and the streamed ones (load progress, pulls, ``logs -f``) are read
line by line as they arrive. Errors become three exceptions the commands map to exit codes:
:class:`ServerNotRunning` (nothing answers at the URL), :class:`Unauthorized` (401, the API
key) and :class:`ApiError` (any other HTTP error, with the server's OpenAI-shaped message).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlx_serve.runtime_file import RuntimeInfo

__all__ = [
    "DEFAULT_URL",
    "URL_ENV_VAR",
    "ApiError",
    "Client",
    "ClientError",
    "ServerNotRunning",
    "ServerTooOld",
    "Settings",
    "Unauthorized",
    "load_settings",
    "parse_since",
    "url_for",
]

URL_ENV_VAR = "MLX_SERVE_URL"
API_KEY_ENV_VAR = "MLX_API_KEY"
DEFAULT_PORT = 8095
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"

#: Seconds to wait for a TCP connection: a local server accepts at once, and a hung remote
#: one should fail the command, not freeze it.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a short answer (stats, lists). Loads and pulls wait as long as needed.
READ_TIMEOUT = 30.0
#: Seconds a server found through its runtime file has to answer ``/health`` before the CLI
#: falls back to the config's address: a local server answers in milliseconds.
HEALTH_TIMEOUT = 2.0
#: Seconds of silence after which an event stream is considered dead: the server sends an SSE
#: comment every 15 s, so four missed pings mean a half-open connection, not a quiet server.
FOLLOW_TIMEOUT = 60.0


class ClientError(Exception):
    """Base of everything the client raises."""


class ServerNotRunning(ClientError):
    """Nothing answers at the URL (connection refused, unreachable, or timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"mlx-serve is not running at {url} ({reason})")
        self.url = url
        self.reason = reason


class ApiError(ClientError):
    """The server answered with an HTTP error; ``message`` is its OpenAI-shaped message."""

    def __init__(
        self, status: int, message: str, code: str | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = body  # the parsed JSON answer, when it was JSON


class Unauthorized(ApiError):
    """401: the server wants an API key and none, or the wrong one, was sent."""


class ServerTooOld(ApiError):
    """The server has no route for this request: it predates the feature."""


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


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` as a unix time: a duration back from now (``10m``, ``1h30m``), an ISO 8601
    time (local time when it has no offset), or a unix time. Raises ``ValueError``."""
    text = text.strip()
    now = time.time() if now is None else now
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        # A bare number that looks like a unix time is one; smaller ones are seconds ago.
        return value if value > 1e9 else now - value
    from mlx_serve.config.durations import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: use a duration (10m, 2h), an ISO time "
            "(2024-05-01T12:00) or a unix time"
        ) from None


class Client:
    """One method per management endpoint; each call opens its own connection.

    Streaming methods return iterators that yield parsed JSON objects as the lines arrive,
    and close the connection when the iterator is closed or exhausted.
    """

    def __init__(self, url: str, api_key: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"invalid server URL {url!r}")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        self._prefix = parsed.path.rstrip("/")
        self.api_key = api_key

    # ------------------------------------------------------------- endpoints

    def health(self, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        return self._object("GET", "/health", timeout=timeout)

    def stats(self) -> dict[str, Any]:
        return self._object("GET", "/api/stats")

    def models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self._json("GET", "/api/models")["models"]
        return models

    def show(self, name: str) -> dict[str, Any]:
        return self._object("GET", f"/api/models/{_quote(name)}")

    def load(
        self, name: str, keep_alive: str | float | None = None, stream: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Load a model; yields the NDJSON progress (queued, loading, loaded, success|error),
        or one final object when ``stream`` is false."""
        body: dict[str, Any] = {} if keep_alive is None else {"keep_alive": keep_alive}
        path = f"/api/models/{_quote(name)}/load"
        if not stream:
            return iter([self._object("POST", path, body=body, timeout=None)])
        return self._ndjson("POST", path, body=body, query={"stream": "true"})

    def unload(self, name: str, force: bool = False) -> dict[str, Any]:
        query = {"force": "true"} if force else None
        return self._object("POST", f"/api/models/{_quote(name)}/unload", query=query, timeout=None)

    def delete(self, name: str, local: bool = False) -> dict[str, Any]:
        query = {"local": "true"} if local else None
        return self._object("DELETE", f"/api/models/{_quote(name)}/files", query=query)

    def pull(self, repo: str, revision: str | None = None) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {"model": repo}
        if revision is not None:
            body["revision"] = revision
        return self._ndjson("POST", "/api/pull", body=body)

    def events(
        self,
        model: str | None = None,
        since: float | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        query = _event_query(model, since, kind, limit)
        events: list[dict[str, Any]] = self._json("GET", "/api/events", query=query)["events"]
        return events

    def follow_events(
        self,
        model: str | None = None,
        since: float | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The live event stream. With ``since``, the server first replays the matching recent
        events (at most ``limit``) on the same subscription, so nothing falls between the
        replay and the live part."""
        query = {**_event_query(model, since, kind, limit), "follow": "true"}
        return self._sse("GET", "/api/events", query=query)

    def reload(self) -> dict[str, Any]:
        """Re-read models.yaml: ``{"status": "ok"|"invalid", "added", "removed", "changed",
        "unchanged", "restart_needed", "error"}``. An invalid file is returned, not raised,
        whatever the HTTP status, since it is an answer the command renders. Raises
        :class:`ServerTooOld` if the server has no reload route."""
        try:
            result = self._object("POST", "/api/reload", timeout=None)
        except ApiError as exc:
            if isinstance(exc.body, dict) and exc.body.get("status") == "invalid":
                return dict(exc.body)
            if exc.status in (404, 405) and exc.code in (None, "not_found", "method_not_allowed"):
                raise ServerTooOld(exc.status, "the server has no /api/reload", exc.code) from exc
            raise
        return result

    # ------------------------------------------------------------ transport

    def _open(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        timeout: float | None = READ_TIMEOUT,
        accept: str = "application/json",
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request; return the open connection and response (status < 400).

        Connecting uses :data:`CONNECT_TIMEOUT`; reads then use ``timeout`` (None: wait as
        long as the server needs, e.g. for a model load that takes minutes).
        """
        target = self._prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": accept, "User-Agent": "mlx-serve-cli"}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
        if payload is not None or method not in ("GET", "HEAD"):
            # The management API requires it on every state-changing call (see router/origin).
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except (ConnectionRefusedError, FileNotFoundError):
            conn.close()
            raise ServerNotRunning(self.url, "connection refused") from None
        except TimeoutError:
            conn.close()
            raise ServerNotRunning(self.url, "connection timed out") from None
        except OSError as exc:
            conn.close()
            raise ServerNotRunning(self.url, exc.strerror or str(exc)) from None
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request(method, target, body=payload, headers=headers)
            resp = conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected) as exc:
            conn.close()
            raise ServerNotRunning(self.url, f"connection lost: {exc}") from None
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            try:
                raw = resp.read()
            finally:
                conn.close()
            raise _api_error(resp.status, resp.reason, raw)
        return conn, resp

    def _json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        timeout: float | None = READ_TIMEOUT,
    ) -> Any:
        conn, resp = self._open(method, path, body=body, query=query, timeout=timeout)
        try:
            raw = resp.read()
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(resp.status, f"the server sent invalid JSON for {path}") from None

    def _object(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        timeout: float | None = READ_TIMEOUT,
    ) -> dict[str, Any]:
        """:meth:`_json` for the endpoints that answer a JSON object (all but none)."""
        data = self._json(method, path, body=body, query=query, timeout=timeout)
        if not isinstance(data, dict):
            raise ApiError(200, f"the server sent {type(data).__name__}, not an object, for {path}")
        return data

    def _ndjson(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield one object per line of a newline-delimited JSON response, as it arrives."""
        # The request is sent before the first next(): errors surface at the call site.
        conn, resp = self._open(
            method, path, body=body, query=query, timeout=None, accept="application/x-ndjson"
        )

        def lines() -> Iterator[dict[str, Any]]:
            try:
                while line := resp.readline():
                    if line.strip():
                        yield json.loads(line)
            finally:
                conn.close()

        return lines()

    def _sse(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the JSON ``data:`` payload of each server-sent event; skip comments (pings)."""
        conn, resp = self._open(
            method, path, query=query, timeout=FOLLOW_TIMEOUT, accept="text/event-stream"
        )

        def events() -> Iterator[dict[str, Any]]:
            data: list[bytes] = []
            try:
                while True:
                    try:
                        line = resp.readline()
                    except TimeoutError:
                        raise ServerNotRunning(self.url, "the event stream went silent") from None
                    except (ConnectionError, http.client.IncompleteRead) as exc:
                        raise ServerNotRunning(self.url, f"connection lost: {exc}") from None
                    if not line:
                        return  # the server closed the stream (it is stopping)
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        yield json.loads(b"\n".join(data))
                        data = []
            finally:
                conn.close()

        return events()


def _event_query(
    model: str | None, since: float | None, kind: str | None, limit: int | None
) -> dict[str, str]:
    query: dict[str, str] = {}
    if model:
        query["model"] = model
    if since is not None:
        query["since"] = repr(float(since))
    if kind:
        query["type"] = kind
    if limit is not None:
        query["limit"] = str(limit)
    return query


def _quote(name: str) -> str:
    # Model names may contain "/" and ":" (``org/c:latest``); the route accepts them raw.
    return urllib.parse.quote(name, safe="/:@")


def _api_error(status: int, reason: str, raw: bytes) -> ApiError:
    """The OpenAI-shaped ``{"error": {"message", "code"}}``, or the status line and the start
    of the body when whatever answered is not mlx-serve."""
    message, code, body = f"HTTP {status} {reason}".strip(), None, None
    try:
        body = json.loads(raw)
        error = body["error"]
        if isinstance(error, str):  # {"status": "invalid", "error": "..."} style answers
            message = error
        else:
            message = str(error["message"])
            code = error.get("code")
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip().splitlines()
        if text:
            message += f": {text[0][:200]}"
    cls = Unauthorized if status == 401 else ApiError
    return cls(status, message, code if isinstance(code, str) else None, body)
