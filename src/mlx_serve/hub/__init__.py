"""The model-files side of the management API: pull, show and delete models.

- :func:`pull` downloads a hub repo into the standard Hugging Face cache (``HF_HUB_CACHE`` /
  ``HF_HOME``), yielding Ollama-style progress dicts; resumable and cancellable (see
  :mod:`.pull` and :mod:`.download` for how).
- :func:`show` describes a local model directory or a cached repo, from disk only.
- :func:`estimated_size_bytes`: bytes of weights on disk, for "does it fit" checks.
- :func:`check_model_files`: are a model's files on disk (before a worker starts)?
- :func:`delete_cached` / :func:`delete_local` free disk space, refusing anything that is not
  clearly a cached repo or a model directory.

Every failure is a :class:`HubError` subclass with a user-facing message, a stable ``code``
and a suggested ``http_status``.
"""

from .cache import MissingFiles, check_model_files, delete_cached, delete_local, hub_cache_dir
from .errors import (
    ChecksumMismatch,
    DiskFull,
    DownloadFailed,
    GatedRepo,
    HubError,
    HubOffline,
    HubUnreachable,
    InvalidRepoId,
    InvalidRevision,
    NotAModelDir,
    NotCached,
    PathNotFound,
    RepoNotFound,
    RevisionNotFound,
)
from .ids import validate_repo_id, validate_revision
from .info import estimated_size_bytes, show
from .pull import hub_offline, pull

__all__ = [
    "ChecksumMismatch",
    "DiskFull",
    "DownloadFailed",
    "GatedRepo",
    "HubError",
    "HubOffline",
    "HubUnreachable",
    "InvalidRepoId",
    "InvalidRevision",
    "MissingFiles",
    "NotAModelDir",
    "NotCached",
    "PathNotFound",
    "RepoNotFound",
    "RevisionNotFound",
    "check_model_files",
    "delete_cached",
    "delete_local",
    "estimated_size_bytes",
    "hub_cache_dir",
    "hub_offline",
    "pull",
    "show",
    "validate_repo_id",
    "validate_revision",
]
