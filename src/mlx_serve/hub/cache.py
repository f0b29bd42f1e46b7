"""Where the Hugging Face cache is, what is in it, and deleting from it safely.

The cache directory is resolved from the environment on every call, with huggingface_hub's own
precedence (``HF_HUB_CACHE``, legacy ``HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``). huggingface_hub computes
that once, when it is first imported; reading it afresh means a changed environment (a test, a
reloaded config) is honoured, and the download child process, which imports huggingface_hub
anew, agrees with us.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import scan_cache_dir
from huggingface_hub.file_download import repo_folder_name

from .errors import HubError, InvalidRepoId, NotAModelDir, NotCached, PathNotFound
from .ids import validate_repo_id

__all__ = [
    "WEIGHT_SUFFIXES",
    "CachedSnapshot",
    "MissingFiles",
    "ModelDir",
    "check_model_files",
    "delete_cached",
    "delete_local",
    "disk_usage",
    "find_snapshot",
    "hub_cache_dir",
    "repo_storage_dir",
    "resolve_model_dir",
    "weight_files",
]

WEIGHT_SUFFIXES = frozenset({".safetensors", ".npz", ".gguf", ".bin", ".pt", ".pth"})
"""File types that hold weights. ``.bin`` only counts when there is no ``.safetensors``."""

_DEFAULT_REVISION = "main"


def hub_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """The hub cache directory (``cache_dir`` if given), with huggingface_hub's precedence."""
    if cache_dir is not None:
        return Path(os.path.expandvars(str(cache_dir))).expanduser().absolute()
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser().absolute()
    hf_home = env.get("HF_HOME")
    if not hf_home:
        xdg = env.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg else Path("~").expanduser() / ".cache"
        hf_home = str(base / "huggingface")
    return (Path(os.path.expandvars(hf_home)).expanduser() / "hub").absolute()


def repo_storage_dir(repo_id: str, cache_dir: Path | str | None = None) -> Path:
    """``<cache>/models--namespace--name`` for an already validated repo id."""
    folder: str = repo_folder_name(repo_id=repo_id, repo_type="model")
    return hub_cache_dir(cache_dir) / folder


@dataclass(frozen=True)
class CachedSnapshot:
    """One snapshot folder of a cached repo."""

    path: Path
    commit: str


def find_snapshot(storage: Path, revision: str = _DEFAULT_REVISION) -> CachedSnapshot | None:
    """The snapshot ``refs/<revision>`` points to, else the newest snapshot folder, else None.

    The fallback covers caches filled by a commit-pinned download (no ref written) and pulls
    whose final step, writing the ref, never ran.
    """
    snapshots = storage / "snapshots"
    ref = storage / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        commit = ""
    if commit and (snapshots / commit).is_dir():
        return CachedSnapshot(snapshots / commit, commit)
    try:
        candidates = [p for p in snapshots.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return None
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return CachedSnapshot(newest, newest.name)


@dataclass(frozen=True)
class ModelDir:
    """Where ``path_or_repo`` lives on disk, as :func:`resolve_model_dir` found it."""

    source: str  # "local" | "hub"
    path: Path | None  # None: a hub repo that is not cached
    repo_id: str | None = None
    revision: str | None = None
    storage: Path | None = None  # the repo's cache folder (hub only)


def resolve_model_dir(path_or_repo: str, cache_dir: Path | str | None = None) -> ModelDir:
    """Decide whether ``path_or_repo`` is a local directory or a hub repo, like mlx_lm does.

    An existing directory wins (mlx_lm's ``load`` checks the path first too); otherwise the
    string must be a valid repo id, looked up in the cache without any network access.
    """
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        return ModelDir(source="local", path=local.absolute())
    try:
        repo_id = validate_repo_id(path_or_repo)
    except InvalidRepoId:
        raise PathNotFound(
            f"{path_or_repo!r} is neither an existing directory nor a 'namespace/name' repo id"
        ) from None
    # Resolved, like the paths huggingface_hub (and so pull()) reports.
    storage = repo_storage_dir(repo_id, hub_cache_dir(cache_dir).resolve())
    snapshot = find_snapshot(storage) if storage.is_dir() else None
    if snapshot is None:
        return ModelDir(source="hub", path=None, repo_id=repo_id, storage=storage)
    return ModelDir(
        source="hub",
        path=snapshot.path,
        repo_id=repo_id,
        revision=snapshot.commit,
        storage=storage,
    )


@dataclass(frozen=True)
class MissingFiles:
    """Why a model cannot be started from the files on disk, found by :func:`check_model_files`.

    ``code`` is ``"model_not_downloaded"`` (a hub repo not in the cache, or only part of it:
    pulling it helps, and ``repo_id`` says what to pull) or ``"model_files_missing"`` (a local
    directory that is not there or holds no model: only fixing the path helps).
    """

    code: str
    problem: str  # a clause: "it is not in the Hugging Face cache (/path)"
    repo_id: str | None = None  # a hub repo a pull would fetch
    path: Path | None = None  # the directory that was looked at

    @property
    def pullable(self) -> bool:
        return self.repo_id is not None


def check_model_files(
    path_or_repo: str, cache_dir: Path | str | None = None
) -> MissingFiles | None:
    """None if ``path_or_repo`` has what a worker loads, else what is missing. Disk only.

    A local directory (an absolute path, as the config resolves them, or an existing one) must
    hold a ``config.json`` and weight files; a hub repo id must have a snapshot in the cache
    with the same. A string that is neither (not a strict ``namespace/name`` id) is not
    judged: None, and the worker decides.
    """
    local = Path(path_or_repo).expanduser()
    if local.is_absolute() or local.is_dir():
        if not local.exists():
            gone = f"the local directory {local} does not exist"
            return MissingFiles("model_files_missing", gone, path=local)
        if not local.is_dir():
            return MissingFiles("model_files_missing", f"{local} is not a directory", path=local)
        problem = _model_dir_problem(local)
        if problem is None:
            return None
        return MissingFiles("model_files_missing", f"the directory {local} {problem}", path=local)
    try:
        repo_id = validate_repo_id(path_or_repo)
    except InvalidRepoId:
        return None
    cache = hub_cache_dir(cache_dir)
    storage = repo_storage_dir(repo_id, cache)
    snapshot = find_snapshot(storage) if storage.is_dir() else None
    if snapshot is None:
        return MissingFiles(
            "model_not_downloaded",
            f"it is not in the Hugging Face cache ({cache})",
            repo_id=repo_id,
            path=storage,
        )
    lacks = _model_dir_problem(snapshot.path)
    if lacks is None:
        return None
    return MissingFiles(
        "model_not_downloaded",
        f"it is only partly downloaded: its snapshot {snapshot.path} {lacks}",
        repo_id=repo_id,
        path=snapshot.path,
    )


def _model_dir_problem(root: Path) -> str | None:
    """What keeps ``root`` from being a loadable model directory, as a clause, or None."""
    if not (root / "config.json").is_file():
        return "has no config.json"
    if weight_files(root):
        return None
    try:  # some layouts (audio models) keep their weights one level down
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        subdirs = []
    if any(weight_files(d) for d in subdirs):
        return None
    return f"has no weight files ({', '.join(sorted(WEIGHT_SUFFIXES))})"


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a model directory (top level, following snapshot symlinks).

    Safetensors are what MLX loads, so when a repo ships them next to PyTorch ``.bin`` files
    (common for converted repos) only the safetensors count.
    """
    try:
        entries = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    except OSError:
        return []
    files = [p for p in entries if p.is_file()]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    if safetensors:
        return safetensors
    return [p for p in files if p.suffix != ".bin" or not p.name.startswith("training_args")]


def disk_usage(root: Path) -> int:
    """Bytes of the regular files under ``root``, each inode once, never following symlinks.

    This is what deleting ``root`` frees (hard links elsewhere aside), which is the number
    the delete functions report.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            try:
                st = os.lstat(Path(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def delete_cached(repo_id: str, *, cache_dir: Path | None = None) -> int:
    """Delete every cached revision of ``repo_id`` (and its partial downloads); return bytes freed.

    Uses huggingface_hub's ``scan_cache_dir().delete_revisions()`` (scoped to this one repo)
    so blobs shared through its shared-blob store are handled by the library that created
    them. Before anything is
    deleted the repo's folder is resolved and must sit directly inside the resolved cache
    directory, and must not itself be a symlink: a crafted id or a planted link can never make
    this remove anything else. The ``.locks`` folder of the repo goes too.
    """
    repo_id = validate_repo_id(repo_id)
    cache = hub_cache_dir(cache_dir)
    storage = repo_storage_dir(repo_id, cache)
    if not os.path.lexists(storage):
        raise NotCached(f"{repo_id} is not in the Hugging Face cache ({cache})")
    cache_real = cache.resolve()
    if storage.is_symlink() or storage.resolve().parent != cache_real:
        raise HubError(
            f"refusing to delete {storage}: it is a symlink or resolves outside the cache {cache}"
        )
    if not storage.is_dir():
        raise HubError(f"refusing to delete {storage}: not a directory")
    storage = cache_real / storage.name
    freed = disk_usage(storage)

    info = scan_cache_dir(cache_real)
    repo = next(
        (r for r in info.repos if r.repo_type == "model" and Path(r.repo_path) == storage), None
    )
    if repo is not None and repo.revisions:
        # delete_revisions() looks commit hashes up in every cached repo and takes the first
        # match, so with two repos sharing a commit (a mirror, a fork) it can pick the other
        # one. Scoped to this repo alone, and every path it would touch checked, it cannot.
        scoped = dataclasses.replace(info, repos=frozenset({repo}))
        strategy = scoped.delete_revisions(*(rev.commit_hash for rev in repo.revisions))
        targets = [*strategy.repos, *strategy.snapshots, *strategy.refs, *strategy.blobs]
        if not all(_is_within(Path(t), storage) for t in targets):
            raise HubError(
                f"refusing to delete {repo_id}: the cache scan pointed outside {storage}"
            )
        strategy.execute()
    # A repo with only partial downloads (or that the scanner calls corrupted) is not in the
    # scan; its folder still has to go. Re-check containment right before removing it.
    if storage.exists() and not storage.is_symlink() and storage.resolve().parent == cache_real:
        shutil.rmtree(storage)
    locks = cache_real / ".locks" / storage.name
    if locks.is_dir() and not locks.is_symlink() and _is_within(locks.resolve(), cache_real):
        shutil.rmtree(locks, ignore_errors=True)
    return freed


def delete_local(path: Path) -> int:
    """Delete a local model directory; return bytes freed. Refuses anything not clearly a model.

    Refused (``NotAModelDir``): a symlink (the link or its target would be ambiguous, and a
    link must never lead the deletion elsewhere), a non-directory, a directory inside the
    Hugging Face cache (use :func:`delete_cached`, or the cache's snapshots break), the home
    or root directory, and any directory without a ``config.json`` and at least one weight
    file at its top level. ``shutil.rmtree`` unlinks symlinks inside the tree without
    following them.
    """
    given = Path(path).expanduser()
    if given.is_symlink():
        raise NotAModelDir(
            f"refusing to delete {given}: it is a symlink; delete the link or its target instead"
        )
    if not given.exists():
        raise PathNotFound(f"{given} does not exist")
    if not given.is_dir():
        raise NotAModelDir(f"refusing to delete {given}: not a directory")
    real = given.resolve()
    if real in (Path(real.anchor), Path.home().resolve()):
        raise NotAModelDir(f"refusing to delete {real}: it is the root or home directory")
    cache_real = hub_cache_dir().resolve()
    if _is_within(real, cache_real) or _is_within(cache_real, real):
        raise NotAModelDir(
            f"refusing to delete {real}: it is inside (or contains) the Hugging Face cache "
            f"{cache_real}; delete cached repos by repo id instead"
        )
    if not (real / "config.json").is_file():
        raise NotAModelDir(
            f"refusing to delete {real}: it has no config.json, so it is not a model"
        )
    if not weight_files(real):
        raise NotAModelDir(
            f"refusing to delete {real}: it has no weight files "
            f"({', '.join(sorted(WEIGHT_SUFFIXES))}), so it is not a model"
        )
    freed = disk_usage(real)
    shutil.rmtree(real)
    return freed
