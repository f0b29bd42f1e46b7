"""Honest request stats and every outcome counted, against the real server (fake workers).

- A cold start is reported as load time: the time to first token runs from admission to a
  ready worker, tokens per second over the generation, in the request event, ``/api/stats``
  and the ``/metrics`` histograms alike.
- Requests refused before a worker saw them (404 unknown model, 400 bad body or wrong model
  type, 401, 403, 413, 415) are counted, by model (``unknown`` when none) and status, once
  each; polling the model list, the stats or the metrics counts nothing.
- What needs the operator is logged at WARNING/ERROR: a crash, a failed start, a rejected
  reload (its YAML mistake in plain words).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlx_serve.config import ModelType
from mlx_serve.supervisor.events import Event
from mlx_serve.testing import FakeWorkerDriver
from tests.conftest import eventually
from tests.integration.conftest import Running, StartServer

pytestmark = pytest.mark.slow

FAKE = {ModelType.TEXT: FakeWorkerDriver()}
LOAD_TIME = 0.5
CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fake(**args: Any) -> dict[str, Any]:
    return {"path": "fake/x", "args": args}


async def metrics(run: Running, **headers: str) -> Samples:
    async with run.http.get("/metrics", headers=headers) as r:
        assert r.status == 200
        text = await r.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def stats(run: Running, **headers: str) -> dict[str, Any]:
    async with run.http.get("/api/stats", headers=headers) as r:
        assert r.status == 200
        data: dict[str, Any] = await r.json()
    return data


def requests_of(run: Running) -> list[Event]:
    return run.kinds("request")


async def test_a_cold_start_is_load_time_not_ttft(start_server: StartServer) -> None:
    run = await start_server(
        {
            "s": fake(load_time=LOAD_TIME, token_delay=0.005),
            "n": fake(load_time=LOAD_TIME, token_delay=0.01),
        },
        drivers=FAKE,
        max_loaded_models=2,
    )
    status, lines = await run.stream("s", max_tokens=40)
    assert status == 200 and lines[-1] == b"[DONE]"
    status, body = await run.chat("n", max_tokens=10)  # not streamed: the answer at once
    assert status == 200, body

    await run.event("request", count=2)
    streamed, whole = (e.data for e in requests_of(run))
    for data in (streamed, whole):
        # The load (the fake's 0.5 s plus starting a process) is reported as such...
        assert data["load_s"] >= LOAD_TIME, data
        assert data["queued_s"] < data["load_s"], data
        # ...and not as a slow first token.
        assert data["ttft_s"] < data["load_s"], data
        assert data["latency_s"] >= data["load_s"] + data["ttft_s"], data
    assert streamed["ttft_s"] < 0.25 * LOAD_TIME, streamed
    # Not streamed: the rate is over the worker's time, not over the wait for it.
    assert whole["tokens_per_s"] == pytest.approx(10 / whole["ttft_s"], rel=0.02)
    assert whole["tokens_per_s"] > 2 * 10 / whole["latency_s"], whole

    # Warm: no load time.
    assert (await run.chat("n", max_tokens=10))[0] == 200
    await run.event("request", count=3)
    assert requests_of(run)[-1].data["load_s"] == 0.0

    models = {m["name"]: m["metrics"] for m in (await stats(run))["models"]}
    for name in ("s", "n"):
        assert models[name]["ttft_p99_s"] < models[name]["load_p50_s"], models[name]
        assert models[name]["cold_starts"] == 1
    assert models["n"]["count"] == 2 and models["n"]["statuses"] == {"200": 2}

    after = await metrics(run)
    for name, data in (("s", streamed), ("n", whole)):
        assert after[key("mlx_serve_load_wait_seconds_count", model=name)] == 1
        assert after[key("mlx_serve_load_wait_seconds_sum", model=name)] == pytest.approx(
            data["load_s"]
        )
    # The first token of the cold start is in the TTFT histogram's low buckets.
    assert after[key("mlx_serve_time_to_first_token_seconds_bucket", model="s", le="0.25")] == 1
    assert after[key("mlx_serve_time_to_first_token_seconds_count", model="n")] == 2
    assert after[key("mlx_serve_time_to_first_token_seconds_sum", model="n")] < LOAD_TIME


async def test_every_refusal_is_counted_once(start_server: StartServer) -> None:
    run = await start_server(
        {"a": fake(), "broken": fake(exit_on_start=7)},
        drivers=FAKE,
        api_key="k3y",
        max_json_body="2KiB",
    )
    auth = {"Authorization": "Bearer k3y"}

    async def post(path: str, body: Any, **headers: str) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
        async with run.http.post(path, data=data, headers={**auth, **headers}) as r:
            return r.status, await r.json()

    chat = {"model": "a", "messages": MSGS, "max_tokens": 2}
    refusals: list[tuple[int, str, str, str | None]] = []  # status, code, endpoint, model

    status, body = await post(CHAT, {**chat, "model": "nope"})
    refusals.append((status, body["error"]["code"], CHAT, None))
    status, body = await post(CHAT, b"{not json")
    refusals.append((status, body["error"]["code"], CHAT, None))
    status, body = await post("/v1/embeddings", {"model": "a", "input": "x"})
    refusals.append((status, body["error"]["code"], "/v1/embeddings", "a"))
    status, body = await post(CHAT, {**chat, "max_tokens": "many"})
    refusals.append((status, body["error"]["code"], CHAT, "a"))
    status, body = await post(CHAT, {**chat, "messages": [{"role": "user", "content": "x" * 4096}]})
    refusals.append((status, body["error"]["code"], CHAT, None))
    status, body = await post(CHAT, chat, Authorization="Bearer wrong")
    refusals.append((status, body["error"]["code"], CHAT, None))
    status, body = await post(CHAT, chat, Origin="https://evil.example")
    refusals.append((status, body["error"]["code"], CHAT, None))
    status, body = await post("/api/models/a/load", b"{}", **{"Content-Type": "text/plain"})
    refusals.append((status, body["error"]["code"], "/api/models/{name}/load", None))
    status, body = await post("/v1/messages", {"model": "nope", "max_tokens": 2, "messages": MSGS})
    refusals.append((status, body["error"]["type"], "/v1/messages", None))

    assert [(r[0], r[1]) for r in refusals] == [
        (404, "model_not_found"),
        (400, "invalid_json"),
        (400, "wrong_model_type"),
        (400, None),  # a check without a code of its own: counted as "bad_request"
        (413, "request_too_large"),
        (401, "invalid_api_key"),
        (403, "origin_not_allowed"),
        (415, "unsupported_media_type"),
        (404, "not_found_error"),  # Anthropic's shape
    ]
    # One event each, under the model when it was known.
    events = requests_of(run)
    assert [(e.data["status"], e.data["endpoint"], e.model) for e in events] == [
        (status, endpoint, model) for status, _, endpoint, model in refusals
    ]
    assert [e.data["code"] for e in events] == [
        "model_not_found", "invalid_json", "wrong_model_type", "bad_request",
        "request_too_large", "invalid_api_key", "origin_not_allowed", "unsupported_media_type",
        "model_not_found",
    ]  # fmt: skip
    assert all(e.data["error"] for e in events)

    # Requests that reached the lease are counted once, by the lease's own event.
    assert (await post(CHAT, chat))[0] == 200
    status, body = await post(CHAT, {**chat, "model": "broken"})
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    status, _ = await post("/v1/messages", {"model": "a", "max_tokens": 2, "messages": MSGS})
    assert status == 200
    await run.event("request", count=len(refusals) + 3)
    assert [(e.model, e.data["status"], e.data["code"]) for e in requests_of(run)[-3:]] == [
        ("a", 200, None),
        ("broken", 503, "model_unavailable"),
        ("a", 200, None),
    ]

    after = await metrics(run, **auth)
    unknown = {"model": "unknown", "endpoint": CHAT}
    for status, code in ((404, "model_not_found"), (413, "request_too_large"),
                         (401, "invalid_api_key"), (403, "origin_not_allowed")):  # fmt: skip
        assert after[key("mlx_serve_requests_total", **unknown, status=str(status))] >= 1
        assert after[key("mlx_serve_request_errors_total", **unknown, code=code)] == 1
    assert after[key("mlx_serve_requests_total", **unknown, status="400")] == 1
    assert after[key("mlx_serve_request_errors_total", **unknown, code="invalid_json")] == 1
    wrong_type = {"model": "a", "endpoint": "/v1/embeddings"}
    assert after[key("mlx_serve_requests_total", **wrong_type, status="400")] == 1
    assert after[key("mlx_serve_request_errors_total", **wrong_type, code="wrong_model_type")] == 1
    assert after[key("mlx_serve_requests_total", model="a", endpoint=CHAT, status="200")] == 1
    assert after[key("mlx_serve_request_errors_total", model="broken", endpoint=CHAT,
                     code="model_unavailable")] == 1  # fmt: skip

    models = {m["name"]: m["metrics"] for m in (await stats(run, **auth))["models"]}
    assert models["a"]["statuses"] == {"200": 2, "400": 2}
    assert models["a"]["error_codes"] == {"wrong_model_type": 1, "bad_request": 1}
    assert models["broken"]["error_codes"] == {"model_unavailable": 1}


async def test_polling_counts_nothing(start_server: StartServer) -> None:
    run = await start_server({"a": fake()}, drivers=FAKE)
    assert (await run.chat("a", max_tokens=2))[0] == 200
    await run.event("request", count=1)
    before = await metrics(run)
    for _ in range(3):
        for path in ("/v1/models", "/v1/models/a", "/api/stats", "/api/models", "/health",
                     "/metrics", "/", "/api/tags"):  # fmt: skip
            async with run.http.get(path) as r:
                assert r.status == 200, path
    assert len(requests_of(run)) == 1
    after = await metrics(run)
    requests = {k: v for k, v in after.items() if k[0] == "mlx_serve_requests_total"}
    assert requests == {k: v for k, v in before.items() if k[0] == "mlx_serve_requests_total"}
    # An unknown route is an error, counted under a fixed label (never the path).
    async with run.http.get("/v1/nothing/here") as r:
        assert r.status == 404
    await run.event("request", count=2)
    assert requests_of(run)[-1].data["endpoint"] == "unmatched"


async def test_crashes_failed_starts_and_rejected_reloads_are_warnings(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mlx_serve")
    run = await start_server({"a": fake(), "broken": fake(exit_on_start=7)}, drivers=FAKE)
    assert (await run.chat("a", max_tokens=2))[0] == 200
    pid = run.supervisor.workers["a"].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await run.event("worker.crashed")
    assert (await run.chat("broken"))[0] == 503

    source = run.supervisor.config.source
    assert source is not None
    source.write_text("models:\n  a:\n    path fake/x\n    type: text\n")
    async with run.http.post("/api/reload", json={}) as r:
        assert r.status == 422
        assert "a ':' is missing after the key 'path'" in (await r.json())["error"]

    def records(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == level and r.name.startswith("mlx_serve")]  # fmt: skip

    await eventually(lambda: any("config.reload" in m for m in records(logging.WARNING)))
    errors, warnings = records(logging.ERROR), records(logging.WARNING)
    assert any(m.startswith("worker.crashed a ") and "(killed by SIGKILL)" in m for m in errors)
    assert any(m.startswith("model.failed broken ") and "code 7" in m for m in errors), errors
    reload = next(m for m in warnings if "config.reload" in m)
    assert "rejected" in reload
    assert f"{source}:3: invalid YAML: a ':' is missing after the key 'path'" in reload
    infos = records(logging.INFO)
    assert any(m.startswith("model.loaded a ") for m in infos)
    assert not any("=None" in m or "status=ok" in m for m in infos + warnings + errors)
