"""Checks of request bodies, per endpoint: the client's mistakes become 400s here, before a
model is loaded for a request that could never succeed."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from mlx_serve.errors import ApiError

#: Leading bytes of the image formats the vision processors decode.
_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF (little-endian)
    b"MM\x00*",  # TIFF (big-endian)
)


def _positive_int(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ApiError(400, f"'{key}' must be a positive integer", param=key)


def _number(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise ApiError(400, f"'{key}' must be a finite number", param=key)


def _finite(value: float) -> bool:
    """NaN, infinities and integers too large for a float are not numbers a worker takes."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_stream(body: dict[str, Any]) -> None:
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")


def check_chat(body: dict[str, Any]) -> None:
    check_stream(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise ApiError(400, "each message must be an object with a 'role'", param="messages")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        _positive_int(body, key)
    for key in ("temperature", "top_p"):
        _number(body, key)


def check_completion(body: dict[str, Any]) -> None:
    check_stream(body)
    if not isinstance(body.get("prompt"), str | list):
        raise ApiError(400, "'prompt' must be a string or a list", param="prompt")
    for key in ("max_tokens", "n"):
        _positive_int(body, key)
    for key in ("temperature", "top_p"):
        _number(body, key)


def check_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise ApiError(400, "'input' is required: a string or a list of strings", param="input")
    if not isinstance(value, str | list):
        raise ApiError(400, "'input' must be a string or a list", param="input")
    if (isinstance(value, str) and not value) or (isinstance(value, list) and not value):
        raise ApiError(400, "'input' must not be empty", param="input")
    _positive_int(body, "dimensions")


def check_speech(body: dict[str, Any]) -> None:
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'input' must be a non-empty string: the text to speak", param="input")
    for key in ("voice", "response_format"):
        if key in body and not isinstance(body[key], str):
            raise ApiError(400, f"'{key}' must be a string", param=key)
    _number(body, "speed")


#: Keys of a rerank document that would make it multimodal (mlx-vlm fetches such URLs).
_MEDIA_KEYS = ("image", "image_url", "video", "video_url", "audio", "input_audio")


def check_rerank(body: dict[str, Any]) -> None:
    """A Cohere/Jina rerank body: a query, documents (strings or ``{"text": ...}``), and
    ``top_n`` / ``return_documents`` / ``instruction`` / ``rank_fields`` when present.
    (The rerank worker applies this same check.)"""
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(
            400, "'query' is required: a non-empty string to rank the documents for",
            param="query",
        )  # fmt: skip
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise ApiError(
            400,
            "'documents' must be a non-empty list of strings or {\"text\": ...} objects",
            param="documents",
        )
    rerank_documents(documents)
    _positive_int(body, "top_n")
    for key in ("max_chunks_per_doc", "max_tokens_per_doc"):
        _positive_int(body, key)  # accepted, not used: long documents are truncated
    value = body.get("return_documents")
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, "'return_documents' must be true or false", param="return_documents")
    instruction = body.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise ApiError(400, "'instruction' must be a non-empty string", param="instruction")
    fields = body.get("rank_fields")
    # Compared one by one: a set() of the list would raise on an unhashable item ([[]]).
    if fields is not None and (not isinstance(fields, list) or any(f != "text" for f in fields)):
        raise ApiError(
            400,
            "'rank_fields' may only name \"text\": documents are ranked by their text",
            param="rank_fields",
        )


def rerank_documents(documents: list[Any]) -> list[str]:
    """The text of each rerank document (a string, or an object's ``text``); 400 otherwise."""
    texts: list[str] = []
    for index, document in enumerate(documents):
        if isinstance(document, str):
            texts.append(document)
            continue
        if isinstance(document, dict):
            media = [key for key in _MEDIA_KEYS if key in document]
            if media:
                raise ApiError(
                    400,
                    f"documents[{index}] has {media[0]!r}: only text documents are supported",
                    param="documents",
                    code="unsupported_content",
                )
            if isinstance(document.get("text"), str):
                texts.append(document["text"])
                continue
        raise ApiError(
            400,
            f'documents[{index}] must be a string or an object with a "text" string',
            param="documents",
        )
    return texts


#: Request fields that would make a worker load other weights (mlx_lm's ``adapters`` and
#: ``draft_model``, mlx_vlm's ``adapter_path``) or size images beyond the model's own limits.
#: They are removed before forwarding: a request must never change what a worker holds.
STRIPPED_FIELDS = frozenset(
    {"adapters", "adapter_path", "draft_model", "min_pixels", "max_pixels", "resize_shape"}
)

_IMAGE_PARTS = ("image_url", "image", "input_image")
_MEDIA_PARTS = ("video_url", "video", "input_video", "input_audio", "audio", "audio_url")


def strip_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in STRIPPED_FIELDS}


def image_urls(messages: list[Any]) -> list[str]:
    """Every image reference in OpenAI chat content parts (``{"url": ...}`` or a string).

    Video and audio parts are refused: the vision worker would fetch or read them itself.
    """
    urls: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") in _MEDIA_PARTS:
                raise ApiError(
                    400,
                    f"content parts of type {part.get('type')!r} are not supported; send images",
                    param="messages",
                    code="unsupported_content",
                )
            if part.get("type") not in _IMAGE_PARTS:
                continue
            ref = part.get(part["type"], part.get("image_url"))
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise ApiError(400, "an image_url part needs a 'url' string", param="messages")
            urls.append(url)
    return urls


def check_images(messages: list[Any], *, allow_remote: bool) -> None:
    """Images must be base64 ``data:`` URLs of real images; http(s) only when allowed.

    Anything else (a file path, ``file://``) is refused: it would make the worker read files
    on the server's disk on a client's behalf.
    """
    for url in image_urls(messages):
        if url[:8].lower().startswith(("http://", "https://")):
            if not allow_remote:
                raise ApiError(
                    400,
                    "http(s) image URLs are disabled; send the image as a base64 data: URL "
                    "(or set server.allow_remote_images: true)",
                    param="messages",
                    code="remote_image_disabled",
                )
            continue
        if not url.startswith("data:image/"):  # mlx_vlm only decodes this exact prefix
            raise ApiError(
                400,
                "image_url must be a base64 data:image/... URL (data:image/png;base64,...)",
                param="messages",
                code="invalid_image",
            )
        _check_data_url(url)


def _check_data_url(url: str) -> None:
    header, sep, data = url.partition(",")
    if not sep or ";base64" not in header.lower():
        raise ApiError(
            400, "image data: URLs must be base64-encoded", param="messages", code="invalid_image"
        )
    try:
        head = base64.b64decode(data[:64] + "=" * (-len(data[:64]) % 4), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            400, "the image data: URL is not valid base64", param="messages", code="invalid_image"
        ) from exc
    is_webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if not (is_webp or head.startswith(_IMAGE_MAGIC)):
        mime = header[5:].split(";")[0] or "unknown"
        raise ApiError(
            400,
            f"the data: URL does not hold an image (declared {mime!r}; expected PNG, JPEG, "
            "GIF, WebP, BMP or TIFF bytes)",
            param="messages",
            code="invalid_image",
        )
