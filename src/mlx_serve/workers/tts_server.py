"""Text-to-speech worker: ``python -m mlx_serve.workers.tts_server --model DIR --host H --port P``.

Serves OpenAI's ``POST /v1/audio/speech`` for one mlx-audio TTS model, on the
:mod:`~mlx_serve.workers.model_server` skeleton. It does not use ``mlx_audio.server``: on a
CPU-only MLX that server calls ``mx.new_stream(mx.gpu)`` and hangs, and it would load models
per request by name, where a worker serves exactly one.

The request body: :func:`parse_speech_request`; the answer, whole or streamed: :func:`speech`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from mlx_serve.errors import ApiError
from mlx_serve.workers import audio_codec
from mlx_serve.workers.model_server import MODEL_SERVER, ModelServer, read_json, serve_model

log = logging.getLogger("mlx_serve.tts_server")

#: OpenAI's limit on ``input``.
DEFAULT_MAX_INPUT_CHARS = 4096
MIN_SPEED = 0.25
MAX_SPEED = 4.0
_WARMUP_TEXT = "Hello."
_WARMUP_MAX_TOKENS = 4
_PCM_HEADERS = {"X-Sample-Rate": str(audio_codec.PCM_SAMPLE_RATE)}


@dataclass
class TtsModel:
    """A loaded mlx-audio model plus what its ``generate`` accepts."""

    model: Any
    sample_rate: int
    accepts: frozenset[str]  # explicitly named parameters of model.generate
    max_tokens: int | None = None
    # Requests run one at a time: a streamed response takes several inference-thread calls,
    # and another request's segments must not interleave with them.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def generate_kwargs(self, voice: str | None, speed: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if voice is not None and "voice" in self.accepts:
            kwargs["voice"] = voice
        if speed != 1.0 and "speed" in self.accepts:
            kwargs["speed"] = speed
        if self.max_tokens is not None and "max_tokens" in self.accepts:
            kwargs["max_tokens"] = self.max_tokens
        return kwargs

    def applies_speed_itself(self) -> bool:
        return "speed" in self.accepts


@dataclass(frozen=True)
class SpeechRequest:
    """A validated ``/v1/audio/speech`` body."""

    text: str
    voice: str | None
    speed: float
    fmt: str


# ---------------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-input-chars",
        type=int,
        default=DEFAULT_MAX_INPUT_CHARS,
        help="longest accepted input (400 beyond it)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="cap on the tokens generated per segment, for models whose generate() takes "
        "max_tokens (Soprano: 512 by default, ~32 s of audio)",
    )


def _imports() -> None:
    """The heavy imports every mlx-audio TTS model needs, timed apart as ``import_s``.

    Imported for their cost only (hence the noqa: unused, and inside a function). transformers
    is lazy: importing the module is cheap, the tokenizer class is what costs ~1.5 s.
    """
    import mlx.core  # noqa: F401, PLC0415
    import mlx_audio.tts.utils  # noqa: F401, PLC0415
    from transformers import AutoTokenizer  # noqa: F401, PLC0415


def _spare_imports() -> None:
    """What a spare imports ahead: mlx-audio's codec package, which most TTS architectures'
    modules import (soprano, spark, dia, bark, sesame, ... ), and with it scipy.signal: ~1.6 s
    of the tiny test model's 1.8 s load, imported when ``load_model`` first imports the
    architecture's module. A cold start does not import it for models that do not need it."""
    import mlx_audio.codec  # noqa: F401, PLC0415


def _load(path: Path, args: argparse.Namespace) -> TtsModel:
    """Load the model and warm it up (:func:`_warm_up`).

    ``mlx_audio.tts.utils.load_model`` picks the architecture from ``config.json``.
    """
    from mlx_audio.tts.utils import load_model  # noqa: PLC0415 -- imported in _imports

    # mlx-audio resolves a *string* through the hub cache; a Path must exist locally.
    model = load_model(path if path.exists() else str(args.model))
    generate = getattr(model, "generate", None)
    if generate is None:
        raise SystemExit(f"{args.model} is not a text-to-speech model (no generate method)")
    accepts = frozenset(
        name
        for name, param in inspect.signature(generate).parameters.items()
        if param.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    )
    tts = TtsModel(
        model=model,
        sample_rate=int(getattr(model, "sample_rate", 24000)),
        accepts=accepts,
        max_tokens=args.max_tokens,
    )
    _warm_up(tts)
    return tts


def _warm_up(tts: TtsModel) -> None:
    """One short utterance, the warm-up the load ends with.

    Bounded to a few tokens when the model takes ``max_tokens`` (~0.15 s for the tiny test
    model), so a ready worker is one whose model has produced audio, and a model that loads but
    cannot generate fails at start, with its traceback in the worker log, instead of on the
    first request.
    """
    kwargs = tts.generate_kwargs(None, 1.0)
    if "max_tokens" in tts.accepts:
        kwargs["max_tokens"] = _WARMUP_MAX_TOKENS
    for _ in _segments(tts, _WARMUP_TEXT, kwargs):
        pass


# ---------------------------------------------------------------------------------------------
# Generation (on the inference thread)
# ---------------------------------------------------------------------------------------------


def _segments(tts: TtsModel, text: str, kwargs: dict[str, Any]) -> Iterator[tuple[np.ndarray, int]]:
    """The model's audio segments as evaluated float32 arrays with their sample rate.

    MLX arrays are lazy and bound to the thread that evaluates them: converting to numpy here
    keeps every MLX operation on the thread that iterates this generator.
    """
    for result in tts.model.generate(text, **kwargs):
        audio = np.asarray(result.audio, dtype=np.float32).reshape(-1)
        rate = int(getattr(result, "sample_rate", 0) or tts.sample_rate)
        yield audio, rate


_END = object()


def _next_segment(segments: Iterator[tuple[np.ndarray, int]]) -> Any:
    return next(segments, _END)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/audio/speech", speech)


async def speech(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/speech``: the whole clip in one body, or pcm chunk by chunk.

    ``pcm`` (16-bit little-endian mono at 24 kHz, like OpenAI's; ``X-Sample-Rate`` says so) is
    always sent chunked, one chunk per segment the model yields (mlx-audio models split the
    input at newlines, Soprano also at sentences), so playback can start before generation
    ends. Other formats need the whole clip (their headers hold its length) and come as one
    body. Generation stops early if the client goes away.
    """
    server: ModelServer[TtsModel] = request.app[MODEL_SERVER]
    tts = server.model
    body = await _json_body(request)
    req = parse_speech_request(body, max_chars=server.args.max_input_chars)
    kwargs = tts.generate_kwargs(req.voice, req.speed)
    async with tts.lock:
        segments = await server.run(_segments, tts, req.text, kwargs)
        try:
            first = await _generate(server, segments, req)
            if first is _END:
                raise ApiError(400, "the model produced no audio for this input", code="no_audio")
            if req.fmt == "pcm":
                return await _stream_pcm(request, server, segments, req, first)
            return await _whole_clip(request, server, segments, req, first)
        finally:
            await server.run(_close, segments)


def _close(segments: Iterator[tuple[np.ndarray, int]]) -> None:
    close = getattr(segments, "close", None)
    if close is not None:
        close()


async def _generate(
    server: ModelServer[TtsModel], segments: Iterator[tuple[np.ndarray, int]], req: SpeechRequest
) -> Any:
    """The next segment, or ``_END``; the model's failures become OpenAI-shaped errors."""
    try:
        return await server.run(_next_segment, segments)
    except Exception as exc:
        log.exception("speech generation failed")
        if req.voice is not None and isinstance(exc, (LookupError, ValueError, OSError)):
            # Most often an unknown voice (mlx-audio looks voices up in files or the hub).
            raise ApiError(
                400,
                f"the model could not generate with voice {req.voice!r}: "
                f"{type(exc).__name__}: {exc}",
                param="voice",
                code="invalid_voice",
            ) from exc
        raise ApiError(
            500,
            f"speech generation failed: {type(exc).__name__}: {exc}",
            code="generation_failed",
        ) from exc


async def _whole_clip(
    request: web.Request,
    server: ModelServer[TtsModel],
    segments: Iterator[tuple[np.ndarray, int]],
    req: SpeechRequest,
    first: tuple[np.ndarray, int],
) -> web.StreamResponse:
    parts, rate = [first[0]], first[1]
    while (segment := await _generate(server, segments, req)) is not _END:
        if _client_gone(request):
            raise ApiError(499, "client closed the request", code="client_closed")
        parts.append(_resampled(segment, rate))
    samples = np.concatenate(parts)
    data, content_type = await asyncio.to_thread(
        _finish, samples, rate, req, server.model.applies_speed_itself()
    )
    return web.Response(body=data, content_type=content_type)


async def _stream_pcm(
    request: web.Request,
    server: ModelServer[TtsModel],
    segments: Iterator[tuple[np.ndarray, int]],
    req: SpeechRequest,
    first: tuple[np.ndarray, int],
) -> web.StreamResponse:
    speed_done = server.model.applies_speed_itself()
    response = web.StreamResponse(headers={**_PCM_HEADERS, "Content-Type": "audio/pcm"})
    response.enable_chunked_encoding()
    chunk, _ = await asyncio.to_thread(_finish, first[0], first[1], req, speed_done)
    await response.prepare(request)
    try:
        await response.write(chunk)
        while (segment := await _generate(server, segments, req)) is not _END:
            chunk, _ = await asyncio.to_thread(_finish, segment[0], segment[1], req, speed_done)
            await response.write(chunk)
    except ConnectionResetError:
        log.info("client went away during a pcm stream; generation stopped")
        return response
    except ApiError as exc:
        # Headers are gone: all that is left is to cut the stream so the client sees it fail.
        log.warning("pcm stream failed after it started: %s", exc.message)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def _finish(
    samples: np.ndarray, rate: int, req: SpeechRequest, speed_done: bool
) -> tuple[bytes, str]:
    """Speed (if the model did not apply it) and encoding: CPU work off the event loop."""
    if req.speed != 1.0 and not speed_done:
        samples = audio_codec.change_speed(samples, rate, req.speed)
    try:
        return audio_codec.encode_audio(samples, rate, req.fmt)
    except audio_codec.AudioEncodeError as exc:
        raise ApiError(500, str(exc), code="encoding_failed") from exc


def _resampled(segment: tuple[np.ndarray, int], rate: int) -> np.ndarray:
    samples, segment_rate = segment
    return audio_codec.resample(samples, segment_rate, rate)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def _finite(value: float) -> bool:
    """A finite number; an integer too large for a float is not one (OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def parse_speech_request(body: dict[str, Any], *, max_chars: int) -> SpeechRequest:
    """Validate an OpenAI speech body; every mistake is a 400 naming the parameter.

    =================== ===================================================================
    ``input``           required, non-empty, at most ``--max-input-chars`` (4096, OpenAI's
                        limit) characters; else 400
    ``model``           ignored: the worker serves its one model
    ``voice``           passed to the model if its ``generate`` takes a voice, else ignored
    ``speed``           0.25-4.0 (default 1). Passed to the model if it takes ``speed``;
                        otherwise applied to the audio (ffmpeg ``atempo``, pitch kept;
                        resampling without ffmpeg)
    ``response_format`` ``wav`` (default), ``mp3``, ``flac``, ``opus``, ``aac``, ``pcm``; mp3,
                        opus and aac need ffmpeg, and are a 400 naming it when it is missing
    ``stream``          optional bool; ``stream_format`` may be ``audio`` (``sse`` is a 400)
    ``instructions``    accepted and ignored
    =================== ===================================================================
    """
    text = body.get("input")
    if text is None:
        raise ApiError(400, "missing required parameter 'input'", param="input", code="missing")
    if not isinstance(text, str):
        raise ApiError(400, "'input' must be a string", param="input", code="invalid_type")
    if not text.strip():
        raise ApiError(400, "'input' must not be empty", param="input", code="empty_input")
    if len(text) > max_chars:
        raise ApiError(
            400,
            f"'input' is {len(text)} characters long; the limit is {max_chars}",
            param="input",
            code="string_above_max_length",
        )

    voice = body.get("voice")
    if voice is not None and not isinstance(voice, str):
        raise ApiError(400, "'voice' must be a string", param="voice", code="invalid_type")

    speed = body.get("speed", 1.0)
    if speed is None:
        speed = 1.0
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not _finite(speed):
        raise ApiError(400, "'speed' must be a number", param="speed", code="invalid_type")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ApiError(
            400,
            f"'speed' must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}",
            param="speed",
            code="invalid_value",
        )

    fmt = body.get("response_format") or "wav"
    if not isinstance(fmt, str) or fmt.lower() not in audio_codec.FORMATS:
        raise ApiError(
            400,
            f"'response_format' must be one of {', '.join(audio_codec.FORMATS)}; got {fmt!r}",
            param="response_format",
            code="invalid_value",
        )
    fmt = fmt.lower()
    if fmt in ("mp3", "opus", "aac") and audio_codec.ffmpeg_path() is None:
        raise ApiError(
            400,
            f"response_format {fmt!r} needs ffmpeg, which is not installed on this server; "
            "use wav, flac or pcm",
            param="response_format",
            code="unsupported_response_format",
        )

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    stream_format = body.get("stream_format")
    if stream_format not in (None, "audio"):
        raise ApiError(
            400,
            f"stream_format {stream_format!r} is not supported; use 'audio'",
            param="stream_format",
            code="invalid_value",
        )
    return SpeechRequest(text=text, voice=voice, speed=float(speed), fmt=fmt)


def main(argv: list[str] | None = None) -> None:
    serve_model(
        "mlx-serve text-to-speech worker (OpenAI /v1/audio/speech)",
        imports=_imports,
        load=_load,
        add_routes=_add_routes,
        add_arguments=_add_arguments,
        spare_imports=_spare_imports,
        argv=argv,
    )


if __name__ == "__main__":
    main()
