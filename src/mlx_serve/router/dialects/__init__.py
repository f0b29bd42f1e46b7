"""The other APIs clients speak, translated to the OpenAI requests the workers take.

Each module owns its routes and its shape of answers and errors; they all call workers through
:mod:`mlx_serve.router.calls`, so the scheduler, ``keep_alive``, the API key and the metrics
apply to them exactly as to the OpenAI routes.

- :mod:`.anthropic`: Anthropic Messages (``/v1/messages``), what Claude Code speaks;
- :mod:`.responses`: OpenAI Responses (``/v1/responses``), what Codex CLI and the Agents SDK speak;
- :mod:`.ollama`: Ollama's ``/api/*``, what many desktop apps and editor plugins speak.
"""

from __future__ import annotations

from aiohttp import web

from mlx_serve.router.dialects import anthropic, ollama, responses


def add_routes(app: web.Application) -> None:
    anthropic.add_routes(app)
    responses.add_routes(app)
    ollama.add_routes(app)
