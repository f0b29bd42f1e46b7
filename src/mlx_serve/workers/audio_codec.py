"""Audio in and out of the speech workers: encoding generated speech, decoding uploads.

The OpenAI audio API speaks in files: ``/v1/audio/speech`` answers in ``wav``, ``mp3``,
``flac``, ``opus``, ``aac`` or ``pcm``, and ``/v1/audio/transcriptions`` accepts whatever a
client uploads (wav, mp3, m4a, webm, ogg...). Models work on float32 mono arrays. This module
converts between the two with as few moving parts as the format allows:

- WAV and raw PCM are written with the standard library and numpy; FLAC with ``soundfile``
  (libsndfile) when installed; mp3/opus/aac always, and FLAC without soundfile, with the
  ``ffmpeg`` binary, which is then required and named in the error when it is missing.
- Decoding tries libsndfile first (WAV, FLAC, OGG/Vorbis/Opus, MP3: in-process, no fork), then
  ``ffmpeg`` for everything else. ffmpeg reads from a temporary *file*, not a pipe, because
  MP4/M4A files whose index (``moov``) comes last -- what phones record -- cannot be read from
  a pipe.

Every failure to decode is an :class:`AudioDecodeError` whose message can go to the client as
is; nothing here lets a library traceback escape.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("mlx_serve.audio_codec")

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "PCM_SAMPLE_RATE",
    "WHISPER_SAMPLE_RATE",
    "AudioDecodeError",
    "AudioEncodeError",
    "change_speed",
    "decode_audio",
    "encode_audio",
    "ffmpeg_path",
    "resample",
]

#: Speech formats of the OpenAI API, with the Content-Type each is served with.
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",  # Opus in an Ogg container, as OpenAI sends it
    "aac": "audio/aac",  # ADTS stream
    "pcm": "audio/pcm",
}
FORMATS: tuple[str, ...] = tuple(CONTENT_TYPES)

#: Raw PCM has no header, so its rate is part of the contract: OpenAI's ``pcm`` is 24 kHz.
PCM_SAMPLE_RATE = 24000
#: What Whisper models consume.
WHISPER_SAMPLE_RATE = 16000

# ffmpeg output options per format: codec, bitrate, container.
_FFMPEG_ENCODE: dict[str, list[str]] = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"],
    "opus": ["-c:a", "libopus", "-b:a", "64k", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-b:a", "128k", "-f", "adts"],
    "flac": ["-c:a", "flac", "-f", "flac"],
}
# ffmpeg gets this long plus a second per second of audio: generous for encoding and decoding
# alike, yet bounded, so a pathological input cannot hold a worker thread forever.
_FFMPEG_BASE_TIMEOUT_S = 30.0


class AudioDecodeError(ValueError):
    """The bytes are not audio this installation can decode; the message is client-safe."""


class AudioEncodeError(RuntimeError):
    """Encoding failed on the server side (e.g. ``ffmpeg`` missing or failing)."""


def ffmpeg_path() -> str | None:
    """The ``ffmpeg`` binary on PATH, or None."""
    return shutil.which("ffmpeg")


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str = "wav") -> tuple[bytes, str]:
    """Encode mono float samples in [-1, 1] as ``fmt``: ``(file bytes, Content-Type)``.

    ``wav`` is 16-bit PCM at ``sample_rate``; ``pcm`` is headerless 16-bit little-endian mono
    resampled to :data:`PCM_SAMPLE_RATE` (24 kHz, like OpenAI's, since a raw stream cannot say
    its rate). Raises :class:`ValueError` for an unknown format and :class:`AudioEncodeError`
    when the encoder (ffmpeg for mp3/opus/aac) is missing or fails.
    """
    fmt = fmt.lower()
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unsupported audio format {fmt!r}; supported: {', '.join(FORMATS)}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    mono = _as_mono_float32(samples)
    if fmt == "pcm":
        data = _to_int16(resample(mono, sample_rate, PCM_SAMPLE_RATE)).tobytes()
    elif fmt == "wav":
        data = _encode_wav(mono, sample_rate)
    elif fmt == "flac" and _soundfile() is not None:
        data = _encode_soundfile(mono, sample_rate, "FLAC")
    else:
        data = _encode_ffmpeg(mono, sample_rate, fmt)
    return data, CONTENT_TYPES[fmt]


def _as_mono_float32(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2:  # (frames, channels), the soundfile layout
        array = array.mean(axis=1)
    elif array.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {array.shape}")
    return np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=-1.0)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = np.clip(samples, -1.0, 1.0) * 32767.0
    return np.round(scaled).astype("<i2")


def _encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(_to_int16(samples).tobytes())
    return buffer.getvalue()


def _encode_soundfile(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    sf = _soundfile()
    assert sf is not None
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def _encode_ffmpeg(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    binary = ffmpeg_path()
    if binary is None:
        raise AudioEncodeError(
            f"response_format {fmt!r} needs the ffmpeg binary, which is not installed on the "
            "server (wav and pcm work without it)"
        )
    argv = [
        binary, "-hide_banner", "-nostdin", "-loglevel", "error",
        "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
        *_FFMPEG_ENCODE[fmt], "pipe:1",
    ]  # fmt: skip
    duration = len(samples) / sample_rate
    try:
        done = subprocess.run(
            argv,
            input=samples.astype("<f4").tobytes(),
            capture_output=True,
            timeout=_FFMPEG_BASE_TIMEOUT_S + duration,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AudioEncodeError(f"ffmpeg took too long to encode {fmt}") from exc
    if done.returncode != 0 or not done.stdout:
        raise AudioEncodeError(f"ffmpeg failed to encode {fmt}: {_last_line(done.stderr)}")
    return done.stdout


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def decode_audio(data: bytes, sample_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file's bytes to float32 mono samples at ``sample_rate``.

    Raises :class:`AudioDecodeError` (with a message fit for the client) for empty input,
    bytes no decoder understands, and audio without samples.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not data:
        raise AudioDecodeError("the audio file is empty")
    decoded = _decode_soundfile(data) or _decode_wave(data)
    if decoded is not None:
        samples, rate = decoded
        samples = resample(samples, rate, sample_rate)
    else:
        samples = _decode_ffmpeg(data, sample_rate)
    if samples.size == 0:
        raise AudioDecodeError("the audio file contains no audio samples")
    if not np.isfinite(samples).all():
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return samples


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int] | None:
    sf = _soundfile()
    if sf is None:
        return None
    try:
        array, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:  # libsndfile raises several types for "not my format" and corrupt data
        return None
    return np.ascontiguousarray(array.mean(axis=1), dtype=np.float32), int(rate)


def _decode_wave(data: bytes) -> tuple[np.ndarray, int] | None:
    """Integer PCM WAV with the standard library, for installations without soundfile."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, ValueError):
        return None
    if width not in (1, 2, 4):
        return None
    if width == 1:
        ints = np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0
    else:
        ints = np.frombuffer(frames, dtype=f"<i{width}").astype(np.float32)
    scale = float(2 ** (8 * width - 1))
    usable = len(ints) - len(ints) % channels
    samples = (ints[:usable] / scale).reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate


def _decode_ffmpeg(data: bytes, sample_rate: int) -> np.ndarray:
    binary = ffmpeg_path()
    if binary is None:
        raise AudioDecodeError(
            "could not decode the audio: it is not WAV, FLAC, OGG or MP3, and the ffmpeg "
            "binary needed for other formats (m4a, webm, aac...) is not installed on the server"
        )
    with tempfile.TemporaryDirectory(prefix="mlx-serve-audio-") as tmp:
        source = Path(tmp) / "upload"
        source.write_bytes(data)
        argv = [
            binary, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(source),
            "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-ar", str(sample_rate),
            "pipe:1",
        ]  # fmt: skip
        # Audio is rarely under 16 kbit/s (2 kB/s) and ffmpeg decodes it far faster than 10x
        # real time: a second per 20 kB bounds a pathological file without cutting real ones.
        timeout = _FFMPEG_BASE_TIMEOUT_S + len(data) / 20_000
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AudioDecodeError("decoding the audio took too long") from exc
    if done.returncode != 0:
        reason = _last_line(done.stderr) or f"ffmpeg exited with {done.returncode}"
        raise AudioDecodeError(f"could not decode the audio file ({_strip_path(reason)})")
    usable = len(done.stdout) - len(done.stdout) % 4
    return np.frombuffer(done.stdout[:usable], dtype="<f4").astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def change_speed(samples: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Play ``samples`` ``speed`` times faster, for models that have no speed control.

    With ffmpeg the ``atempo`` filter keeps the pitch; without it (or if it fails) the audio
    is resampled, which shifts the pitch too, like mlx-audio's own ``adjust_speed``.
    """
    samples = _as_mono_float32(samples)
    if speed <= 0 or not math.isfinite(speed):
        raise ValueError(f"speed must be a positive number, got {speed}")
    if speed == 1.0 or samples.size == 0:
        return samples
    binary = ffmpeg_path()
    if binary is not None:
        stages, rest = [], speed
        while rest < 0.5:  # atempo takes 0.5..100 per stage
            stages.append("atempo=0.5")
            rest /= 0.5
        stages.append(f"atempo={rest:.6f}")
        argv = [
            binary, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
            "-filter:a", ",".join(stages), "-f", "f32le", "-ac", "1", "pipe:1",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv,
                input=samples.astype("<f4").tobytes(),
                capture_output=True,
                timeout=_FFMPEG_BASE_TIMEOUT_S + samples.size / sample_rate,
                check=False,
            )
        except subprocess.TimeoutExpired:
            done = None
        if done is not None and done.returncode == 0 and done.stdout:
            usable = len(done.stdout) - len(done.stdout) % 4
            return np.frombuffer(done.stdout[:usable], dtype="<f4").astype(np.float32)
        log.warning("ffmpeg atempo failed; changing speed by resampling (pitch shifts)")
    return _linear_resample(samples, round(samples.size / speed))


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """``samples`` at ``target_rate``: polyphase (scipy) when available, else linear."""
    samples = np.asarray(samples, dtype=np.float32)
    if source_rate == target_rate or samples.size == 0:
        return samples
    try:
        # Optional (it comes with mlx-audio and mlx-whisper) and slow to import, so imported
        # lazily; through importlib because scipy ships no type stubs.
        signal: Any = importlib.import_module("scipy.signal")
    except ImportError:  # pragma: no cover
        return _linear_resample(samples, round(samples.size * target_rate / source_rate))
    divisor = math.gcd(source_rate, target_rate)
    resampled: Any = signal.resample_poly(samples, target_rate // divisor, source_rate // divisor)
    return np.asarray(resampled, dtype=np.float32)


def _linear_resample(samples: np.ndarray, count: int) -> np.ndarray:
    positions = np.linspace(0, samples.size - 1, max(1, count))
    result: np.ndarray = np.interp(positions, np.arange(samples.size), samples)
    return result.astype(np.float32)


def _soundfile() -> Any:
    try:
        # Optional, and needs the libsndfile shared library; untyped, hence importlib.
        return importlib.import_module("soundfile")
    except (ImportError, OSError):
        return None


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def _strip_path(message: str) -> str:
    """ffmpeg prefixes errors with the input path: a server detail the client does not need."""
    return message.split(": ", 1)[1] if message.startswith("/") and ": " in message else message
