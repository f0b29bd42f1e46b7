"""Other real clients: LiteLLM (as users wire mlx-serve into it), preload, the CLI and demo."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from mlx_serve.cli.main import app
from mlx_serve.config import load_config
from mlx_serve.demo import REAL_CHAT, REAL_STT, SKIP_REAL_ENV
from mlx_serve.workers.process import free_port
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.slow

# LiteLLM would fetch its model price list from the network at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def litellm() -> ModuleType:
    """LiteLLM, with the tokenizer it loads on first use loaded already (~0.4 s of CPU that
    would otherwise hold the test's event loop, and the server's with it)."""
    import litellm

    with contextlib.suppress(ImportError):
        importlib.import_module("litellm.litellm_core_utils.default_encoding")
    return litellm


async def test_litellm_chat_and_stream(
    start_server: StartServer, tiny_models: dict[str, Path], litellm: ModuleType
) -> None:
    run = await start_server({"tiny": {"path": str(tiny_models["a"])}})
    common = {
        "model": "openai/tiny",
        "api_base": run.url + "/v1",
        "api_key": "unused",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
    }
    reply = await litellm.acompletion(**common)
    assert isinstance(reply.choices[0].message.content, str)
    stream = await litellm.acompletion(**common, stream=True)
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream]
    assert parts


async def test_preload_loads_at_start(
    start_server: StartServer, tiny_models: dict[str, Path]
) -> None:
    run = await start_server(
        {
            "eager": {"path": str(tiny_models["a"]), "preload": True},
            "lazy": {"path": str(tiny_models["b"])},
        }
    )
    await run.event("model.loaded", "eager", timeout=60)
    assert run.supervisor.loaded() == ["eager"]


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "conf" / "models.yaml"
    result = CliRunner().invoke(app, ["init", "--config", str(target)])
    assert result.exit_code == 0, result.output
    assert load_config(target).server.port == 8095
    again = CliRunner().invoke(app, ["init", "--config", str(target)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_start_with_a_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("server:\n  port: 8095\n  idle_timout: 5m\n")
    result = CliRunner().invoke(app, ["start", "--config", str(bad)])
    assert result.exit_code == 2
    assert "models.yaml:3" in result.output and "idle_timout" in result.output


def test_demo_runs_the_tour_to_completion(tmp_path: Path) -> None:
    """The whole tour, with the random-weight models in place of the real ones
    (``MLX_SERVE_DEMO_SKIP_REAL``, also the path a machine without their wheels takes):
    test_real_models serves the real SmolLM2 and Whisper, which here would add a minute of
    CPU. (``scripts/demo.sh --exit`` with them is checked by hand.)"""
    port = free_port()
    argv = [sys.executable, "-m", "mlx_serve.cli.main", "demo", "--exit"]
    argv += ["--port", str(port), "--workdir", str(tmp_path)]
    result = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "100", SKIP_REAL_ENV: f"{REAL_CHAT},{REAL_STT}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "swap time" in result.stdout
    assert "the tour failed" not in result.stdout
    for dialect in ("POST /v1/messages", "POST /v1/responses", "POST /api/chat", "count_tokens"):
        assert dialect in result.stdout, dialect
    assert f"{REAL_CHAT} is left out" in result.stdout
    assert f"{REAL_STT} is left out" in result.stdout
