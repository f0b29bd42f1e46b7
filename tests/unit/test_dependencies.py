"""The pinned ranges of the dependencies whose internals mlx-serve uses hold what it uses.

``hub/download.py`` goes below huggingface_hub's public API (resumable, cancellable downloads
need its ``http_get`` and file locks), so the range in pyproject.toml is a promise this test
keeps: the installed version is inside it, and every internal is there with the parameters
the code passes.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def requirement(name: str) -> Requirement:
    text = PYPROJECT.read_text()
    for line in re.findall(r'^\s*"([^"]+)",?\s*(?:#.*)?$', text, re.MULTILINE):
        req = Requirement(line)
        if req.name == name:
            return req
    raise AssertionError(f"{name} is not declared in pyproject.toml")


@pytest.mark.parametrize("name", ["huggingface-hub", "httpx2"])
def test_installed_version_is_in_the_pinned_range(name: str) -> None:
    req = requirement(name)
    assert req.specifier, f"{name} must be pinned (its internals are used)"
    assert any(spec.operator == "<" for spec in req.specifier), f"{name} needs an upper bound"
    installed = importlib.metadata.version(name)
    assert req.specifier.contains(installed), f"{name} {installed} is outside {req.specifier}"


def test_the_huggingface_hub_internals_are_there() -> None:
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock  # type: ignore[attr-defined]

    params = inspect.signature(http_get).parameters
    for used in ("resume_size", "headers", "expected_size", "displayed_filename", "tqdm_class"):
        assert used in params, f"http_get lost its {used!r} parameter"
    assert repo_folder_name(repo_id="org/name", repo_type="model") == "models--org--name"
    assert callable(WeakFileLock)
