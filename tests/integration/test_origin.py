"""Browser-origin protection with forged Origin / Host headers against the real app.

What a hostile web page can send: simple cross-origin POSTs (text/plain or form bodies, no
preflight), and, through DNS rebinding, requests whose Host is the attacker's name. None may
change anything or read an answer; local tools (no Origin), the server's own dashboard and
localhost web UIs keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import error_code
from tests.integration.conftest import Running, StartServer

CHAT = {"model": "a", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


async def server(start_server: StartServer, tiny_models: dict[str, Path], **kw: Any) -> Running:
    return await start_server({"a": {"type": "text", "path": str(tiny_models["a"])}}, **kw)


async def test_foreign_pages_change_nothing(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await server(start_server, tiny_models)
    evil = {"Origin": "https://evil.example"}
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/chat/completions", {"data": str(CHAT), "headers": {**evil,
            "Content-Type": "text/plain"}}),
        ("POST", "/api/models/a/load", {"json": {}, "headers": evil}),
        ("POST", "/api/pull", {"data": "model=org/x", "headers": {**evil,
            "Content-Type": "application/x-www-form-urlencoded"}}),
        ("DELETE", "/api/models/a/files", {"headers": evil}),
        ("POST", "/api/reload", {"headers": evil}),
        ("GET", "/api/stats", {"headers": evil}),
        ("POST", "/api/chat", {"json": {"model": "a"}, "headers": evil}),
        ("DELETE", "/api/delete", {"json": {"model": "a"}, "headers": evil}),
        ("POST", "/v1/messages", {"json": {"model": "a"}, "headers": evil}),
        ("POST", "/v1/responses", {"json": {"model": "a"}, "headers": evil}),
        ("POST", "/v1/rerank", {"json": {"model": "a"}, "headers": evil}),
    ]  # fmt: skip
    for method, path, kw in attempts:
        async with run.http.request(method, path, **kw) as r:
            body = await r.json()
            assert r.status == 403, (path, body)
            if path.startswith("/v1/messages"):  # Anthropic's shape has a type, no code
                assert body["error"]["type"] == "permission_error", body
            else:
                assert error_code(body) == "origin_not_allowed", (path, body)
            assert "Access-Control-Allow-Origin" not in r.headers
    # A preflight from that origin gets no CORS grant either.
    headers = {**evil, "Access-Control-Request-Method": "POST"}
    async with run.http.options("/v1/chat/completions", headers=headers) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    assert run.supervisor.loaded() == [] and run.kinds("model.loaded") == []


async def test_dns_rebinding_is_refused(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await server(start_server, tiny_models)
    port = run.url.rsplit(":", 1)[1]
    # The page's own origin, after its name was re-pointed at 127.0.0.1: same-origin to the
    # browser, so only the Host header gives it away.
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    async with run.http.post("/v1/chat/completions", json=CHAT, headers=rebound) as r:
        body = await r.json()
        assert r.status == 403 and body["error"]["code"] == "host_not_allowed", body
    async with run.http.get("/v1/models", headers={"Host": "evil.example"}) as r:
        assert r.status == 403
    assert run.supervisor.loaded() == []


async def test_local_clients_dashboard_and_listed_origins_work(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await server(
        start_server,
        tiny_models,
        allowed_origins=["https://app.example"],
        allowed_hosts=["mlx.lan"],
    )
    port = run.url.rsplit(":", 1)[1]
    # No Origin (curl, SDKs): as always.
    status, _ = await run.chat("a")
    assert status == 200
    # The dashboard's own origin, a localhost web UI on another port, a listed origin: allowed,
    # and each gets its CORS header, streams included.
    for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000", "https://app.example"):
        async with run.http.post(
            "/v1/chat/completions", json={**CHAT, "stream": True}, headers={"Origin": origin}
        ) as r:
            await r.read()
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == origin
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with run.http.options("/v1/chat/completions", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    # A listed host name and plain IPs pass the rebinding check.
    for host in (f"mlx.lan:{port}", f"127.0.0.1:{port}", f"localhost:{port}"):
        async with run.http.get("/v1/models", headers={"Host": host}) as r:
            assert r.status == 200, host


async def test_management_calls_must_be_json(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await server(start_server, tiny_models)
    attempts: list[dict[str, Any]] = [{}, {"data": "x", "headers": {"Content-Type": "text/plain"}}]
    for kw in attempts:
        async with run.http.post("/api/models/a/load", **kw) as r:
            body = await r.json()
            assert r.status == 415, body
            assert "application/json" in body["error"]["message"]
    assert run.kinds("model.loaded") == []
    async with run.http.post("/api/models/a/load", json={}) as r:
        assert r.status == 200
