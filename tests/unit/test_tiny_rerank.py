"""The tiny rerankers (built, cached, loadable by mlx-vlm) and the rerank worker's scoring and
request handling, in process (the worker as a real process is tests/integration/test_rerank.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx_vlm")
pytest.importorskip("tokenizers")

from mlx_serve.errors import ApiError
from mlx_serve.router.validation import check_rerank
from mlx_serve.tiny_models._atomic import MARKER_FILE
from mlx_serve.tiny_models.rerank import build_generative_rerank_model, build_rerank_model
from mlx_serve.workers import rerank_server
from mlx_serve.workers.rerank_server import Reranker, RerankRequest

QUERY = "capital of France"
DOCUMENTS = [
    "Paris is the capital of France.",
    "flour",
    "The morning train was late again, so the station filled with people.",
    "",
    "the capital of France is Paris, a large city on the river Seine",
]


def worker_args(**overrides: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rerank_server._add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def request(reranker: Reranker, **body: Any) -> dict[str, Any]:
    """What the worker answers to ``body`` (a query and documents by default)."""
    full = {"model": "m", "query": QUERY, "documents": DOCUMENTS, **body}
    req = rerank_server.parse_request(full, worker_args(), default_model="m")
    answer: dict[str, Any] = json.loads(rerank_server.compute(reranker, req))
    return answer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rerank_model(tmp_path_factory.mktemp("tiny-rerank") / "model")


@pytest.fixture(scope="module")
def reranker(model_dir: Path) -> Reranker:
    # batch_size 2: five documents take three forward passes, shortest pairs first.
    return rerank_server._load(model_dir, worker_args(batch_size=2, model=str(model_dir)))


# --------------------------------------------------------------------------- the builds


def test_build_writes_a_complete_offline_cross_encoder(model_dir: Path) -> None:
    from safetensors import safe_open

    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        MARKER_FILE,
    } <= names
    assert "random-weight" in (model_dir / "README.md").read_text()
    assert (model_dir / "model.safetensors").stat().st_size < 1_000_000
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 1  # one relevance logit
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    # Hugging Face names, as in a real checkpoint: the loader's sanitize is exercised.
    assert {"bert.embeddings.word_embeddings.weight", "classifier.weight"} <= keys
    assert all(k.startswith(("bert.", "classifier.")) for k in keys)


def test_the_tokenizer_encodes_pairs_like_bert(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    config = json.loads((model_dir / "config.json").read_text())
    assert tokenizer.get_vocab_size(with_added_tokens=True) == config["vocab_size"]
    pair = tokenizer.encode("The Train?", "It was late.")
    assert pair.tokens[0] == "[CLS]" and pair.tokens.count("[SEP]") == 2
    assert pair.tokens[-1] == "[SEP]"
    first_sep = pair.tokens.index("[SEP]")
    assert set(pair.type_ids[: first_sep + 1]) == {0}
    assert set(pair.type_ids[first_sep + 1 :]) == {1}
    assert pair.tokens[1:3] == ["the", "train"]  # lower-cased, as BERT's uncased tokenizer


def test_builds_are_cached_and_deterministic_in_the_seed(model_dir: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    assert build_rerank_model(model_dir) == model_dir
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
    weights = (model_dir / "model.safetensors").read_bytes()
    assert (build_rerank_model(tmp_path / "same") / "model.safetensors").read_bytes() == weights
    other = build_rerank_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != weights


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_rerank_model(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- scoring


def test_loaded_as_a_sequence_classifier_with_the_models_window(reranker: Reranker) -> None:
    assert reranker.kind == "sequence_classifier" and not reranker.takes_instruction
    assert reranker.max_length == 512


def test_results_are_ranked_and_shaped_like_cohere(reranker: Reranker) -> None:
    answer = request(reranker)
    assert answer["id"].startswith("rerank-") and answer["object"] == "list"
    assert answer["model"] == "m"
    results = answer["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores) and max(scores) - min(scores) > 0.05
    assert all(r["document"] == {"text": DOCUMENTS[r["index"]]} for r in results)
    tokens = answer["usage"]["total_tokens"]
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert answer["meta"]["billed_units"] == {"search_units": 1, "total_tokens": tokens}


def test_scores_do_not_depend_on_batching_or_padding(reranker: Reranker) -> None:
    batched = {r["index"]: r["relevance_score"] for r in request(reranker)["results"]}
    for index, document in enumerate(DOCUMENTS):
        [alone] = request(reranker, documents=[document])["results"]
        assert alone["relevance_score"] == pytest.approx(batched[index], abs=1e-5), document


def test_top_n_and_return_documents(reranker: Reranker) -> None:
    full = request(reranker)["results"]
    top = request(reranker, top_n=2, return_documents=False)["results"]
    assert top == [{k: r[k] for k in ("index", "relevance_score")} for r in full[:2]]
    assert len(request(reranker, top_n=50)["results"]) == len(DOCUMENTS)


def test_equal_scores_keep_the_input_order(reranker: Reranker) -> None:
    results = request(reranker, documents=["same text", "other", "same text"])["results"]
    same = [r["index"] for r in results if r["index"] != 1]
    assert same == [0, 2]


def test_a_long_document_is_truncated_to_the_window(reranker: Reranker) -> None:
    long_text = "the river turned east below the hills " * 400  # ~3000 tokens
    short = request(reranker, documents=["short"])["usage"]["total_tokens"]
    answer = request(reranker, documents=[long_text, "short"])
    assert len(answer["results"]) == 2
    assert answer["usage"]["total_tokens"] == 512 + short


def test_a_cross_encoder_refuses_an_instruction(reranker: Reranker) -> None:
    with pytest.raises(ApiError) as info:
        request(reranker, instruction="Judge strictly.")
    assert (info.value.status, info.value.param) == (400, "instruction")


def test_a_generative_reranker_is_scored_by_mlx_vlm(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Qwen3-Reranker's kind: loaded by the same loader, scored by mlx-vlm's own yes/no code,
    and the instruction is taken (and changes the scores)."""
    path = build_generative_rerank_model(tmp_path_factory.mktemp("tiny-qwen3") / "model")
    generative = rerank_server._load(path, worker_args(model=str(path)))
    assert generative.kind == "generative_text" and generative.takes_instruction
    plain = request(generative, documents=DOCUMENTS[:3])["results"]
    scores = [r["relevance_score"] for r in plain]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    instructed = request(generative, documents=DOCUMENTS[:3], instruction="Find capitals.")
    assert {r["index"]: r["relevance_score"] for r in instructed["results"]} != {
        r["index"]: r["relevance_score"] for r in plain
    }


@pytest.mark.parametrize(
    ("config", "tokenizer_limit", "expected"),
    [
        ({"model_type": "bert", "max_position_embeddings": 512}, 512, 512),
        # XLM-RoBERTa (bge-reranker-*): positions start after the padding index.
        (
            {"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1},
            None,
            512,
        ),
        ({"model_type": "modernbert", "max_position_embeddings": 8192}, 10**30, 8192),
        ({"model_type": "bert", "max_position_embeddings": 512}, 128, 128),
        ({}, None, rerank_server.DEFAULT_MAX_LENGTH),
    ],
)
def test_model_window(
    tmp_path: Path, config: dict[str, Any], tokenizer_limit: int | None, expected: int
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer = argparse.Namespace(model_max_length=tokenizer_limit)
    assert rerank_server._model_max_length(tmp_path, tokenizer) == expected


# --------------------------------------------------------------------------- requests


def parse(**body: Any) -> RerankRequest:
    return rerank_server.parse_request(body, worker_args(max_documents=3), default_model="d")


def test_request_defaults_and_document_forms() -> None:
    req = parse(query="q", documents=["a", {"text": "b", "title": "ignored"}, ""])
    assert req == RerankRequest(
        model="d",
        query="q",
        documents=["a", "b", ""],
        top_n=None,
        return_documents=True,
        instruction=None,
    )
    accepted = parse(
        model="m", query="q", documents=["a"], top_n=5, rank_fields=["text"],
        max_chunks_per_doc=10, max_tokens_per_doc=512, return_documents=False,
    )  # fmt: skip
    assert (accepted.model, accepted.top_n, accepted.return_documents) == ("m", 5, False)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"documents": ["a"]}, "query", None),
        ({"query": "", "documents": ["a"]}, "query", None),
        ({"query": 3, "documents": ["a"]}, "query", None),
        ({"query": "q"}, "documents", None),
        ({"query": "q", "documents": []}, "documents", None),
        ({"query": "q", "documents": {"text": "a"}}, "documents", None),
        ({"query": "q", "documents": [None]}, "documents", None),
        ({"query": "q", "documents": [{"text": 5}]}, "documents", None),
        ({"query": "q", "documents": [{"text": "a", "image_url": "file:///etc/passwd"}]},
         "documents", "unsupported_content"),
        ({"query": "q", "documents": ["a"] * 4}, "documents", "too_many_documents"),
        ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n", None),
        ({"query": "q", "documents": ["a"], "top_n": 1.5}, "top_n", None),
        ({"query": "q", "documents": ["a"], "return_documents": 1}, "return_documents", None),
        ({"query": "q", "documents": ["a"], "instruction": 7}, "instruction", None),
        ({"query": "q", "documents": ["a"], "rank_fields": "text"}, "rank_fields", None),
        ({"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, "max_tokens_per_doc", None),
    ],
)  # fmt: skip
def test_bad_requests(body: dict[str, Any], param: str, code: str | None) -> None:
    with pytest.raises(ApiError) as info:
        parse(**body)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


def test_the_router_check_is_the_workers() -> None:
    check_rerank({"query": "q", "documents": ["a"] * 50})  # the count limit is the worker's
    with pytest.raises(ApiError):
        check_rerank({"query": "q", "documents": [{"video": "x.mp4", "text": "a"}]})
