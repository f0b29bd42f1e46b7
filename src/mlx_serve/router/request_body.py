"""Reading a request's body: a size limit, and JSON that every worker can parse.

Shared by the OpenAI routes, the other dialects and the management API: a body is refused
here, with a 4xx saying why, before anything else looks at it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from mlx_serve.config.sizes import format_bytes
from mlx_serve.errors import ApiError
from mlx_serve.router.keys import SUPERVISOR


async def read_body(request: web.Request, limit: int, setting: str) -> bytes:
    """The whole body, or a 413 naming ``limit`` (and the setting that raises it) as soon as
    the declared length or the bytes read so far exceed it."""

    def too_large() -> ApiError:
        return ApiError(
            413,
            f"the request body is larger than {format_bytes(limit)} ({limit} bytes); "
            f"server.{setting} raises the limit",
            code="request_too_large",
        )

    if request.content_length is not None and request.content_length > limit:
        raise too_large()
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise too_large()
    return bytes(data)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 (413) saying what is wrong with it.

    Nothing a worker could not parse gets through: a document nested so deep that a JSON
    parser recurses out of stack, and text with lone UTF-16 surrogates (not encodable as
    UTF-8, which every worker's tokenizer needs) are refused here.
    """
    limit = request.app[SUPERVISOR].config.server.max_json_body
    raw = await read_body(request, limit, "max_json_body")
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    except RecursionError as exc:
        raise ApiError(
            400, "the request body is nested too deeply to be JSON a model takes",
            code="invalid_json",
        ) from exc  # fmt: skip
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    if _deeper_than(body, MAX_JSON_DEPTH):
        # Parsers recurse: what this process just parsed, a worker with less stack left may
        # not. No real request nests more than a handful of levels.
        raise ApiError(
            400,
            f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
            code="invalid_json",
        )
    if _may_hold_surrogates(raw):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(
                400,
                "the request body holds a lone UTF-16 surrogate (invalid Unicode text)",
                code="invalid_json",
            ) from exc
        except RecursionError as exc:
            raise ApiError(
                400, "the request body is nested too deeply", code="invalid_json"
            ) from exc
    return body


#: Deepest JSON nesting forwarded to a worker (chat messages with tool schemas need ~10).
MAX_JSON_DEPTH = 64


def _deeper_than(value: object, limit: int) -> bool:
    """Does ``value`` nest lists/objects more than ``limit`` levels? (Iterative: no recursion.)"""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


#: A ``\\uD800``-``\\uDFFF`` escape in JSON text, either case.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _may_hold_surrogates(raw: bytes) -> bool:
    """A cheap pre-check (one pass, no copy): a surrogate escape, or the lead byte of
    UTF-8-encoded surrogates (also that of ordinary Hangul, which the full check lets by)."""
    return b"\xed" in raw or _SURROGATE_ESCAPE.search(raw) is not None
