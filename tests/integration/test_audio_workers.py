"""The text-to-speech and speech-to-text workers as real processes, spoken to directly.

Both tiny models are built once per session (random weights, wired to answer like trained
models: see :mod:`mlx_serve.tiny_models.audio`), each worker is started as
``python -m mlx_serve.workers.{tts,stt}_server`` and is ready when ``/health`` answers. The
speech the tts worker makes is what the stt worker transcribes. The stt worker runs with a
1 MiB upload limit (``--max-file-mb 1``) so the 413 tests need not ship 25 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from mlx_serve.tiny_models.audio import STT_TEXT, build_stt_model, build_tts_model
from mlx_serve.workers import audio_codec
from mlx_serve.workers.process import end_group_sync, free_port, read_log_tail
from tests.conftest import eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

STARTUP_DEADLINE = 120.0
STOP_GRACE = 10.0
TTS_RATE = 32000  # Soprano's
needs_ffmpeg = pytest.mark.skipif(audio_codec.ffmpeg_path() is None, reason="needs ffmpeg")


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    ready_s: float
    health: dict[str, Any]


@pytest.fixture(scope="session")
def audio_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audio-models")
    return {"tts": build_tts_model(root / "tts"), "stt": build_stt_model(root / "stt")}


async def launch(module: str, model: Path, log: Path, *flags: str) -> Worker:
    port = free_port()
    argv = [sys.executable, "-m", module, "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), *flags]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the stop is in a thread
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Worker(proc, f"http://127.0.0.1:{port}", log, started, {})


async def wait_ready(worker: Worker, http: aiohttp.ClientSession) -> None:
    """Until /health answers 200; fail with the log if the worker dies or is late."""

    async def healthy() -> bool:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}")
        with contextlib.suppress(aiohttp.ClientConnectionError, TimeoutError):
            async with http.get(worker.url + "/health") as resp:
                if resp.status == 200:
                    worker.health = await resp.json()
                    return True
        return False

    try:
        await eventually(healthy, STARTUP_DEADLINE, "the worker to answer /health")
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{read_log_tail(worker.log)}") from None
    worker.ready_s = time.monotonic() - worker.ready_s


async def stop(worker: Worker) -> None:
    """SIGTERM the worker's process group, SIGKILL it after the grace, reap."""
    await asyncio.to_thread(end_group_sync, worker.proc, STOP_GRACE)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def workers(
    audio_models: dict[str, Path],
    http: aiohttp.ClientSession,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, Worker]]:
    """Both workers, started together (their imports overlap) and stopped at teardown."""
    logs = tmp_path_factory.mktemp("audio-workers")
    started = {
        "tts": await launch("mlx_serve.workers.tts_server", audio_models["tts"], logs / "tts.log"),
        "stt": await launch(
            "mlx_serve.workers.stt_server",
            audio_models["stt"],
            logs / "stt.log",
            "--max-file-mb",
            "1",
        ),
    }
    try:
        await asyncio.gather(*(wait_ready(w, http) for w in started.values()))
        for name, worker in started.items():
            print(f"\n{name} worker ready in {worker.ready_s:.2f}s: {worker.health}")
        yield started
    finally:
        await asyncio.gather(*(stop(w) for w in started.values()))
        for worker in started.values():
            assert worker.proc.returncode is not None


@pytest.fixture
def tts(workers: dict[str, Worker]) -> Worker:
    return workers["tts"]


@pytest.fixture
def stt(workers: dict[str, Worker]) -> Worker:
    return workers["stt"]


async def speak(
    http: aiohttp.ClientSession, tts: Worker, **body: Any
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    body.setdefault("model", "tts")
    async with http.post(tts.url + "/v1/audio/speech", json=body) as resp:
        return resp.status, await resp.read(), resp


async def transcribe(
    http: aiohttp.ClientSession,
    stt: Worker,
    audio: bytes | None,
    path: str = "/v1/audio/transcriptions",
    filename: str = "speech.wav",
    **fields: str,
) -> tuple[int, str, str]:
    """A multipart request as the openai SDK sends it: (status, content type, body text)."""
    form = aiohttp.FormData(default_to_multipart=True)  # like the SDK, even without a file
    form.add_field("model", "whisper")
    for name, value in fields.items():
        form.add_field(name.replace("__", "[]"), value)
    if audio is not None:
        # As a file object: aiohttp refuses large bytes values in a form.
        form.add_field(
            "file", io.BytesIO(audio), filename=filename, content_type="application/octet-stream"
        )
    async with http.post(stt.url + path, data=form) as resp:
        return resp.status, resp.content_type, await resp.text()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def assert_error(status: int, body: bytes | str, expected: int, param: str | None) -> None:
    assert status == expected, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    assert error["type"] == ("invalid_request_error" if expected < 500 else "server_error")


# --------------------------------------------------------------------------- health


async def test_health_reports_import_and_load_times(workers: dict[str, Worker]) -> None:
    for worker in workers.values():
        assert worker.health["status"] == "ok"
        assert worker.health["import_s"] > 0
        assert worker.health["load_s"] > 0
        assert worker.health["peak_rss_bytes"] > 50 * 1024 * 1024


# --------------------------------------------------------------------------- speech


async def test_speech_is_a_wav_at_the_model_rate(http: aiohttp.ClientSession, tts: Worker) -> None:
    started = time.monotonic()
    status, data, resp = await speak(http, tts, input="Hello world.", voice="alloy")
    print(f"\nfirst speech in {time.monotonic() - started:.2f}s")
    assert status == 200, data
    assert resp.content_type == "audio/wav"
    samples, rate = read_wav(data)
    assert rate == TTS_RATE
    assert samples.ndim == 1
    # The tiny model speaks ~64 ms per input character (12 here, plus 3 prompt tokens).
    assert 0.3 < samples.size / rate < 3.0
    assert float(np.abs(samples).max()) > 0


@pytest.mark.parametrize(
    "fmt",
    ["flac", pytest.param("mp3", marks=needs_ffmpeg), pytest.param("opus", marks=needs_ffmpeg)],
)
async def test_speech_formats_decode(fmt: str, http: aiohttp.ClientSession, tts: Worker) -> None:
    status, data, resp = await speak(http, tts, input="Testing formats.", response_format=fmt)
    assert status == 200, data
    assert resp.content_type == audio_codec.CONTENT_TYPES[fmt]
    samples = audio_codec.decode_audio(data, TTS_RATE)
    assert 0.3 < samples.size / TTS_RATE < 3.0


async def test_pcm_is_streamed_per_segment(http: aiohttp.ClientSession, tts: Worker) -> None:
    chunks: list[bytes] = []
    body = {"model": "tts", "input": "First line.\nSecond line here.", "response_format": "pcm"}
    async with http.post(tts.url + "/v1/audio/speech", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "audio/pcm"
        assert resp.headers["X-Sample-Rate"] == str(audio_codec.PCM_SAMPLE_RATE)
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        async for chunk, _ in resp.content.iter_chunks():
            chunks.append(chunk)
    data = b"".join(chunks)
    assert len(data) % 2 == 0
    seconds = len(data) / 2 / audio_codec.PCM_SAMPLE_RATE
    assert 1.0 < seconds < 5.0  # two segments of ~15 and ~20 characters


async def test_speed_shortens_the_clip(http: aiohttp.ClientSession, tts: Worker) -> None:
    text = "The same sentence twice."
    _, normal, _ = await speak(http, tts, input=text)
    status, fast, _ = await speak(http, tts, input=text, speed=2.0)
    assert status == 200, fast
    ratio = read_wav(fast)[0].size / read_wav(normal)[0].size
    assert 0.35 < ratio < 0.65  # the clip lengths vary by a token or two


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "   \n"}, "input"),
        ({"voice": "alloy"}, "input"),
        ({"input": 42}, "input"),
        ({"input": "x" * 4097}, "input"),
        ({"input": "hi", "speed": 5}, "speed"),
        ({"input": "hi", "speed": "fast"}, "speed"),
        ({"input": "hi", "response_format": "ogg"}, "response_format"),
        ({"input": "hi", "stream": "yes"}, "stream"),
        ({"input": "hi", "stream_format": "sse"}, "stream_format"),
    ],
)
async def test_bad_speech_requests_are_400(
    body: dict[str, Any], param: str, http: aiohttp.ClientSession, tts: Worker
) -> None:
    status, data, resp = await speak(http, tts, **body)
    assert resp.content_type == "application/json"
    assert_error(status, data, 400, param)


async def test_malformed_json_is_400(http: aiohttp.ClientSession, tts: Worker) -> None:
    for raw in (b"{not json", b"[1, 2]"):
        async with http.post(tts.url + "/v1/audio/speech", data=raw) as resp:
            assert_error(resp.status, await resp.read(), 400, None)


# --------------------------------------------------------------------------- transcription


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    """What the tts worker says, made once (a sine would do: the tiny model ignores audio)."""
    return audio_codec.encode_audio(
        np.sin(np.linspace(0, 2000, 2 * TTS_RATE)).astype(np.float32) * 0.3, TTS_RATE, "wav"
    )[0]


async def test_speech_round_trips_through_transcription(
    http: aiohttp.ClientSession, tts: Worker, stt: Worker
) -> None:
    fmt = "mp3" if audio_codec.ffmpeg_path() else "flac"
    status, speech, _ = await speak(http, tts, input="Round trip.", response_format=fmt)
    assert status == 200
    started = time.monotonic()
    status, ctype, text = await transcribe(http, stt, speech, filename=f"speech.{fmt}")
    print(f"\nfirst transcription in {time.monotonic() - started:.2f}s")
    assert status == 200, text
    assert ctype == "application/json"
    assert json.loads(text) == {"text": STT_TEXT}


async def test_transcription_formats(
    http: aiohttp.ClientSession, stt: Worker, speech_wav: bytes
) -> None:
    status, ctype, text = await transcribe(http, stt, speech_wav, response_format="text")
    assert (status, ctype, text) == (200, "text/plain", STT_TEXT + "\n")

    status, _, srt = await transcribe(http, stt, speech_wav, response_format="srt")
    assert status == 200
    assert srt == f"1\n00:00:00,000 --> 00:00:02,000\n{STT_TEXT}\n"

    status, ctype, vtt = await transcribe(http, stt, speech_wav, response_format="vtt")
    assert (status, ctype) == (200, "text/vtt")
    assert vtt == f"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n{STT_TEXT}\n"

    status, _, raw = await transcribe(
        http, stt, speech_wav, response_format="verbose_json", timestamp_granularities__="segment"
    )
    assert status == 200, raw
    body = json.loads(raw)
    assert body["task"] == "transcribe"
    assert body["language"] == "english"
    assert body["duration"] == 2.0
    assert body["text"] == STT_TEXT
    [segment] = body["segments"]
    assert {"id", "start", "end", "text", "tokens", "avg_logprob", "no_speech_prob"} <= set(segment)
    assert (segment["id"], segment["start"], segment["end"]) == (0, 0.0, 2.0)
    assert segment["text"].strip() == STT_TEXT
    assert "words" not in body


async def test_translation_and_language(
    http: aiohttp.ClientSession, stt: Worker, speech_wav: bytes
) -> None:
    status, _, raw = await transcribe(
        http,
        stt,
        speech_wav,
        path="/v1/audio/translations",
        response_format="verbose_json",
        language="German",
        temperature="0.2",
        prompt="A prompt.",
    )
    assert status == 200, raw
    body = json.loads(raw)
    assert (body["task"], body["language"]) == ("translate", "german")
    assert isinstance(body["text"], str)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": "1.5"}, "temperature"),
        ({"language": "klingon"}, "language"),
        ({"timestamp_granularities__": "sentence"}, "timestamp_granularities"),
    ],
)
async def test_bad_transcription_fields_are_400(
    fields: dict[str, str], param: str, http: aiohttp.ClientSession, stt: Worker
) -> None:
    status, _, text = await transcribe(http, stt, b"RIFF....", **fields)
    assert_error(status, text, 400, param)


async def test_missing_file_and_wrong_body_are_400(
    http: aiohttp.ClientSession, stt: Worker
) -> None:
    status, _, text = await transcribe(http, stt, None)
    assert_error(status, text, 400, "file")
    async with http.post(stt.url + "/v1/audio/transcriptions", json={"file": "x"}) as resp:
        assert_error(resp.status, await resp.read(), 400, None)


async def test_corrupt_audio_is_400_and_the_worker_keeps_serving(
    http: aiohttp.ClientSession, stt: Worker, speech_wav: bytes
) -> None:
    for garbage in (b"", b"definitely not audio" * 100, bytes(range(256)) * 40):
        status, _, text = await transcribe(http, stt, garbage, filename="x.mp3")
        assert_error(status, text, 400, "file")
    status, _, text = await transcribe(http, stt, speech_wav)
    assert status == 200, text
    assert json.loads(text)["text"] == STT_TEXT


@pytest.mark.parametrize("size_mb", [1.5, 3.0], ids=["streamed-check", "content-length-check"])
async def test_oversize_upload_is_413(
    size_mb: float, http: aiohttp.ClientSession, stt: Worker
) -> None:
    # 1.5 MiB passes the Content-Length pre-check (limit + 1 MiB for fields) and is stopped
    # while reading; 3 MiB is refused before the body is read.
    status, _, text = await transcribe(http, stt, b"\0" * int(size_mb * 1024 * 1024))
    assert_error(status, text, 413, "file")
    async with http.get(stt.url + "/health") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"no boundary in the header"),
        ("multipart/form-data; boundary=XYZ", b"the boundary never appears"),
        (
            "multipart/form-data; boundary=XYZ",
            b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\ncut',
        ),
    ],
    ids=["no-boundary", "boundary-absent", "truncated"],
)
async def test_malformed_multipart_is_400(
    content_type: str, body: bytes, http: aiohttp.ClientSession, stt: Worker
) -> None:
    async with http.post(
        stt.url + "/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert_error(resp.status, await resp.read(), 400, None)


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_requests_are_all_served(
    http: aiohttp.ClientSession, tts: Worker, stt: Worker, speech_wav: bytes
) -> None:
    results = await asyncio.gather(
        speak(http, tts, input="One."),
        speak(http, tts, input="Two.", response_format="pcm"),
        transcribe(http, stt, speech_wav),
        transcribe(http, stt, speech_wav, response_format="text"),
    )
    assert [r[0] for r in results] == [200, 200, 200, 200]


async def test_client_leaving_a_pcm_stream_does_not_break_the_worker(
    http: aiohttp.ClientSession, tts: Worker
) -> None:
    body = {"input": "\n".join(["A line of speech."] * 8), "response_format": "pcm"}
    async with http.post(tts.url + "/v1/audio/speech", json=body) as resp:
        assert resp.status == 200
        assert await resp.content.readany()  # the first segment, then hang up
    status, data, _ = await speak(http, tts, input="Still here.")
    assert status == 200, data


# --------------------------------------------------------------------------- rendering


async def test_rendering_is_json_safe_and_skips_empty_cues() -> None:  # async: see pytestmark
    """Whisper reports NaN/inf log-probabilities (JSON has neither) and blanks out segments
    it discards; real models do both, the tiny one does not, so this is checked directly."""
    from mlx_serve.workers.stt_server import TranscriptionRequest, to_srt, to_vtt, verbose_json

    segments = [
        {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello.", "avg_logprob": float("nan")},
        {"id": 1, "start": 1.5, "end": 1.5, "text": "", "no_speech_prob": float("inf")},
        {"id": 2, "start": 3661.25, "end": 3662.0, "text": " Later.", "tokens": [1, 2]},
    ]
    req = TranscriptionRequest(b"", "transcribe", None, None, None, "verbose_json", True)
    body = verbose_json({"language": "de"}, req, 3662.0, "Hello. Later.", segments)
    json.dumps(body, allow_nan=False)  # raises on NaN/inf
    assert body["language"] == "german"
    assert body["segments"][0]["avg_logprob"] is None
    assert body["segments"][1]["no_speech_prob"] is None
    assert body["words"] == []
    assert to_srt(segments) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n01:01:01,250 --> 01:01:02,000\nLater.\n"
    )
    assert to_vtt(segments).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n\n")
