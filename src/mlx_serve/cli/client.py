"""Calling the server: a small synchronous HTTP client for the CLI, on ``http.client`` from
the standard library.

The CLI must start instantly, so it never imports aiohttp (or httpx, ~100 ms): every command
makes one or two requests, and the streamed ones (load progress, pulls, ``logs -f``) are read
line by line as they arrive. Errors become three exceptions the commands map to exit codes:
:class:`ServerNotRunning` (nothing answers at the URL), :class:`Unauthorized` (401, the API
key) and :class:`ApiError` (any other HTTP error, with the server's OpenAI-shaped message).
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "ApiError",
    "Client",
    "ClientError",
    "ServerNotRunning",
    "ServerTooOld",
    "Unauthorized",
]

#: Seconds to wait for a TCP connection: a local server accepts at once, and a hung remote
#: one should fail the command, not freeze it.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a short answer (stats, lists). Loads and pulls wait as long as needed.
READ_TIMEOUT = 30.0

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
