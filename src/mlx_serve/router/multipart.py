"""Reading the small text fields of a multipart/form-data body without re-encoding it.

Transcription requests arrive as multipart forms (the audio file plus ``model``,
``language``...). The router only needs ``model`` (to route) and ``keep_alive``; the body is
forwarded to the worker byte for byte, so nothing here rebuilds it. The split is done with
``bytes`` operations (C speed) because the body can be tens of megabytes of audio.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb"\bfilename\*?=", re.IGNORECASE)


class MultipartError(ValueError):
    """The body is not a well-formed multipart/form-data message."""


def form_fields(content_type: str, body: bytes, names: frozenset[str]) -> dict[str, str]:
    """The text values of the form fields in ``names`` (file parts are skipped)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise MultipartError("expected a multipart/form-data body")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise MultipartError("the multipart Content-Type has no boundary")
    try:
        delimiter = b"--" + (match.group(1) or match.group(2)).encode()
    except UnicodeEncodeError:  # header bytes that were not UTF-8 (surrogate-escaped)
        raise MultipartError("the multipart boundary is not valid text") from None
    if delimiter not in body:
        raise MultipartError("the multipart body does not contain its boundary")
    found: dict[str, str] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = next(
            (
                line
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-disposition")
            ),
            b"",
        )
        name = _NAME.search(disposition)
        if name is None or _FILENAME.search(disposition):
            continue
        key = name.group(1).decode("utf-8", errors="replace")
        if key in names:
            found[key] = value.removesuffix(b"\r\n").decode("utf-8", errors="replace").strip()
    return found
