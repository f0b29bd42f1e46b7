"""Strict validation of repo ids and revisions before they get anywhere near a path.

huggingface_hub builds cache paths from both: ``models--{namespace}--{name}`` from the repo id
and ``refs/{revision}`` from the revision. Its own validator accepts single-segment ids
(``gpt2``) and unicode word characters, and it never validates revisions, so a revision like
``../../x`` would be written outside the repo's folder. Requests to the management API come from
the network; everything is checked here first.
"""

from __future__ import annotations

import re

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import (  # type: ignore[attr-defined]  # lazily exported
    validate_repo_id as _hf_validate_repo_id,
)

from .errors import InvalidRepoId, InvalidRevision

__all__ = ["validate_repo_id", "validate_revision"]

# ASCII only (the hub allows nothing else); each part starts and ends with a letter, digit or
# underscore, like the hub's own rule. The length limits and the "--"/".." bans come from
# huggingface_hub's validator, applied on top.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID_RE = re.compile(rf"{_PART}/{_PART}")

_MAX_REVISION_LEN = 255
# git check-ref-format's forbidden characters, plus the backslash (a separator on Windows).
_BAD_REVISION_CHARS = frozenset(" ~^:?*[\\")


def validate_repo_id(repo_id: object) -> str:
    """Return ``repo_id`` if it is a strict ``namespace/name`` hub id, else raise InvalidRepoId.

    Rejects everything that could address a path: absolute paths, ``..``, extra slashes,
    ``--`` (which would collide with the cache's folder naming), non-ASCII and control
    characters.
    """
    if not isinstance(repo_id, str):
        raise InvalidRepoId(f"repo id must be a string, got {type(repo_id).__name__}")
    shown = repo_id if len(repo_id) <= 200 else repo_id[:200] + "..."
    if not _REPO_ID_RE.fullmatch(repo_id):
        raise InvalidRepoId(
            f"invalid repo id {shown!r}: expected 'namespace/name' made of letters, digits, "
            "'-', '_' and '.' (for example 'mlx-community/Qwen2.5-0.5B-Instruct-4bit')"
        )
    try:
        _hf_validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InvalidRepoId(f"invalid repo id {shown!r}: {exc}") from None
    return repo_id


def validate_revision(revision: object) -> str:
    """Return ``revision`` if it is a plausible git branch, tag or commit, else raise.

    Slashes are allowed (``refs/pr/1`` is a real hub revision) but no empty, ``.`` or ``..``
    segment, since huggingface_hub writes the revision as a path under ``refs/``.
    """
    if not isinstance(revision, str):
        raise InvalidRevision(f"revision must be a string, got {type(revision).__name__}")
    shown = revision if len(revision) <= 200 else revision[:200] + "..."
    problem: str | None = None
    if not revision:
        problem = "it is empty"
    elif len(revision) > _MAX_REVISION_LEN:
        problem = f"it is longer than {_MAX_REVISION_LEN} characters"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F or c in _BAD_REVISION_CHARS for c in revision):
        problem = "it contains whitespace, control characters or one of ~^:?*[\\"
    elif not revision.isascii():
        problem = "it contains non-ASCII characters"
    elif ".." in revision or "@{" in revision:
        problem = "it contains '..' or '@{'"
    elif any(part in ("", ".") for part in revision.split("/")):
        problem = "it has an empty or '.' path segment (leading, trailing or double '/')"
    elif revision.endswith((".lock", ".")):
        problem = "it ends with '.lock' or '.'"
    if problem is not None:
        raise InvalidRevision(f"invalid revision {shown!r}: {problem}")
    return revision
