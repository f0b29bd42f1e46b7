"""A tiny headless-Chromium driver over the Chrome DevTools Protocol (CDP), for page tests.

No Playwright or Selenium (they download their own browsers): this starts the system's
Chromium (Debian's ``chromium`` package, ``/usr/bin/chromium``) in its own process group with
a throwaway profile, finds its DevTools port in ``DevToolsActivePort``, opens one page target
and talks to it over one aiohttp websocket (flattened sessions)::

    async with Browser.launch() as browser:
        await browser.navigate("http://127.0.0.1:8095/dashboard")
        await browser.wait_for("document.querySelectorAll('tr').length > 1", what="rows")
        assert await browser.evaluate("document.title") == "mlx-serve"
        await browser.screenshot(tmp_path / "page.png")
        assert browser.errors == []

Every console error (``console.error``), uncaught exception or unhandled promise rejection and
browser log entry of level error (failed resource loads, CSP violations...) is collected in
:attr:`Browser.errors` as a :class:`PageError`. Closing kills Chromium's whole process group.

Waits (:meth:`Browser.wait_for`) run in the page: the predicate is re-checked on every DOM
mutation (and every :data:`RECHECK_MS` for state kept in JavaScript only), and one CDP answer
comes back when it holds, rather than a round trip per check.

Why not Playwright: it drives Debian's Chromium fine (``executable_path``), and the page API
above maps onto it one to one, but it starts a Node.js driver with each browser: the dashboard
tests took about 45% longer with it (measured on the 2-core box), for a 53 MB dependency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mlx_serve.workers.process import end_group_sync
from tests.conftest import eventually

#: Where Debian's ``chromium`` package puts the launcher; ``$CHROMIUM`` overrides it.
DEFAULT_BINARY = "/usr/bin/chromium"

#: The background-networking flags are not optional here: without them Chromium keeps trying
#: to reach Google services (component updates, sync, variations) and floods a closed network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)

#: How often (ms) a wait re-checks its predicate in the page when no DOM mutation came.
RECHECK_MS = 50

#: A page-side wait: resolves ``{ok: true, value}`` once the predicate (``%(predicate)s``) is
#: truthy, re-checked on DOM mutations and every ``RECHECK_MS``; ``{ok: false, value: last}``
#: after ``%(timeout_ms)s``; rejects if the predicate throws.
_WAIT_JS = """new Promise((resolve, reject) => {
  let busy = false, done = false, last = null;
  const finish = (settle, value) => {
    if (done) return;
    done = true; observer.disconnect(); clearInterval(timer); clearTimeout(limit);
    settle(value);
  };
  const check = () => {
    if (busy || done) return;
    busy = true;
    Promise.resolve().then(() => (%(predicate)s)).then(
      (value) => { busy = false; last = value; if (value) finish(resolve, {ok: true, value}); },
      (error) => { busy = false; finish(reject, error); });
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {subtree: true, childList: true, attributes: true,
                              characterData: true});
  const timer = setInterval(check, %(recheck_ms)d);
  const limit = setTimeout(() => finish(resolve, {ok: false, value: last}), %(timeout_ms)d);
  check();
})"""


def chromium_binary() -> str | None:
    """The Chromium to use, or None when there is none (tests then skip)."""
    configured = os.environ.get("CHROMIUM")
    if configured:
        return configured if shutil.which(configured) else None
    return DEFAULT_BINARY if Path(DEFAULT_BINARY).exists() else shutil.which("chromium")


class CdpError(RuntimeError):
    """A CDP command failed, or the page's JavaScript threw."""


@dataclass(frozen=True)
class PageError:
    """One error the page produced. ``source`` is ``console``, ``exception`` or the log's
    source (``network``, ``javascript``, ``security``...)."""

    source: str
    text: str
    url: str = ""

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"[{self.source}] {self.text}{where}"


class Browser:
    """One headless Chromium with one page. Create it with :meth:`launch`."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        profile: Path,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
    ) -> None:
        self._proc = proc
        self._profile = profile
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool], asyncio.Future[Any]]] = []
        self._session: str | None = None
        self._reader = asyncio.create_task(self._read_loop())
        #: Console errors, uncaught exceptions and error log entries, in order.
        self.errors: list[PageError] = []
        #: Every ``console.*`` message as ``(type, text)``, for debugging a failing test.
        self.console: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(
        cls,
        binary: str | None = None,
        *,
        width: int = 1440,
        height: int = 900,
        startup_timeout: float = 20.0,
    ) -> AsyncIterator[Browser]:
        """Start Chromium and open a ``width`` x ``height`` page; always cleaned up."""
        binary = binary or chromium_binary()
        if binary is None:
            raise FileNotFoundError("no Chromium: install Debian's 'chromium' or set $CHROMIUM")
        profile = Path(tempfile.mkdtemp(prefix="mlx-serve-chromium-"))
        with (profile.parent / f"{profile.name}.log").open("wb") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the stop is in a thread
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: closing kills every helper
            )
        browser: Browser | None = None
        http = aiohttp.ClientSession()
        try:
            ws_url = await _devtools_url(proc, profile, startup_timeout)
            ws = await http.ws_connect(ws_url, max_msg_size=0, heartbeat=None)
            browser = cls(proc, profile, http, ws)
            await browser._open_page(width, height)
            yield browser
        finally:
            if browser is not None:
                await browser._close()
            else:
                await http.close()
                await _stop(proc, profile)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._send("Browser.close", session=False), 2)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._ws.close()
        await self._http.close()
        await _stop(self._proc, self._profile)

    async def _open_page(self, width: int, height: int) -> None:
        target = await self._send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = await self._send(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self._send(f"{domain}.enable")
        await self._send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    # ------------------------------------------------------------------ protocol

    async def _send(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = True
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session and self._session is not None:
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await self._ws.send_str(json.dumps(message))
            return await future
        finally:
            self._pending.pop(msg_id, None)

    async def _read_loop(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data: dict[str, Any] = json.loads(msg.data)
                if "id" in data:
                    future = self._pending.get(data["id"])
                    if future is not None and not future.done():
                        if "error" in data:
                            future.set_exception(CdpError(f"{data['error']}"))
                        else:
                            future.set_result(data.get("result", {}))
                elif "method" in data:
                    self._on_event(data["method"], data.get("params", {}))
        finally:
            closed = CdpError("the DevTools connection closed")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(closed)
            for _, _, waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(closed)

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            self.console.append((params.get("type", ""), text))
            if params.get("type") in ("error", "assert"):
                self.errors.append(PageError("console", text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception") or {}
            text = exception.get("description") or details.get("text", "exception")
            self.errors.append(PageError("exception", str(text), details.get("url", "")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(
                    PageError(
                        entry.get("source", "log"), entry.get("text", ""), entry.get("url", "")
                    )
                )
        for waiter_method, predicate, future in list(self._waiters):
            if waiter_method == method and not future.done() and predicate(params):
                future.set_result(params)

    def _expect(
        self, method: str, predicate: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (method, predicate, future)
        self._waiters.append(entry)
        future.add_done_callback(lambda _: self._waiters.remove(entry))
        return future

    # ------------------------------------------------------------------ page API

    async def navigate(self, url: str, timeout: float = 15.0) -> None:
        """Load ``url`` and wait for its ``load`` event."""
        loaded = self._expect("Page.loadEventFired")
        try:
            result = await self._send("Page.navigate", {"url": url})
            if result.get("errorText"):
                raise CdpError(f"navigating to {url}: {result['errorText']}")
            await asyncio.wait_for(asyncio.shield(loaded), timeout)
        finally:
            loaded.cancel()

    async def reload(self, timeout: float = 15.0) -> None:
        """Reload the page and wait for its ``load`` event."""
        loaded = self._expect("Page.loadEventFired")
        try:
            await self._send("Page.reload", {"ignoreCache": True})
            await asyncio.wait_for(asyncio.shield(loaded), timeout)
        finally:
            loaded.cancel()

    async def evaluate(self, expression: str, *, await_promise: bool = True) -> Any:
        """The JSON value of ``expression`` in the page (awaited if it is a promise).

        Raises :class:`CdpError` if it throws. The expression may not be a bare object literal
        (wrap it in parentheses), as in the DevTools console.
        """
        result = await self._send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "returnByValue": True,
                "awaitPromise": await_promise,
                "userGesture": True,
            },
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            exception = details.get("exception") or {}
            message = exception.get("description") or details.get("text")
            raise CdpError(f"{expression!r} threw: {message}")
        return result.get("result", {}).get("value")

    async def wait_for(
        self, predicate: str, timeout: float = 10.0, *, what: str | None = None
    ) -> Any:
        """Wait, in the page, until the JavaScript ``predicate`` is truthy; return its value.

        On timeout, fail with ``what`` (default: the predicate), its last value and the errors
        seen so far. A predicate that throws fails at once (:class:`CdpError`).
        """
        script = _WAIT_JS % {
            "predicate": predicate,
            "timeout_ms": int(timeout * 1000),
            "recheck_ms": RECHECK_MS,
        }
        async with asyncio.timeout(timeout + 10):  # the page's own deadline comes first
            result = await self.evaluate(script)
        if not result["ok"]:
            errors = "; ".join(map(str, self.errors)) or "none"
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate} "
                f"(last value {result['value']!r}; page errors: {errors})"
            )
        return result["value"]

    async def screenshot(self, path: Path | str, *, full_page: bool = False) -> Path:
        """Save a PNG of the viewport (or of the whole page) to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self._send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
            params["captureBeyondViewport"] = True
        result = await self._send("Page.captureScreenshot", params)
        target = Path(path)
        await asyncio.to_thread(target.write_bytes, base64.b64decode(result["data"]))
        return target

    async def resize(self, width: int, height: int) -> None:
        """Give the page a ``width`` x ``height`` viewport (CSS pixels), as a resized window
        would; returns once the page has laid itself out at that width."""
        await self._send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        next_frame = "new Promise(r => requestAnimationFrame(() => r(true)))"
        await self.wait_for(
            f"innerWidth === {int(width)} && {next_frame}", what=f"a {width} px wide viewport"
        )

    async def emulate_color_scheme(self, scheme: str) -> None:
        """Make ``prefers-color-scheme`` match ``"light"`` or ``"dark"`` ("" resets)."""
        await self._send(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
        )

    async def click(self, selector: str) -> None:
        """``element.click()`` on the first match of ``selector``; fails if there is none."""
        found = await self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el) return false; el.click(); return true; })()"
        )
        if not found:
            raise AssertionError(f"nothing matches {selector!r}")


def _remote_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("unserializableValue") or arg.get("type", ""))


async def _devtools_url(proc: subprocess.Popen[bytes], profile: Path, timeout: float) -> str:
    """The browser websocket URL, from ``DevToolsActivePort`` (port, then path)."""
    port_file = profile / "DevToolsActivePort"

    def written() -> str | None:
        if proc.poll() is not None:
            log = profile.parent / f"{profile.name}.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"Chromium exited with code {proc.returncode}:\n{tail}")
        with contextlib.suppress(FileNotFoundError, ValueError):
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
        return None

    return await eventually(written, timeout, f"Chromium to write {port_file}")


async def _stop(proc: subprocess.Popen[bytes], profile: Path) -> None:
    """End Chromium's whole process group (its zygote and renderers share it), then remove
    its profile and log."""
    await asyncio.to_thread(end_group_sync, proc, 5.0)
    shutil.rmtree(profile, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (profile.parent / f"{profile.name}.log").unlink()
