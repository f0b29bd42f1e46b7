"""Audio encoding/decoding round trips: every response format, every failure mode.

No model and no worker process: a numpy sine goes out in each format and comes back through
:func:`decode_audio`. Formats that need the ``ffmpeg`` binary are skipped where it is missing
(CI installs it), and the "ffmpeg missing" errors are tested by hiding it.
"""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from mlx_serve.workers import audio_codec
from mlx_serve.workers.audio_codec import (
    CONTENT_TYPES,
    FORMATS,
    PCM_SAMPLE_RATE,
    AudioDecodeError,
    AudioEncodeError,
    change_speed,
    decode_audio,
    encode_audio,
    resample,
)

needs_ffmpeg = pytest.mark.skipif(audio_codec.ffmpeg_path() is None, reason="needs ffmpeg")

RATE = 24000
FREQ = 440.0


def sine(seconds: float = 1.0, rate: int = RATE, freq: float = FREQ) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


@pytest.fixture
def no_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio_codec, "ffmpeg_path", lambda: None)


@pytest.mark.parametrize(
    "fmt",
    [
        "wav",
        "flac",
        pytest.param("mp3", marks=needs_ffmpeg),
        pytest.param("opus", marks=needs_ffmpeg),
        pytest.param("aac", marks=needs_ffmpeg),
    ],
)
def test_round_trip_keeps_duration_and_pitch(fmt: str) -> None:
    data, content_type = encode_audio(sine(1.0), RATE, fmt)
    assert content_type == CONTENT_TYPES[fmt]
    decoded = decode_audio(data, 16000)
    assert decoded.dtype == np.float32
    assert decoded.ndim == 1
    # Lossy codecs pad a little (encoder delay, frame size): allow 0.15 s.
    assert abs(decoded.size / 16000 - 1.0) < 0.15
    assert abs(dominant_frequency(decoded, 16000) - FREQ) < 10
    assert 0.2 < float(np.abs(decoded).max()) <= 1.0


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_lossless_round_trip_is_exact_to_16_bits(fmt: str) -> None:
    samples = sine(0.5)
    decoded = decode_audio(encode_audio(samples, RATE, fmt)[0], RATE)
    assert decoded.size == samples.size
    assert float(np.abs(decoded - samples).max()) < 2 / 32768


def test_wav_header_carries_the_model_rate() -> None:
    data, _ = encode_audio(sine(0.25, rate=32000), 32000, "wav")
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (32000, 1, 2)
        assert wav.getnframes() == 8000


def test_pcm_is_raw_16_bit_little_endian_at_24_khz() -> None:
    data, content_type = encode_audio(sine(1.0, rate=32000), 32000, "pcm")
    assert content_type == "audio/pcm"
    assert len(data) == 2 * PCM_SAMPLE_RATE  # one second of 16-bit mono at 24 kHz
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    assert abs(dominant_frequency(samples, PCM_SAMPLE_RATE) - FREQ) < 5


def test_encode_clips_out_of_range_and_non_finite_samples() -> None:
    wild = np.array([2.0, -3.0, np.nan, np.inf, 0.0], dtype=np.float32)
    decoded = decode_audio(encode_audio(wild, 8000, "wav")[0], 8000)
    assert np.allclose(decoded, [1.0, -1.0, 0.0, 1.0, 0.0], atol=1e-4)


def test_format_is_case_insensitive_and_unknown_formats_list_the_supported_ones() -> None:
    assert encode_audio(sine(0.1), RATE, "WAV")[1] == "audio/wav"
    with pytest.raises(ValueError, match="unsupported audio format 'ogg'") as info:
        encode_audio(sine(0.1), RATE, "ogg")
    for fmt in FORMATS:
        assert fmt in str(info.value)


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        encode_audio(sine(0.1), 0, "wav")
    with pytest.raises(ValueError, match="mono"):
        encode_audio(np.zeros((2, 2, 2), dtype=np.float32), RATE, "wav")


def test_stereo_input_is_mixed_down() -> None:
    stereo = np.stack([sine(0.2), sine(0.2)], axis=1)
    decoded = decode_audio(encode_audio(stereo, RATE, "wav")[0], RATE)
    assert decoded.size == stereo.shape[0]


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_ffmpeg_formats_name_ffmpeg_when_it_is_missing(fmt: str, no_ffmpeg: None) -> None:
    with pytest.raises(AudioEncodeError, match="ffmpeg"):
        encode_audio(sine(0.1), RATE, fmt)


def test_wav_flac_and_pcm_need_no_ffmpeg(no_ffmpeg: None) -> None:
    for fmt in ("wav", "flac", "pcm"):
        assert encode_audio(sine(0.1), RATE, fmt)[0]


def test_decode_resamples_to_the_requested_rate() -> None:
    data, _ = encode_audio(sine(1.0, rate=44100), 44100, "wav")
    decoded = decode_audio(data)  # whisper's 16 kHz by default
    assert decoded.size == 16000
    assert abs(dominant_frequency(decoded, 16000) - FREQ) < 5


def test_decode_stereo_wav_without_soundfile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio_codec, "_soundfile", lambda: None)
    stereo = (np.stack([sine(0.5), -sine(0.5)], axis=1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(stereo.tobytes())
    decoded = decode_audio(buffer.getvalue(), RATE)
    assert decoded.size == stereo.shape[0]
    assert float(np.abs(decoded).max()) < 1e-3  # the channels cancel out


@needs_ffmpeg
def test_decode_m4a_with_its_index_at_the_end(tmp_path: Path) -> None:
    # AAC in MP4 with the ``moov`` index last, as phones record it: libsndfile cannot read it,
    # and ffmpeg cannot read it from a pipe once it is longer than a few seconds (10 s here),
    # only from a seekable file.
    ffmpeg = audio_codec.ffmpeg_path()
    assert ffmpeg is not None
    (tmp_path / "in.wav").write_bytes(encode_audio(sine(10.0), RATE, "wav")[0])
    argv = [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(tmp_path / "in.wav"),
            "-c:a", "aac", str(tmp_path / "out.m4a")]  # fmt: skip
    subprocess.run(argv, check=True)
    decoded = decode_audio((tmp_path / "out.m4a").read_bytes())
    assert abs(decoded.size / 16000 - 10.0) < 0.15
    assert abs(dominant_frequency(decoded, 16000) - FREQ) < 10


@pytest.mark.parametrize(
    "data",
    [
        b"this is not audio at all, just some text" * 10,
        bytes(range(256)) * 64,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # a truncated WAV header
        b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 100,  # an mp3 tag and nothing else
    ],
    ids=["text", "binary-noise", "truncated-wav", "empty-mp3"],
)
def test_corrupt_bytes_raise_audio_decode_error(data: bytes) -> None:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data)
    assert "Traceback" not in str(info.value)
    assert str(info.value)


def test_corrupt_bytes_without_ffmpeg_say_what_is_missing(no_ffmpeg: None) -> None:
    with pytest.raises(AudioDecodeError, match="ffmpeg"):
        decode_audio(b"\x00\x01garbage" * 50)


def test_empty_input_raises_audio_decode_error() -> None:
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(b"")


def test_wav_without_samples_raises_audio_decode_error() -> None:
    data, _ = encode_audio(np.zeros(0, dtype=np.float32), RATE, "wav")
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        decode_audio(data)


def test_audio_decode_error_is_a_value_error() -> None:
    # Callers that only know ValueError still treat it as the client's mistake.
    assert issubclass(AudioDecodeError, ValueError)


def test_resample_identity_and_length() -> None:
    samples = sine(0.5)
    assert resample(samples, RATE, RATE) is samples or np.array_equal(
        resample(samples, RATE, RATE), samples
    )
    assert resample(samples, RATE, 16000).size == 8000
    assert resample(np.zeros(0, dtype=np.float32), RATE, 16000).size == 0


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_change_speed_scales_duration(speed: float) -> None:
    changed = change_speed(sine(1.0), RATE, speed)
    expected = 1.0 / speed
    assert abs(changed.size / RATE - expected) < 0.02 + 0.02 * expected  # atempo trims a little


def test_change_speed_without_ffmpeg_resamples(no_ffmpeg: None) -> None:
    assert change_speed(sine(1.0), RATE, 2.0).size == RATE // 2
    assert change_speed(sine(1.0), RATE, 1.0).size == RATE
    with pytest.raises(ValueError, match="speed"):
        change_speed(sine(1.0), RATE, 0.0)
