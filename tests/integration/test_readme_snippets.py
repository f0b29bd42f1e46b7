"""Every Python snippet in the README that talks to the server runs, unchanged but for the port,
against a real server whose models carry the README's names (tiny local models behind them).

A snippet that drifts from the API (a renamed field, a dialect route that moved) fails here
instead of in a user's terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import re
import warnings
from pathlib import Path

import pytest

from mlx_serve.tiny_models import build_rerank_model, embedding_model_dir
from tests.integration.conftest import StartServer

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
DEFAULT_URL = "127.0.0.1:8095"


def snippets() -> list[str]:
    return [code for code in BLOCK.findall(README.read_text()) if DEFAULT_URL in code]


def test_the_readme_has_a_snippet_per_dialect() -> None:
    text = "\n".join(snippets())
    for marker in ("OpenAI(", "anthropic.Anthropic(", "responses.create(", "ollama.Client(",
                   "/v1/rerank"):  # fmt: skip
        assert marker in text, f"no README snippet uses {marker}"


async def test_readme_snippets_run(
    start_server: StartServer, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    reranker = await asyncio.to_thread(build_rerank_model, tmp_path / "r")  # ~1 s of CPU
    run = await start_server(
        {
            "qwen": {"type": "text", "path": str(tiny_models["a"])},
            "minilm": {"type": "embedding", "path": str(embedding_model_dir())},
            "reranker": {"type": "rerank", "path": str(reranker)},
        },
        max_loaded_models=1,
    )
    address = run.url.removeprefix("http://")
    for code in snippets():
        out = io.StringIO()

        def execute(code: str = code, out: io.StringIO = out) -> None:
            namespace: dict[str, object] = {}
            try:
                with contextlib.redirect_stdout(out):
                    exec(
                        compile(code.replace(DEFAULT_URL, address), "README.md", "exec"), namespace
                    )
            finally:
                # Snippets are short, as users write them: their clients are left for the
                # garbage collector, whose "unclosed socket" warnings are not the point here.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ResourceWarning)
                    namespace.clear()
                    gc.collect()

        try:
            await asyncio.to_thread(execute)
        except Exception as exc:
            raise AssertionError(f"README snippet failed: {exc!r}\n{code}") from exc
        assert out.getvalue().strip(), f"README snippet printed nothing:\n{code}"
