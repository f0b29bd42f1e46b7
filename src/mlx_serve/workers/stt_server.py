"""Speech-to-text worker: ``python -m mlx_serve.workers.stt_server --model DIR --host H --port P``.

Serves OpenAI's ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations`` (to
English) for one mlx-whisper model, on the :mod:`~mlx_serve.workers.model_server` skeleton.
The model is loaded once (:func:`_load`); the request form: :func:`parse_form`.

Audio is decoded off the inference thread, so one request's ffmpeg does not hold up another's
transcription; transcriptions run one at a time on the inference thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from mlx_serve.errors import ApiError
from mlx_serve.workers import audio_codec
from mlx_serve.workers.model_server import MODEL_SERVER, ModelServer, serve_model

log = logging.getLogger("mlx_serve.stt_server")

#: OpenAI's upload limit, in MiB.
DEFAULT_MAX_FILE_MB = 25.0
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
_MAX_FIELD_BYTES = 64 * 1024  # a text field (prompt, language...) longer than this is abuse
_FORM_OVERHEAD_BYTES = 1024 * 1024  # room for the text fields when checking Content-Length
_READ_CHUNK = 256 * 1024


@dataclass
class SttModel:
    """The loaded Whisper model and the key ``mlx_whisper.transcribe`` finds it under."""

    model: Any
    key: str


@dataclass(frozen=True)
class TranscriptionRequest:
    """A validated transcription/translation form."""

    audio: bytes
    task: str  # "transcribe" or "translate"
    language: str | None
    prompt: str | None
    temperature: float | None  # None: Whisper's fallback schedule
    response_format: str
    word_timestamps: bool


# ---------------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-file-mb",
        type=float,
        default=DEFAULT_MAX_FILE_MB,
        help="largest accepted upload in MiB (413 beyond it)",
    )


def _imports() -> None:
    """mlx-whisper's imports (mlx, numba, scipy, tiktoken), timed apart as ``import_s``."""
    import mlx_whisper  # noqa: F401, PLC0415 -- imported for its import time only


def _load(path: Path, args: argparse.Namespace) -> SttModel:
    """Load the model into mlx-whisper's own cache and check that it runs.

    ``mlx_whisper.transcribe`` takes a model *path*, and keeps the last model it loaded in the
    class attribute ``mlx_whisper.transcribe.ModelHolder``, keyed by that path string alone.
    The worker loads the model through that same holder at start, with the same key it passes
    on every request, so the model is loaded once and every request reuses it.

    The check is one decoder step against blank audio features, not a transcription: Whisper's
    encoder always encodes a 30 s window, so a warm-up transcription costs as much as a
    request (14 s for whisper-tiny.en on the 2-core CPU box), and a swap to the model would
    pay it twice. The weights are loaded strictly (every tensor present, every shape right),
    so what the encoder's first pass could still reveal, the first request's shows.
    """
    import mlx.core as mx  # noqa: PLC0415 -- imported in _imports
    from mlx_whisper.tokenizer import get_encoding  # noqa: PLC0415
    from mlx_whisper.transcribe import ModelHolder  # noqa: PLC0415

    # A local directory by its path; anything else is a hub repo id (resolved from the cache).
    key = str(path) if path.exists() else str(args.model)
    # transcribe() runs in fp16 by default and asks the holder for an fp16 model.
    model = ModelHolder.get_model(key, mx.float16)
    # Every array of every module, the private ones too (the encoder's positional embedding,
    # the decoder's mask), evaluated here: MLX arrays are bound to the thread that made them,
    # and one left lazy would be evaluated on the inference thread and fail there.
    mx.eval([v for m in model.modules() for v in m.values() if isinstance(v, mx.array)])
    dims = model.dims
    blank = mx.zeros((1, dims.n_audio_ctx, dims.n_audio_state), dtype=mx.float16)
    mx.eval(model.logits(mx.array([[0]]), blank))
    # The tokenizer's vocabulary (~0.2 s, lru-cached by mlx-whisper), read here instead of by
    # the first request: with the arguments its get_tokenizer passes, keywords included, or
    # the cache would not be hit.
    name = "multilingual" if model.is_multilingual else "gpt2"
    get_encoding(name=name, num_languages=model.num_languages)
    if ModelHolder.get_model(key, mx.float16) is not model:  # pragma: no cover
        raise SystemExit("mlx_whisper reloaded the model: its ModelHolder cache changed")
    return SttModel(model=model, key=key)


def _transcribe(stt: SttModel, audio: np.ndarray, req: TranscriptionRequest) -> dict[str, Any]:
    """Run on the inference thread."""
    import mlx_whisper  # noqa: PLC0415 -- imported in _imports

    options: dict[str, Any] = {"task": req.task, "language": req.language}
    if req.prompt:
        options["initial_prompt"] = req.prompt
    if req.temperature is not None:
        options["temperature"] = req.temperature
    if req.word_timestamps:
        options["word_timestamps"] = True
    result: dict[str, Any] = mlx_whisper.transcribe(
        audio, path_or_hf_repo=stt.key, verbose=None, **options
    )
    return result


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", translations)


async def transcriptions(request: web.Request) -> web.Response:
    """``POST /v1/audio/transcriptions``."""
    return await _handle(request, "transcribe")


async def translations(request: web.Request) -> web.Response:
    """``POST /v1/audio/translations``: speech in any language, text in English."""
    return await _handle(request, "translate")


async def _handle(request: web.Request, task: str) -> web.Response:
    server: ModelServer[SttModel] = request.app[MODEL_SERVER]
    max_bytes = int(server.args.max_file_mb * 1024 * 1024)
    fields, audio_bytes = await read_form(request, max_file_bytes=max_bytes)
    req = parse_form(fields, audio_bytes, task=task)
    try:
        audio = await asyncio.to_thread(audio_codec.decode_audio, req.audio)
    except audio_codec.AudioDecodeError as exc:
        raise ApiError(400, str(exc), param="file", code="invalid_audio") from exc
    try:
        result = await server.run(_transcribe, server.model, audio, req)
    except Exception as exc:
        log.exception("transcription failed")
        raise ApiError(
            500, f"transcription failed: {type(exc).__name__}: {exc}", code="transcription_failed"
        ) from exc
    duration = audio.size / audio_codec.WHISPER_SAMPLE_RATE
    return render(result, req, duration)


async def read_form(
    request: web.Request, *, max_file_bytes: int
) -> tuple[dict[str, list[str]], bytes | None]:
    """The text fields and the ``file`` part of a multipart form, within the size limits."""
    if request.content_type != "multipart/form-data":
        raise ApiError(
            400,
            "expected a multipart/form-data body with the audio in a 'file' field",
            code="invalid_content_type",
        )
    length = request.content_length
    if length is not None and length > max_file_bytes + _FORM_OVERHEAD_BYTES:
        raise _too_large(max_file_bytes)
    fields: dict[str, list[str]] = {}
    audio: bytes | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: nothing OpenAI sends
            if part.name == "file":
                audio = await _read_part(part, max_file_bytes, _too_large(max_file_bytes))
            elif part.name:
                too_long = ApiError(
                    400, f"form field {part.name!r} is too long", param=part.name, code="too_long"
                )
                value = await _read_part(part, _MAX_FIELD_BYTES, too_long)
                fields.setdefault(part.name, []).append(value.decode("utf-8", "replace").strip())
    except ApiError:
        raise
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        # aiohttp reports malformed multipart bodies (and bad part headers) with these.
        raise ApiError(400, f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    return fields, audio


async def _read_part(part: BodyPartReader, limit: int, too_large: ApiError) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_file_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"the audio file is larger than the {max_file_bytes / (1024 * 1024):g} MB limit",
        param="file",
        code="request_too_large",
    )


def parse_form(
    fields: dict[str, list[str]], audio: bytes | None, *, task: str
) -> TranscriptionRequest:
    """Validate the form; every mistake is a 400 naming the parameter.

    A multipart form as the OpenAI SDK sends it (its size limits are :func:`read_form`'s):

    =========================== =========================================================
    ``file``                    required; at most ``--max-file-mb`` (25, OpenAI's limit;
                                413 beyond); any format :func:`~.audio_codec.decode_audio`
                                reads (400 with the reason when it cannot)
    ``model``                   ignored: the worker serves its one model
    ``language``                ISO-639-1 code or English name; detected when absent
    ``prompt``                  Whisper's ``initial_prompt``
    ``temperature``             0-1. Absent or 0: Whisper's fallback schedule (0, 0.2 ...
                                1.0, retried when the output looks wrong, like OpenAI); > 0:
                                that one
    ``response_format``         ``json`` (default, ``{"text"}``), ``text``, ``srt``, ``vtt``,
                                ``verbose_json``
    ``timestamp_granularities`` ``segment`` / ``word``; ``word`` adds top-level ``words`` to
                                ``verbose_json`` (it costs an alignment pass)
    =========================== =========================================================
    """
    if audio is None:
        raise ApiError(
            400, "missing required parameter 'file' (the audio)", param="file", code="missing"
        )

    def one(name: str) -> str | None:
        values = fields.get(name)
        return values[-1] if values and values[-1] != "" else None

    response_format = one("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}; "
            f"got {response_format!r}",
            param="response_format",
            code="invalid_value",
        )
    temperature: float | None = None
    if (raw := one("temperature")) is not None:
        try:
            temperature = float(raw)
        except ValueError:
            temperature = math.nan
        if not 0.0 <= temperature <= 1.0:
            raise ApiError(
                400,
                f"'temperature' must be a number between 0 and 1, got {raw!r}",
                param="temperature",
                code="invalid_value",
            )
        if temperature == 0.0:
            temperature = None  # OpenAI: 0 means "raise it automatically when needed"
    granularities = fields.get("timestamp_granularities[]", []) + fields.get(
        "timestamp_granularities", []
    )
    for value in granularities:
        if value not in GRANULARITIES:
            raise ApiError(
                400,
                f"'timestamp_granularities' values must be in {', '.join(GRANULARITIES)}; "
                f"got {value!r}",
                param="timestamp_granularities",
                code="invalid_value",
            )
    return TranscriptionRequest(
        audio=audio,
        task=task,
        language=_language_code(one("language")),
        prompt=one("prompt"),
        temperature=temperature,
        response_format=response_format,
        word_timestamps="word" in granularities and response_format == "verbose_json",
    )


def _language_code(value: str | None) -> str | None:
    if value is None:
        return None
    from mlx_whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE  # noqa: PLC0415 -- heavy

    lowered = value.lower()
    if lowered in LANGUAGES:
        return lowered
    if lowered in TO_LANGUAGE_CODE:
        code: str = TO_LANGUAGE_CODE[lowered]
        return code
    raise ApiError(
        400,
        f"unsupported language {value!r}; use an ISO-639-1 code such as 'en' or 'de'",
        param="language",
        code="invalid_language",
    )


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def render(result: dict[str, Any], req: TranscriptionRequest, duration: float) -> web.Response:
    """The OpenAI response for ``req.response_format`` from a ``transcribe()`` result."""
    text = str(result.get("text", "")).strip()
    segments = [s for s in result.get("segments", []) if isinstance(s, dict)]
    fmt = req.response_format
    if fmt == "json":
        return web.json_response({"text": text})
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if fmt == "srt":
        return web.Response(text=to_srt(segments), content_type="text/plain")
    if fmt == "vtt":
        return web.Response(text=to_vtt(segments), content_type="text/vtt")
    return web.json_response(verbose_json(result, req, duration, text, segments))


def verbose_json(
    result: dict[str, Any],
    req: TranscriptionRequest,
    duration: float,
    text: str,
    segments: list[dict[str, Any]],
) -> dict[str, Any]:
    from mlx_whisper.tokenizer import LANGUAGES  # noqa: PLC0415 -- heavy

    language = str(result.get("language") or "")
    body: dict[str, Any] = {
        "task": "translate" if req.task == "translate" else "transcribe",
        "language": LANGUAGES.get(language, language),  # OpenAI names it: "english"
        "duration": round(duration, 3),
        "text": text,
        "segments": [
            {
                "id": int(s.get("id", i)),
                "seek": int(s.get("seek", 0)),
                "start": _time(s.get("start")),
                "end": _time(s.get("end")),
                "text": str(s.get("text", "")),
                "tokens": [int(t) for t in s.get("tokens", [])],
                "temperature": _number(s.get("temperature")),
                "avg_logprob": _number(s.get("avg_logprob")),
                "compression_ratio": _number(s.get("compression_ratio")),
                "no_speech_prob": _number(s.get("no_speech_prob")),
            }
            for i, s in enumerate(segments)
        ],
    }
    if req.word_timestamps:
        body["words"] = [
            {
                "word": str(w.get("word", "")),
                "start": _time(w.get("start")),
                "end": _time(w.get("end")),
            }
            for s in segments
            for w in s.get("words") or []
        ]
    return body


def to_srt(segments: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{n}\n{_cue_times(s, ',')}\n{_cue_text(s)}\n"
        for n, s in enumerate(_spoken(segments), start=1)
    )


def to_vtt(segments: list[dict[str, Any]]) -> str:
    cues = [f"{_cue_times(s, '.')}\n{_cue_text(s)}\n" for s in _spoken(segments)]
    return "WEBVTT\n\n" + "\n".join(cues)


def _cue_times(segment: dict[str, Any], separator: str) -> str:
    start, end = segment.get("start"), segment.get("end")
    return f"{_clock(start, separator)} --> {_clock(end, separator)}"


def _cue_text(segment: dict[str, Any]) -> str:
    return str(segment.get("text", "")).strip()


def _spoken(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments with text (Whisper blanks out the instantaneous and empty ones)."""
    return [s for s in segments if _cue_text(s)]


def _clock(seconds: Any, separator: str) -> str:
    millis = round(max(0.0, _number(seconds) or 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _number(value: Any) -> float | None:
    """A JSON-safe float: Whisper reports NaN/inf log-probabilities, which JSON cannot carry."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _time(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else round(number, 3)


def main(argv: list[str] | None = None) -> None:
    serve_model(
        "mlx-serve speech-to-text worker (OpenAI /v1/audio/transcriptions and /translations)",
        imports=_imports,
        load=_load,
        add_routes=_add_routes,
        add_arguments=_add_arguments,
        argv=argv,
    )


if __name__ == "__main__":
    main()
