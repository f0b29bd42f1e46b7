"""Rerank models behind ``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``): the real rerank
worker (``mlx_serve.workers.rerank_server`` on mlx-vlm's reranker loader) on a tiny
random-weight BERT cross-encoder built locally, through the real router and supervisor.

Random weights make the order meaningless, so what is checked is the shape clients parse
(Cohere's and Jina's: ``results[].index``, ``results[].relevance_score``,
``results[].document.text``), that the order follows the scores, ``top_n`` and
``return_documents``, the 400s, and that a rerank model swaps, unloads and pre-warms like any
other type. litellm's own rerank clients are run against the server: its ``cohere`` provider
takes an ``api_base`` (``.../v1/rerank`` selects its v1 client, a bare base its v2 client,
which posts to ``/v2/rerank``) and its ``hosted_vllm`` provider posts to ``/rerank``; nothing
reaches the network (``LITELLM_LOCAL_MODEL_COST_MAP``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mlx_serve.tiny_models.rerank import build_rerank_model
from tests.integration.conftest import Running, StartServer, server_factory

pytestmark = pytest.mark.slow

# LiteLLM would fetch its model price list from the network at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

QUERY = "What is the capital of France?"
DOCUMENTS: list[Any] = [
    "Paris is the capital and largest city of France.",
    {"text": "Mix the flour, one egg and the milk into a smooth batter."},
    "The morning train was late again.",
    {"text": "France's capital city is Paris, on the Seine.", "title": "ignored"},
    "A local server answers questions from programs on the same computer.",
    "",
]
TEXTS = [d if isinstance(d, str) else d["text"] for d in DOCUMENTS]


@pytest.fixture(scope="module")
def rerank_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rerank_model(tmp_path_factory.mktemp("rerank") / "model")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path], rerank_dir: Path
) -> AsyncIterator[Running]:
    """One server: the reranker and a text model, one loaded at a time."""
    async with server_factory(tmp_path_factory.mktemp("rerank-server")) as start:
        yield await start(
            {
                "rr": {"type": "rerank", "path": str(rerank_dir), "aliases": ["rerank-v3.5"]},
                "chat": {"type": "text", "path": str(tiny_models["a"])},
            },
            max_loaded_models=1,
            startup_timeout="120s",
        )


async def rerank(
    run: Running, body: dict[str, Any], path: str = "/v1/rerank"
) -> tuple[int, dict[str, Any]]:
    async with run.http.post(path, json=body) as r:
        data: dict[str, Any] = await r.json()
        return r.status, data


def scores_by_index(body: dict[str, Any]) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in body["results"]}


@pytest.mark.asyncio(loop_scope="module")
async def test_results_sorted_by_score_with_their_documents(run: Running) -> None:
    status, body = await rerank(run, {"model": "rr", "query": QUERY, "documents": DOCUMENTS})
    assert status == 200, body
    assert body["id"].startswith("rerank-") and body["model"] == "rr"
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert max(scores) - min(scores) > 0.01, "the tiny model's scores are spread, not constant"
    # Documents come back by default, always as {"text": ...} (extra keys dropped).
    for result in results:
        assert result["document"] == {"text": TEXTS[result["index"]]}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert body["meta"]["billed_units"]["search_units"] == 1

    # The model's own loading and timings are reported like every mlx-serve worker's.
    loaded = next(e for e in run.kinds("model.loaded") if e.model == "rr")
    assert {"import_s", "load_s"} <= set(loaded.data)


@pytest.mark.asyncio(loop_scope="module")
async def test_top_n_return_documents_and_deterministic_scores(run: Running) -> None:
    base = {"model": "rr", "query": QUERY, "documents": DOCUMENTS}
    _, full = await rerank(run, base)
    status, top = await rerank(run, {**base, "top_n": 2, "return_documents": False})
    assert status == 200, top
    assert top["results"] == [
        {"index": r["index"], "relevance_score": r["relevance_score"]} for r in full["results"][:2]
    ]
    _, everything = await rerank(run, {**base, "top_n": 100})
    assert len(everything["results"]) == len(DOCUMENTS)

    # A document's score does not depend on the others (padding is masked): scored alone,
    # each gets the score it got in the batch.
    alone: dict[int, float] = {}
    for index, document in enumerate(DOCUMENTS[:3]):
        _, one = await rerank(run, {**base, "documents": [document]})
        alone[index] = one["results"][0]["relevance_score"]
    batch = scores_by_index(full)
    for index, score in alone.items():
        assert score == pytest.approx(batch[index], abs=1e-5)


@pytest.mark.asyncio(loop_scope="module")
async def test_other_paths_and_aliases_answer_under_the_name_used(run: Running) -> None:
    body = {"model": "rerank-v3.5", "query": QUERY, "documents": TEXTS[:3], "keep_alive": "5m"}
    for path in ("/rerank", "/v2/rerank"):
        status, answer = await rerank(run, body, path)
        assert status == 200, answer
        assert answer["model"] == "rerank-v3.5"
        assert len(answer["results"]) == 3


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"documents": []}, "documents"),
        ({"documents": None}, "documents"),
        ({"documents": "one document"}, "documents"),
        ({"documents": ["ok", 5]}, "documents"),
        ({"documents": [{"title": "no text"}]}, "documents"),
        ({"documents": [{"image": "http://example.com/cat.png"}]}, "documents"),
        ({"query": None}, "query"),
        ({"query": "   "}, "query"),
        ({"query": ["a list"]}, "query"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"return_documents": "yes"}, "return_documents"),
        ({"rank_fields": ["title"]}, "rank_fields"),
        ({"instruction": ""}, "instruction"),
    ],
)
async def test_bad_requests_are_400s_in_openai_shape(
    run: Running, change: dict[str, Any], param: str
) -> None:
    loads = len(run.kinds("model.loaded"))
    body = {"model": "rr", "query": QUERY, "documents": TEXTS[:2], **change}
    body = {k: v for k, v in body.items() if v is not None}
    status, answer = await rerank(run, body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]
    assert len(run.kinds("model.loaded")) == loads, "a hopeless request loads nothing"


@pytest.mark.asyncio(loop_scope="module")
async def test_instruction_is_refused_by_a_cross_encoder(run: Running) -> None:
    body = {"model": "rr", "query": QUERY, "documents": TEXTS[:2], "instruction": "Be strict."}
    status, answer = await rerank(run, body)
    assert status == 400, answer
    # The worker's 400, relayed (the router keeps its message and code, not its param).
    assert answer["error"]["type"] == "invalid_request_error"
    assert "'instruction'" in answer["error"]["message"]


@pytest.mark.asyncio(loop_scope="module")
async def test_wrong_endpoint_either_way_is_a_clear_400(run: Running) -> None:
    status, answer = await rerank(run, {"model": "chat", "query": QUERY, "documents": ["x"]})
    assert status == 400 and answer["error"]["code"] == "wrong_model_type"
    assert "/v1/chat/completions" in answer["error"]["message"]
    for path, body in [
        ("/v1/chat/completions", {"model": "rr", "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/embeddings", {"model": "rerank-v3.5", "input": "x"}),
    ]:
        async with run.http.post(path, json=body) as r:
            answer = await r.json()
            assert r.status == 400 and answer["error"]["code"] == "wrong_model_type"
            assert "/v1/rerank" in answer["error"]["message"]
    async with run.http.get("/v1/models/rr") as r:
        assert (await r.json())["type"] == "rerank"


@pytest.mark.asyncio(loop_scope="module")
async def test_swaps_with_a_text_model_one_at_a_time(run: Running) -> None:
    body = {"model": "rr", "query": QUERY, "documents": TEXTS[:3]}
    for _ in range(2):
        status, answer = await run.chat("chat", max_tokens=2)
        assert status == 200, answer
        assert run.supervisor.loaded() == ["chat"]
        status, answer = await rerank(run, body)
        assert status == 200, answer
        assert run.supervisor.loaded() == ["rr"]
        assert run.supervisor.workers["chat"].pid is None, "the text model was unloaded"
    loads = [e.model for e in run.kinds("model.loaded")]
    assert loads[-4:] == ["chat", "rr", "chat", "rr"]
    unloads = [e.model for e in run.kinds("model.unloaded")]
    assert unloads[-3:] == ["chat", "rr", "chat"]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.loop_block_ok("litellm builds its pydantic types on the caller's loop on first use")
async def test_litellm_rerank_clients(run: Running) -> None:
    # Imported off the loop: litellm's first import takes seconds (the loop-block guard).
    litellm: Any = await asyncio.to_thread(importlib.import_module, "litellm")

    common: dict[str, Any] = {
        "query": QUERY,
        "documents": TEXTS[:4],
        "top_n": 2,
        "api_key": "unused",
        "return_documents": True,
    }
    for model, api_base in [
        ("cohere/rr", run.url + "/v1/rerank"),  # Cohere's v1 client
        ("cohere/rr", run.url),  # Cohere's v2 client: /v2/rerank
        ("hosted_vllm/rr", run.url),  # vLLM's: /rerank
    ]:
        reply = await litellm.arerank(model=model, api_base=api_base, **common)
        results = reply.results
        assert results is not None and len(results) == 2, (model, api_base, reply)
        assert results[0]["relevance_score"] >= results[1]["relevance_score"]
        for result in results:
            assert result["document"]["text"] == TEXTS[result["index"]]


@pytest.mark.asyncio(loop_scope="module")
async def test_keep_alive_zero_unloads_after_the_request(run: Running) -> None:
    body = {"model": "rr", "query": QUERY, "documents": TEXTS[:2], "keep_alive": 0}
    seen = run.mark()
    status, answer = await rerank(run, body)
    assert status == 200, answer
    await run.event("model.unloaded", "rr", after=seen, timeout=30)
    assert run.supervisor.loaded() == []
    assert run.supervisor.workers["rr"].pid is None


async def test_a_prewarmed_spare_becomes_the_rerank_worker(
    start_server: StartServer, rerank_dir: Path
) -> None:
    spare_run = await start_server(
        {"rr": {"type": "rerank", "path": str(rerank_dir)}},
        prewarm=["rerank"],
        startup_timeout="120s",
    )

    pid = (await spare_run.event("spare.ready", "rerank", timeout=90)).data["pid"]
    status, answer = await rerank(
        spare_run, {"model": "rr", "query": QUERY, "documents": TEXTS[:3]}
    )
    assert status == 200, answer
    assert len(answer["results"]) == 3
    loaded = spare_run.kinds("model.loaded")[-1]
    assert loaded.data["spare"] is True and loaded.data["pid"] == pid
