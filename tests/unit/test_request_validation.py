"""Router-side request checks (no server): images, embeddings, speech, multipart forms."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mlx_serve.errors import ApiError
from mlx_serve.router.multipart import MultipartError, form_fields
from mlx_serve.router.validation import (
    check_embeddings,
    check_images,
    check_speech,
    strip_fields,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


def msg(*urls: Any) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "what is this?"}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts}]


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def test_real_image_data_urls_pass() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 40
    webp = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 40
    check_images(
        msg(data_url(PNG), data_url(jpeg, "image/jpeg"), data_url(webp)), allow_remote=False
    )


@pytest.mark.parametrize(
    ("url", "code"),
    [
        (data_url(b"hello, not an image"), "invalid_image"),
        (data_url(b"%PDF-1.7 ....", "application/pdf"), "invalid_image"),
        ("data:image/png,rawbytes", "invalid_image"),
        ("file:///etc/passwd", "invalid_image"),
        ("/etc/passwd", "invalid_image"),
        ("https://example.invalid/cat.png", "remote_image_disabled"),
        ("data:IMAGE/PNG;base64," + base64.b64encode(PNG).decode(), "invalid_image"),
        (data_url(PNG, "text/plain").replace("data:text/plain", "data:image/png"), None),
    ],
)
def test_bad_images_are_400(url: str, code: str | None) -> None:
    if code is None:  # control: the same bytes with the right prefix pass
        check_images(msg(url), allow_remote=False)
        return
    with pytest.raises(ApiError) as info:
        check_images(msg(url), allow_remote=False)
    assert info.value.status == 400 and info.value.code == code


@pytest.mark.parametrize("kind", ["input_image", "image"])
def test_other_image_part_shapes_are_checked(kind: str) -> None:
    parts = [{"type": kind, kind: "/etc/passwd"}]
    with pytest.raises(ApiError):
        check_images([{"role": "user", "content": parts}], allow_remote=False)


@pytest.mark.parametrize("kind", ["video_url", "input_audio", "input_video"])
def test_video_and_audio_parts_are_refused(kind: str) -> None:
    parts = [{"type": kind, kind: {"url": "https://example.invalid/x"}}]
    with pytest.raises(ApiError) as info:
        check_images([{"role": "user", "content": parts}], allow_remote=True)
    assert info.value.code == "unsupported_content"


def test_fields_that_would_reload_a_worker_are_stripped() -> None:
    body = {"model": "m", "adapters": "/x", "adapter_path": "/y", "draft_model": "z", "top_p": 1}
    assert strip_fields(body) == {"model": "m", "top_p": 1}


def test_remote_images_when_enabled() -> None:
    check_images(msg("https://example.invalid/cat.png"), allow_remote=True)


@pytest.mark.parametrize(
    "body",
    [{}, {"input": ""}, {"input": []}, {"input": 3}, {"input": "x", "dimensions": 0}],
)
def test_bad_embedding_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError):
        check_embeddings(body)


@pytest.mark.parametrize(
    "body",
    [{}, {"input": " "}, {"input": "hi", "voice": 3}, {"input": "hi", "speed": "fast"}],
)
def test_bad_speech_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError):
        check_speech(body)


def form(boundary: str = "XyZ") -> bytes:
    return (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + b'RIFF\x00name="model"\r\n--not-it\r\n'
        + (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="model"\r\n\r\n'
            "whisper-1\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="keep_alive"\r\n\r\n'
            "5m\r\n"
            f"--{boundary}--\r\n"
        ).encode()
    )


def test_form_fields_reads_text_fields_and_skips_files() -> None:
    fields = form_fields(
        "multipart/form-data; boundary=XyZ", form(), frozenset({"model", "keep_alive", "file"})
    )
    assert fields == {"model": "whisper-1", "keep_alive": "5m"}


def test_form_fields_quoted_boundary() -> None:
    fields = form_fields('multipart/form-data; boundary="XyZ"', form(), frozenset({"model"}))
    assert fields == {"model": "whisper-1"}


@pytest.mark.parametrize(
    "content_type", ["application/json", "multipart/form-data", "multipart/form-data; boundary=Q"]
)
def test_form_fields_rejects_non_forms(content_type: str) -> None:
    with pytest.raises(MultipartError):
        form_fields(content_type, form(), frozenset({"model"}))
