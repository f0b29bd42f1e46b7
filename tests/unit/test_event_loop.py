"""The server's event loop: uvloop's when installed (it is a dependency here), asyncio's when
asked for or when uvloop is missing."""

from __future__ import annotations

import sys

import pytest

from mlx_serve import event_loop


async def which() -> str:
    return event_loop.name()


def test_uvloop_runs_the_server_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV_VAR, raising=False)
    assert event_loop.run(which()) == "uvloop"


@pytest.mark.parametrize("value", ["asyncio", " AsyncIO "])
def test_the_environment_can_ask_for_asyncios_loop(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(event_loop.ENV_VAR, value)
    assert event_loop.run(which()) == "asyncio"


def test_without_uvloop_asyncios_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV_VAR, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert event_loop.run(which()) == "asyncio"
