"""Typed errors of the model-files API, each with a message a user can act on.

The management routes turn these into JSON errors (before a pull's stream starts) or into a
final ``{"status": "error", "error": ...}`` line (after). ``code`` is a stable machine-readable
name and ``http_status`` the status a route should answer with, so the routes need no table of
their own and every caller maps a given failure the same way.
"""

from __future__ import annotations

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
    "NotAModelDir",
    "NotCached",
    "PathNotFound",
    "RepoNotFound",
    "RevisionNotFound",
]


class HubError(Exception):
    """Base class: something about fetching, inspecting or deleting model files went wrong."""

    code = "hub_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRepoId(HubError):
    """Not a ``namespace/name`` repo id (also raised for path-traversal attempts)."""

    code = "invalid_repo_id"
    http_status = 400


class InvalidRevision(HubError):
    """A revision that is not a plausible branch, tag or commit name."""

    code = "invalid_revision"
    http_status = 400


class RepoNotFound(HubError):
    """The hub has no such repo, or it is private and no valid token was sent."""

    code = "repo_not_found"
    http_status = 404


class RevisionNotFound(HubError):
    """The repo exists but the branch, tag or commit does not."""

    code = "revision_not_found"
    http_status = 404


class GatedRepo(HubError):
    """The repo needs its terms accepted on the hub and a token (``HF_TOKEN``) to download."""

    code = "gated_repo"
    http_status = 403


class HubUnreachable(HubError):
    """The hub could not be reached or answered with a server error; retrying may help."""

    code = "hub_unreachable"
    http_status = 502


class HubOffline(HubUnreachable):
    """Network access to the hub is disabled (``HF_HUB_OFFLINE``)."""

    code = "hub_offline"
    http_status = 503


class NotCached(HubError):
    """The repo is not in the local Hugging Face cache."""

    code = "not_cached"
    http_status = 404


class PathNotFound(HubError):
    """Neither an existing local directory nor a valid repo id."""

    code = "path_not_found"
    http_status = 404


class NotAModelDir(HubError):
    """``delete_local`` refused: the directory does not look like a model (or is unsafe)."""

    code = "not_a_model_dir"
    http_status = 400


class DownloadFailed(HubError):
    """A download started but did not finish; a new pull resumes where it stopped."""

    code = "download_failed"
    http_status = 502


class ChecksumMismatch(DownloadFailed):
    """A downloaded file does not match the hash the hub published for it; it was discarded."""

    code = "checksum_mismatch"


class DiskFull(DownloadFailed):
    """The cache's disk ran out of space."""

    code = "disk_full"
    http_status = 507
