"""The embedding worker: ``python -m mlx_serve.workers.embedding_server --model DIR ...``.

An OpenAI ``POST /v1/embeddings`` in front of an ``mlx_embeddings`` model, built on
:func:`mlx_serve.workers.model_server.serve_model` (loaded and warmed up before it listens,
so ``/health`` 200 means ready).

The request's fields, as the openai SDK sends them, are documented where they are handled:
``input`` in :func:`_parse_input` and :meth:`Embedder.tokenize`, ``encoding_format`` and
``dimensions`` in :func:`compute`; the vectors in :meth:`Embedder.embed`.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from mlx_serve.errors import ApiError
from mlx_serve.workers.model_server import MODEL_SERVER, ModelServer, read_json, serve_model

#: Used when a model states no sequence limit of its own.
DEFAULT_MAX_LENGTH = 512


@dataclass
class Embedder:
    """A loaded embedding model with everything a request needs."""

    model: Any
    tokenizer: Any  # the Hugging Face tokenizer
    max_length: int
    dimensions: int
    vocab_size: int
    prefix: list[int]  # special tokens the tokenizer puts before a text's tokens
    suffix: list[int]  # ... and after them
    batch_size: int
    pass_attention_mask: bool

    def tokenize(self, items: Sequence[str | list[int]]) -> list[list[int]]:
        """Token ids per item, special tokens included, truncated to ``max_length``.

        Inputs longer than the model's sequence limit are truncated, like sentence-transformers
        does (the limit is ``max_seq_length`` from ``sentence_bert_config.json`` when present).
        ``usage`` counts the tokens the model actually processed, special tokens included.
        """
        texts = [item for item in items if isinstance(item, str)]
        encoded: list[list[int]] = []
        if texts:
            encoded = self.tokenizer(
                texts, add_special_tokens=True, truncation=True, max_length=self.max_length
            )["input_ids"]
        room = max(self.max_length - len(self.prefix) - len(self.suffix), 1)
        out: list[list[int]] = []
        text_index = 0
        for item in items:
            if isinstance(item, str):
                out.append(list(encoded[text_index]))
                text_index += 1
            else:
                out.append([*self.prefix, *item[:room], *self.suffix])
        return out

    def embed(self, ids: list[list[int]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Unit-length float32 embeddings, one row per item, in input order.

        Vectors are pooled by the model (mean pooling for BERT models such as MiniLM, exactly
        as sentence-transformers does) and always returned with unit L2 norm, like OpenAI's, so
        a dot product is a cosine similarity. Items are batched by length (shortest first) so a
        batch carries little padding.
        """
        import mlx.core as mx  # noqa: PLC0415 -- heavy; imported (and timed) by _imports

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: np.ndarray[Any, np.dtype[np.float32]] | None = None
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            padded = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="np"
            )
            kwargs = {"input_ids": mx.array(padded["input_ids"])}
            if self.pass_attention_mask:
                kwargs["attention_mask"] = mx.array(padded["attention_mask"])
            embeds = self.model(**kwargs).text_embeds
            if embeds is None:
                raise RuntimeError("this model does not produce text embeddings")
            batch = np.array(embeds.astype(mx.float32))
            if out is None:
                out = np.empty((len(ids), batch.shape[-1]), dtype=np.float32)
            out[rows] = batch
        if out is None:
            raise ValueError("nothing to embed")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: np.ndarray[Any, np.dtype[np.float32]] = out / np.maximum(norms, 1e-12)
        return unit


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated ``/v1/embeddings`` body."""

    items: list[str | list[int]]
    model: str
    base64: bool
    dimensions: int | None


def _imports() -> None:
    import mlx.core  # noqa: F401, PLC0415 -- timed apart from the load by serve_model
    import mlx_embeddings  # noqa: F401, PLC0415


def _load(path: Path, args: argparse.Namespace) -> Embedder:
    """Load the model and tokenizer, find its limits, and embed one text to warm up."""
    from mlx_embeddings.utils import get_model_path, load  # noqa: PLC0415 -- see _imports

    model_dir = Path(get_model_path(str(path)))
    model, wrapper = load(str(model_dir))
    tokenizer = getattr(wrapper, "_tokenizer", wrapper)  # mlx_embeddings' TokenizerWrapper
    max_length = args.max_length or _model_max_length(model_dir, tokenizer)
    prefix, suffix = _special_affixes(tokenizer)
    embedder = Embedder(
        model=model,
        tokenizer=tokenizer,
        max_length=max_length,
        dimensions=0,  # set from the warm-up below
        vocab_size=len(tokenizer),
        prefix=prefix,
        suffix=suffix,
        batch_size=args.batch_size,
        pass_attention_mask="attention_mask" in inspect.signature(model.__call__).parameters,
    )
    # The first forward pass pays for lazy initialisation; pay it before listening.
    embedder.dimensions = int(embedder.embed(embedder.tokenize(["warm up"])).shape[1])
    return embedder


def _model_max_length(model_dir: Path, tokenizer: Any) -> int:
    """The sequence limit sentence-transformers would use, else the model's own."""
    try:
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text("utf-8"))
        if isinstance(st_config.get("max_seq_length"), int):
            return int(st_config["max_seq_length"])
    except (OSError, ValueError):
        pass
    limits = [DEFAULT_MAX_LENGTH]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limits = [tokenizer_limit]  # tokenizers without a limit report ~1e30
    try:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
        positions = config.get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
    except (OSError, ValueError):
        pass
    return min(limits)


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer wraps a single text in, found by example.

    transformers 5 dropped ``build_inputs_with_special_tokens``; comparing the encodings
    of one text with and without special tokens works for every single-sequence template.
    """
    bare: list[int] = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full: list[int] = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-length",
        type=int,
        default=0,
        help="tokens per input before truncation (default: the model's own limit)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass")
    parser.add_argument("--max-items", type=int, default=2048, help="inputs per request")
    parser.add_argument(
        "--max-item-chars",
        type=int,
        default=200_000,
        help="characters (or token ids) per input; longer inputs are a 400",
    )
    parser.add_argument(
        "--max-total-chars",
        type=int,
        default=8_000_000,
        help="characters (or token ids) per request; more is a 413",
    )


def parse_request(body: Any, args: argparse.Namespace, default_model: str) -> EmbeddingRequest:
    """Validate an embeddings body; every client mistake is an :class:`ApiError` 400/413."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    items = _parse_input(body.get("input"), args)
    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise ApiError(
            400,
            f"encoding_format must be 'float' or 'base64', got {fmt!r}",
            param="encoding_format",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise ApiError(400, "dimensions must be a positive integer", param="dimensions")
    model = body.get("model")
    return EmbeddingRequest(
        items=items,
        model=model if isinstance(model, str) and model else default_model,
        base64=fmt == "base64",
        dimensions=dimensions,
    )


def _parse_input(value: Any, args: argparse.Namespace) -> list[str | list[int]]:
    """``input``: a string, a list of strings, a list of token ids, or a list of token-id lists.

    Token ids are ids of *this model's* tokenizer (as in OpenAI's API, where they are tiktoken
    ids of the embedding model); they are used exactly as sent, wrapped in the special tokens
    the tokenizer adds to text (``[CLS] ... [SEP]`` for BERT). Ids outside the vocabulary are a
    400 (:func:`compute`). Note that LangChain's ``OpenAIEmbeddings`` sends *tiktoken* ids
    unless ``check_embedding_ctx_length=False``: ids that happen to be in range cannot be told
    apart from real ones.
    """
    if value is None:
        raise ApiError(
            400,
            "'input' is required: a string, a list of strings, or token ids",
            param="input",
        )
    items: list[Any]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list):
        if not value:
            raise ApiError(400, "'input' must not be an empty list", param="input")
        # A flat list of ints is one tokenized input; otherwise each element is one input.
        items = [value] if all(_is_token(v) for v in value) else value
    else:
        raise ApiError(
            400,
            f"'input' must be a string or a list, got {type(value).__name__}",
            param="input",
        )
    if len(items) > args.max_items:
        raise ApiError(
            400,
            f"'input' has {len(items)} items; at most {args.max_items} per request",
            param="input",
            code="too_many_inputs",
        )
    total = 0
    for index, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise ApiError(400, f"input[{index}] is an empty string", param="input")
        elif isinstance(item, list) and all(_is_token(t) for t in item):
            if not item:
                raise ApiError(400, f"input[{index}] is an empty token list", param="input")
        else:
            raise ApiError(
                400,
                f"input[{index}] must be a string or a list of token ids "
                f"(all inputs of one kind), got {_describe(item)}",
                param="input",
            )
        if len(item) > args.max_item_chars:
            raise ApiError(
                400,
                f"input[{index}] is {len(item)} long; at most {args.max_item_chars} "
                "characters (or token ids) per input",
                param="input",
                code="input_too_long",
            )
        total += len(item)
    if total > args.max_total_chars:
        raise ApiError(
            413,
            f"the inputs total {total} characters (or token ids); at most "
            f"{args.max_total_chars} per request",
            param="input",
            code="request_too_large",
        )
    kinds = {isinstance(item, str) for item in items}
    if len(kinds) > 1:
        raise ApiError(400, "'input' mixes strings and token lists", param="input")
    return items


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(item: Any) -> str:
    if isinstance(item, list):
        bad = next((v for v in item if not _is_token(v)), None)
        return f"a list containing {type(bad).__name__}"
    return type(item).__name__


def compute(embedder: Embedder, req: EmbeddingRequest) -> bytes:
    """Tokenize, embed and render the response body (all on the inference thread).

    All tokenization and inference run on the server's single inference thread: HF fast
    tokenizers are not safe to share between threads, and the model is not either.

    - ``encoding_format``: ``float`` (default) or ``base64`` (little-endian float32 bytes; the
      openai SDK asks for base64 by default and decodes it itself).
    - ``dimensions``: the first N components, renormalised (what sentence-transformers'
      ``truncate_dim`` does). Any N up to the model's size is accepted; only Matryoshka-trained
      models keep their quality when truncated.
    """
    for index, item in enumerate(req.items):
        if isinstance(item, list):
            bad = next((t for t in item if not 0 <= t < embedder.vocab_size), None)
            if bad is not None:
                raise ApiError(
                    400,
                    f"input[{index}] has token id {bad}, outside this model's vocabulary "
                    f"(0..{embedder.vocab_size - 1}); token ids must come from the "
                    "model's own tokenizer",
                    param="input",
                    code="invalid_token_id",
                )
    if req.dimensions is not None and req.dimensions > embedder.dimensions:
        raise ApiError(
            400,
            f"dimensions={req.dimensions}, but this model's embeddings have {embedder.dimensions}",
            param="dimensions",
        )
    ids = embedder.tokenize(req.items)
    vectors = embedder.embed(ids)
    if req.dimensions is not None and req.dimensions < embedder.dimensions:
        vectors = vectors[:, : req.dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        embedding: str | list[float] = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            if req.base64
            else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(row) for row in ids)
    return json.dumps(
        {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    ).encode()


async def embeddings(request: web.Request) -> web.Response:
    server: ModelServer[Embedder] = request.app[MODEL_SERVER]
    body = await read_json(request)
    req = parse_request(body, server.args, default_model=str(server.args.model))
    payload = await server.run(compute, server.model, req)
    return web.Response(body=payload, content_type="application/json")


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", embeddings)


def main(argv: list[str] | None = None) -> None:
    serve_model(
        "mlx-serve embedding worker: OpenAI /v1/embeddings for an mlx_embeddings model",
        imports=_imports,
        load=_load,
        add_routes=_add_routes,
        add_arguments=_add_arguments,
        argv=argv,
    )


if __name__ == "__main__":
    main()
