"""The rerank worker: ``python -m mlx_serve.workers.rerank_server --model DIR ...``.

``POST /v1/rerank`` (Cohere's and Jina's shape, which litellm's rerank clients speak) in front
of a reranker loaded by mlx-vlm, built on :func:`mlx_serve.workers.model_server.serve_model`
(loaded and warmed up before it listens, so ``/health`` 200 means ready).

Why our own worker rather than ``mlx_vlm.server``, which has a ``/v1/rerank`` of its own: the
same loading code (:func:`_load`), lighter (:func:`_imports`), the answer the clients parse
with nothing to translate (:func:`compute`), and one request at a time on one inference thread
(:func:`rerank`). Spares come for free: started without ``--model`` it waits for ``POST /load``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from mlx_serve.errors import ApiError
from mlx_serve.router.validation import check_rerank, rerank_documents
from mlx_serve.workers.model_server import MODEL_SERVER, ModelServer, read_json, serve_model

#: The longest pair a reranker reads when neither the model nor its tokenizer says (mlx-vlm's).
DEFAULT_MAX_LENGTH = 8192

#: ``(query, documents, instruction) -> (scores, tokens read)``
Scorer = Callable[[str, list[str], str | None], tuple[list[float], int]]


@dataclass
class Reranker:
    """A loaded reranker with everything a request needs."""

    model: Any
    tokenizer: Any  # the Hugging Face tokenizer (the processor's, for generative models)
    kind: str  # mlx-vlm's RerankerKind value: "sequence_classifier" or "generative_*"
    max_length: int
    batch_size: int
    scorer: Scorer | None = None  # set for generative rerankers (mlx-vlm's own scoring)

    @property
    def takes_instruction(self) -> bool:
        return self.kind != "sequence_classifier"

    def score(
        self, query: str, documents: list[str], instruction: str | None = None
    ) -> tuple[list[float], int]:
        """A relevance score in (0, 1) per document, in input order, and the tokens read."""
        if self.scorer is not None:
            return self.scorer(query, documents, instruction)
        return self._score_pairs(query, documents)

    def _score_pairs(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """A cross-encoder: one logit per ``(query, document)`` pair, through a sigmoid.

        Pairs are batched by length (shortest first), so a batch carries little padding.
        """
        import mlx.core as mx  # noqa: PLC0415 -- heavy; imported (and timed) by _imports

        encoded = self.tokenizer(
            [query] * len(documents), documents, truncation=True, max_length=self.max_length
        )
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(documents)), key=lambda i: lengths[i])
        scores = [0.0] * len(documents)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            padded = self.tokenizer.pad(
                {key: [encoded[key][i] for i in rows] for key in keys},
                padding=True,
                return_tensors="np",
            )
            output = self.model(**{key: mx.array(padded[key]) for key in keys})
            logits = getattr(output, "logits", output)
            if logits.ndim == 2 and logits.shape[-1] == 1:
                logits = logits[:, 0]
            if logits.ndim != 1 or logits.shape[0] != len(rows):
                raise RuntimeError(
                    f"the reranker returned logits of shape {tuple(logits.shape)} for "
                    f"{len(rows)} pairs; a cross-encoder has exactly one label"
                )
            batch = np.array(mx.sigmoid(logits.astype(mx.float32)), dtype=np.float64)
            for row, value in zip(rows, batch.tolist(), strict=True):
                scores[row] = value
        return scores, sum(lengths)


@dataclass(frozen=True)
class RerankRequest:
    """A validated ``/v1/rerank`` body."""

    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    instruction: str | None


def _imports() -> None:
    """Only the loader: lighter than ``mlx_vlm.server``.

    ``mlx_vlm.server`` imports FastAPI, uvicorn and its whole multi-model app before it loads
    anything; this worker imports only the loader. With the tiny test model, on a 2-core Linux
    box (torch hidden from both): 108 MiB RSS here against 130 MiB, 4-7 ms per request against
    7-8 ms, and ready in about the same 2 s (most of it interpreter and transformers start-up,
    common to both; the imports this worker times are 0.7 s).
    """
    import mlx.core  # noqa: F401, PLC0415 -- timed apart from the load by serve_model
    import mlx_vlm.reranker_loader  # noqa: F401, PLC0415


def _load(path: Path, args: argparse.Namespace) -> Reranker:
    """Load the reranker, find its window, and score one pair to warm up.

    Models are loaded with mlx-vlm's ``load_reranker``, exactly what ``mlx_vlm.server`` runs
    for its ``/v1/rerank``: BERT, ModernBERT and XLM-RoBERTa ``*ForSequenceClassification``
    checkpoints with one label (``BAAI/bge-reranker-base``, ``bge-reranker-v2-m3``,
    ``cross-encoder/ms-marco-MiniLM-L-6-v2``, ...) and Qwen3 / Qwen3-VL generative rerankers
    (``Qwen/Qwen3-Reranker-*``; text documents only here). Models of other architectures
    (DeBERTa, ``mxbai-rerank`` v1/v2) are refused by that loader and the load fails. Sequence
    classifiers are scored as mlx-vlm scores them (the pair ``query, document`` through the
    tokenizer, truncated to the model's window, ``sigmoid`` of the one logit, as
    sentence-transformers' ``CrossEncoder`` does); generative rerankers are scored by mlx-vlm's
    own ``score_documents`` (yes/no logits after its chat template), imported only when such a
    model is loaded.
    """
    from mlx_vlm.reranker import RerankerKind, reranker_kind  # noqa: PLC0415 -- see _imports
    from mlx_vlm.reranker_loader import load_reranker  # noqa: PLC0415
    from mlx_vlm.utils import get_model_path  # noqa: PLC0415

    model_dir = Path(get_model_path(str(path)))
    model, processor = load_reranker(model_dir)
    tokenizer = getattr(processor, "tokenizer", processor)
    kind = reranker_kind(model.config)
    reranker = Reranker(
        model=model,
        tokenizer=tokenizer,
        kind=kind.value,
        max_length=args.max_length or _model_max_length(model_dir, tokenizer),
        batch_size=args.batch_size,
    )
    if kind is not RerankerKind.SEQUENCE_CLASSIFIER:
        reranker.scorer = _generative_scorer(model, processor, model_dir)
    # The first forward pass pays for lazy initialisation; pay it before listening. It also
    # proves the checkpoint scores pairs (one label) before the worker reports ready.
    reranker.score("warm up", ["warm up"])
    return reranker


def _generative_scorer(model: Any, processor: Any, model_dir: Path) -> Scorer:
    """mlx-vlm's own scoring of generative rerankers (Qwen3-Reranker: yes/no logits).

    It lives in ``mlx_vlm.server``, whose import costs about half a second more; only these
    models pay it.
    """
    # Untyped in mlx-vlm: used as a plain Any.
    reranking: Any = importlib.import_module("mlx_vlm.server.reranking")
    reranking.ensure_chat_template(processor, str(model_dir))
    config = model.config

    def score(query: str, documents: list[str], instruction: str | None) -> tuple[list[float], int]:
        scores, tokens = reranking.score_documents(
            model,
            processor,
            config,
            reranking.RerankItem(text=query),
            [reranking.RerankItem(text=text) for text in documents],
            instruction,
        )
        return [float(s) for s in scores], int(tokens)

    return score


def _model_max_length(model_dir: Path, tokenizer: Any) -> int:
    """The longest pair the model reads: its positions, capped by its tokenizer's limit.

    RoBERTa-style models (XLM-RoBERTa: the bge rerankers) number positions from
    ``pad_token_id + 1``, so two of their ``max_position_embeddings`` are unusable.
    """
    limits = [DEFAULT_MAX_LENGTH]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)  # tokenizers without a limit report ~1e30
    try:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        config = {}
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        model_type = str(config.get("model_type", "")).lower().replace("-", "_")
        if model_type in ("xlm_roberta", "roberta"):
            pad = config.get("pad_token_id")
            positions -= (pad if isinstance(pad, int) else 1) + 1
        limits.append(positions)
    return max(min(limits), 8)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's flags (``args`` in models.yaml).

    ``--max-length`` (tokens per pair for a sequence classifier; generative rerankers keep
    mlx-vlm's 8192), ``--batch-size`` (pairs per forward pass, batched by length; mlx-vlm's own
    for generative rerankers), ``--max-documents`` (per request).
    """
    parser.add_argument(
        "--max-length",
        type=int,
        default=0,
        help="tokens per (query, document) pair before truncation (default: the model's)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass")
    parser.add_argument("--max-documents", type=int, default=10_000, help="documents per request")


def parse_request(body: Any, args: argparse.Namespace, default_model: str) -> RerankRequest:
    """Validate a rerank body; every client mistake is an :class:`ApiError` 400.

    Checked by :func:`mlx_serve.router.validation.check_rerank`, the router's check: ``query``
    (non-empty string), ``documents`` (a non-empty list of strings or ``{"text": ...}`` objects;
    other keys of such an object are ignored, image or video keys refused), ``top_n`` (a
    positive integer; more than there are documents returns them all), ``return_documents``
    (default true), ``instruction`` (generative rerankers only; a sequence classifier refuses
    it, as mlx-vlm does). ``rank_fields`` may only name ``text``; ``max_chunks_per_doc`` and
    ``max_tokens_per_doc`` are accepted and not used: a document longer than the model's window
    is truncated (query and document together, longest first), never split.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    check_rerank(body)
    documents = rerank_documents(body["documents"])
    if len(documents) > args.max_documents:
        raise ApiError(
            400,
            f"'documents' has {len(documents)} items; at most {args.max_documents} per request",
            param="documents",
            code="too_many_documents",
        )
    model = body.get("model")
    return_documents = body.get("return_documents")
    return RerankRequest(
        model=model if isinstance(model, str) and model else default_model,
        query=body["query"],
        documents=documents,
        top_n=body.get("top_n"),
        return_documents=True if return_documents is None else bool(return_documents),
        instruction=body.get("instruction"),
    )


def compute(reranker: Reranker, req: RerankRequest) -> bytes:
    """Score, rank and render the response body (all on the inference thread).

    The answer the clients parse, with nothing to translate: mlx-vlm answers without an ``id``,
    echoes documents as sent (``"text"`` or ``{"text": ...}``) rather than as Cohere's
    ``{"text": ...}``, and returns no documents unless asked; its errors are FastAPI's
    ``{"detail": ...}``. This worker answers in the final shape, so the router relays it like
    any JSON answer (only ``model`` replaced by the name the client used)::

        {"id": "rerank-...", "object": "list", "model": ..., "results": [
            {"index": 2, "relevance_score": 0.93, "document": {"text": ...}}, ...],
         "usage": {"prompt_tokens": N, "total_tokens": N},
         "meta": {"billed_units": {"search_units": 1, "total_tokens": N}}}

    ``results`` are sorted by ``relevance_score`` (in ``(0, 1)``), highest first, ties in input
    order, and cut to ``top_n``; ``index`` is the document's position in the request. ``usage``
    counts every token the model read, special tokens included; ``meta`` is Cohere's form of it.
    """
    if req.instruction is not None and not reranker.takes_instruction:
        raise ApiError(
            400,
            "this reranker is a sequence classifier: it takes no 'instruction' (only "
            "generative rerankers such as Qwen3-Reranker do)",
            param="instruction",
        )
    scores, tokens = reranker.score(req.query, req.documents, req.instruction)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if req.top_n is not None:
        order = order[: req.top_n]
    results: list[dict[str, Any]] = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if req.return_documents:
            result["document"] = {"text": req.documents[index]}
        results.append(result)
    return json.dumps(
        {
            "id": f"rerank-{uuid.uuid4().hex}",
            "object": "list",
            "model": req.model,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            # Cohere's usage block (litellm reads it): one search unit per 100 documents.
            "meta": {
                "billed_units": {
                    "search_units": -(-len(req.documents) // 100),
                    "total_tokens": tokens,
                }
            },
        }
    ).encode()


async def rerank(request: web.Request) -> web.Response:
    """``POST /v1/rerank``: one request at a time, on the one inference thread.

    As in every mlx-serve worker; mlx-vlm scores each request on a thread of its own, sharing
    one HF tokenizer between them.
    """
    server: ModelServer[Reranker] = request.app[MODEL_SERVER]
    body = await read_json(request)
    req = parse_request(body, server.args, default_model=str(server.args.model))
    payload = await server.run(compute, server.model, req)
    return web.Response(body=payload, content_type="application/json")


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/rerank", rerank)


def main(argv: list[str] | None = None) -> None:
    serve_model(
        "mlx-serve rerank worker: Cohere/Jina-style /v1/rerank for an mlx-vlm reranker",
        imports=_imports,
        load=_load,
        add_routes=_add_routes,
        add_arguments=_add_arguments,
        argv=argv,
    )


if __name__ == "__main__":
    main()
