"""Reading models.yaml: YAML with line numbers, the 0.3.0 legacy format, config discovery.

PyYAML's ``safe_load`` throws away source positions and silently keeps the last of two
duplicate keys, so errors could only say "somewhere in the file". Instead the document is
composed into a node tree first; a walk over the nodes records, for every key path, the
line it was written on (and rejects duplicate keys), and only then is it converted to plain
Python data and validated with pydantic. Each pydantic error ``loc`` is mapped back through
that index to a line, and to the key as the user spelled it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .errors import ConfigError, ConfigIssue
from .schema import NAME_CONFLICT_ERROR, Config, ModelConfig, ServerConfig
from .yaml_syntax import explain

__all__ = [
    "CONFIG_ENV_VAR",
    "example_config_text",
    "find_config_path",
    "load_config",
    "parse_config_text",
]

CONFIG_ENV_VAR = "MLX_SERVE_CONFIG"
"""Environment variable naming the config file when ``--config`` is not given."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_EXAMPLE_RESOURCE = "example_models.yaml"

# --- legacy (mlx-serve 0.3.0) format ------------------------------------------------------

# Top-level 0.3.0 keys and the server field each one becomes.
_LEGACY_SERVER_KEYS: dict[str, str] = {
    "manager_port": "port",
    "inactivity_timeout_seconds": "idle_timeout",
    "startup_timeout_seconds": "startup_timeout",
    "host": "host",
}
# 0.3.0 ran every model on one fixed port; workers now get free ports picked for them.
_LEGACY_IGNORED_KEYS = frozenset({"mlx_port"})
# Keys whose presence alone identifies a 0.3.0 file ("host" is ambiguous, so not here).
_LEGACY_MARKERS = frozenset(
    {"manager_port", "mlx_port", "inactivity_timeout_seconds", "startup_timeout_seconds"}
)
# Renamed keys inside a 0.3.0 model entry.
_LEGACY_MODEL_KEYS: dict[str, str] = {"hf_path": "path", "extra_body": "defaults"}

# Hints for keys that are wrong in the current format but mean something recognisable.
_KEY_HINTS: dict[str, str] = {
    "hf_path": "did you mean path?",
    "extra_body": "did you mean defaults?",
    "name": "a model's name is its key under models:",
}


@dataclass(frozen=True, slots=True)
class _Loc:
    """Where a value was written: the key path as the user spelled it, and its line."""

    display: str
    line: int


_Path = tuple[Any, ...]
_Index = dict[_Path, _Loc]


# --- public API ---------------------------------------------------------------------------


def parse_config_text(text: str, source: Path | None = None) -> Config:
    """Parse and validate config text; ``source`` is used for messages and relative paths.

    Relative local model paths are resolved against ``source``'s directory, or against
    the working directory when there is no source file. Raises :class:`ConfigError`.
    """
    base_dir = source.parent.absolute() if source is not None else Path.cwd()
    data, index = _load_yaml(text, source)
    notices: list[str] = []
    if _is_legacy(data):
        data, index, notices = _convert_legacy(data, index, source)
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError.from_issues(_validation_issues(exc, index), source) from None
    config.source = source
    config.notices.extend(notices)
    return config


def load_config(path: Path) -> Config:
    """Read and validate a config file. Raises :class:`ConfigError` (also if it is missing)."""
    path = Path(path).expanduser().absolute()
    try:
        # utf-8-sig: editors on macOS sometimes save a BOM, which is not a YAML error.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML file", path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 text ({exc.reason})", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path) from None
    return parse_config_text(text, path)


def find_config_path(explicit: Path | None = None) -> Path:
    """Pick the config file: ``--config``, else ``$MLX_SERVE_CONFIG``, else the default.

    The default is ``~/.mlx-serve/models.yaml``. The path is returned even if it does not
    exist, so the caller can decide between an error and an empty config.
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    from_env = os.environ.get(CONFIG_ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".mlx-serve" / "models.yaml"


def example_config_text() -> str:
    """The fully commented example models.yaml shipped with the package.

    It is the same text as the repository's top-level ``models.yaml`` (a unit test keeps
    them identical), so ``mlx-serve init`` writes exactly what the README shows.
    """
    resource = resources.files("mlx_serve.config").joinpath(_EXAMPLE_RESOURCE)
    return resource.read_text(encoding="utf-8")


# --- YAML with positions ------------------------------------------------------------------


def _load_yaml(text: str, source: Path | None) -> tuple[dict[str, Any], _Index]:
    """Parse YAML into plain data plus a key-path -> position index."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # empty file or only comments
            return {}, {(): _Loc("", 1)}
        indexer = _Indexer(loader)
        indexer.index[()] = _Loc("", node.start_mark.line + 1)
        indexer.walk(node, (), "")
        if indexer.issues:
            raise ConfigError.from_issues(indexer.issues, source)
        index = indexer.index
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, source, text) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source) from None
    finally:
        loader.dispose()

    if data is None:  # a document that is just "~" or "null"
        return {}, index
    if not isinstance(data, dict):
        raise ConfigError(
            "the top level must be a mapping with 'server:' and 'models:' sections, "
            f"not a {_yaml_kind(data)}",
            source,
            index[()].line,
        )
    return data, index


class _Indexer:
    """Walks a composed YAML node tree recording where every key and list item was written."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.index: _Index = {}
        self.issues: list[ConfigIssue] = []
        self._active: set[int] = set()

    def walk(self, node: yaml.Node, path: _Path, display: str) -> None:
        """Record the line of every key and list item below ``node``; flag duplicate keys."""
        if id(node) in self._active:  # a recursive alias (&a [*a]); pydantic rejects the data
            return
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                self._walk_mapping(node, path, display)
            elif isinstance(node, yaml.SequenceNode):
                for position, item in enumerate(node.value):
                    child = (*path, position)
                    child_display = f"{display}[{position}]"
                    self.index[child] = _Loc(child_display, item.start_mark.line + 1)
                    self.walk(item, child, child_display)
        finally:
            self._active.discard(id(node))

    def _walk_mapping(self, node: yaml.MappingNode, path: _Path, display: str) -> None:
        first_seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                # "<<: *defaults": keys that override merged ones are not duplicates, and
                # merged values fall back to the line of the enclosing key.
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.issues.append(ConfigIssue("keys must be plain values", line, display or None))
                continue
            key = self.loader.construct_object(key_node)
            child_display = f"{display}.{key}" if display else str(key)
            if key in first_seen:
                message = f"duplicate key {key!r} (first defined on line {first_seen[key]})"
                self.issues.append(ConfigIssue(message, line, child_display))
                continue
            first_seen[key] = line
            child = (*path, key)
            self.index[child] = _Loc(child_display, line)
            self.walk(value_node, child, child_display)


def _yaml_error(exc: yaml.MarkedYAMLError, source: Path | None, text: str) -> ConfigError:
    """A syntax error in plain words at the line of the mistake (see :mod:`.yaml_syntax`);
    PyYAML's own message is the error's ``detail``."""
    problem = explain(exc, text)
    return ConfigError(
        f"invalid YAML: {problem.message}", source, problem.line, detail=problem.detail
    )


def _yaml_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


# --- legacy conversion --------------------------------------------------------------------


def _is_legacy(data: dict[str, Any]) -> bool:
    return isinstance(data.get("models"), list) or any(key in data for key in _LEGACY_MARKERS)


def _copy_subtree(src: _Index, old: _Path, new: _Path, dst: _Index) -> None:
    """Re-key the positions under ``old`` to ``new`` (displays keep the user's spelling)."""
    depth = len(old)
    for path, loc in src.items():
        if path[:depth] == old:
            dst[new + path[depth:]] = loc


def _convert_legacy(
    data: dict[str, Any], index: _Index, source: Path | None
) -> tuple[dict[str, Any], _Index, list[str]]:
    """Map a 0.3.0 file onto the current schema, keeping positions of the original keys.

    Keys that are not part of either format are passed through unchanged so pydantic
    still reports them as unknown, at their own line.
    """
    root = index[()]
    new_index: _Index = {(): root}
    converted: dict[str, Any] = {}
    issues: list[ConfigIssue] = []
    notices = [
        f"{source.name if source is not None else 'models.yaml'} uses the mlx-serve 0.3.0 "
        "format; it was mapped onto the current schema "
        "(run `mlx-serve init --print` to see the new format)"
    ]

    raw_server = data.get("server")
    server: dict[str, Any] | Any = dict(raw_server) if isinstance(raw_server, dict) else raw_server
    if "server" in data:
        _copy_subtree(index, ("server",), ("server",), new_index)

    for key, value in data.items():
        if key in _LEGACY_SERVER_KEYS:
            field = _LEGACY_SERVER_KEYS[key]
            loc = index[(key,)]
            if server is None:
                server = {}
            if not isinstance(server, dict):
                continue  # pydantic reports the malformed server section itself
            if field in server:
                issues.append(
                    ConfigIssue(
                        f"conflicts with server.{field}; keep only one of them",
                        loc.line,
                        loc.display,
                    )
                )
                continue
            server[field] = value
            new_index[("server", field)] = loc
            new_index.setdefault(("server",), loc)
        elif key in _LEGACY_IGNORED_KEYS:
            notices.append(f"{key} is ignored: worker ports are now chosen automatically")
        elif key == "models" and isinstance(value, list):
            converted["models"] = _convert_legacy_models(value, index, new_index, issues)
            new_index[("models",)] = index[("models",)]
        elif key != "server":
            converted[key] = value
            _copy_subtree(index, (key,), (key,), new_index)

    if server is not None:
        converted["server"] = server
    if issues:
        raise ConfigError.from_issues(issues, source)
    return converted, new_index, notices


def _convert_legacy_models(
    entries: list[Any], index: _Index, new_index: _Index, issues: list[ConfigIssue]
) -> dict[Any, Any]:
    """Turn the 0.3.0 list of ``{name, hf_path, ...}`` entries into the ``name: {...}`` map."""
    models: dict[Any, Any] = {}
    for position, entry in enumerate(entries):
        entry_loc = index[("models", position)]
        if not isinstance(entry, dict):
            issues.append(
                ConfigIssue(
                    "each model must be a mapping with at least name and hf_path",
                    entry_loc.line,
                    entry_loc.display,
                )
            )
            continue
        if "name" not in entry:
            issues.append(ConfigIssue("missing name", entry_loc.line, entry_loc.display))
            continue
        name = entry["name"]
        name_loc = index.get(("models", position, "name"), entry_loc)
        if not isinstance(name, str):
            issues.append(ConfigIssue("name must be a string", name_loc.line, name_loc.display))
            continue
        if name in models:
            first = new_index[("models", name)]
            issues.append(
                ConfigIssue(
                    f"duplicate model name {name!r} (first defined on line {first.line})",
                    name_loc.line,
                    name_loc.display,
                )
            )
            continue
        new_index[("models", name)] = entry_loc
        model: dict[Any, Any] = {}
        written_as: dict[Any, Any] = {}  # target key -> the key the user wrote
        for key, value in entry.items():
            if key == "name":
                continue
            target = _LEGACY_MODEL_KEYS.get(key, key) if isinstance(key, str) else key
            key_loc = index.get(("models", position, key), entry_loc)
            if target in model:
                issues.append(
                    ConfigIssue(
                        f"conflicts with {written_as[target]}; keep only one of them",
                        key_loc.line,
                        key_loc.display,
                    )
                )
                continue
            model[target] = value
            written_as[target] = key
            _copy_subtree(index, ("models", position, key), ("models", name, target), new_index)
        if "path" not in model:
            issues.append(ConfigIssue("missing hf_path", entry_loc.line, entry_loc.display))
        models[name] = model
    return models


# --- pydantic errors -> issues ------------------------------------------------------------


def _validation_issues(exc: ValidationError, index: _Index) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for error in exc.errors(include_url=False):
        if error["type"] == NAME_CONFLICT_ERROR:
            for loc, message in error.get("ctx", {}).get("conflicts", []):
                issues.append(_issue_at(tuple(loc), message, index, missing=False))
            continue
        issues.append(
            _issue_at(tuple(error["loc"]), _error_message(error), index, error["type"] == "missing")
        )
    return issues


def _issue_at(loc: _Path, message: str, index: _Index, missing: bool) -> ConfigIssue:
    """Locate a pydantic ``loc`` in the YAML index.

    Elements that are not data keys (union member tags, ``[key]`` for dict-key errors)
    are skipped. A missing field has no line of its own, so it gets the line of the
    mapping that lacks it and its name is appended to the key.
    """
    path: _Path = ()
    for element in loc:
        candidate = (*path, element)
        if candidate in index:
            path = candidate
    found = index.get(path) or index[()]
    display = found.display
    if missing and loc and path != loc:
        display = f"{display}.{loc[-1]}" if display else str(loc[-1])
    return ConfigIssue(message, found.line, display or None)


def _error_message(error: ErrorDetails) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return "required key is missing"
    ctx = error.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    message = error["msg"]
    if message.startswith("Input should be"):
        message = "must be" + message[len("Input should be") :]
    value = error.get("input")
    if value is None or isinstance(value, str | int | float | bool):
        message += f" (got {value!r})"
    return message


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1]) if loc else ""
    if key in _KEY_HINTS and len(loc) == 3 and loc[0] == "models":
        return f"unknown key ({_KEY_HINTS[key]})"
    if len(loc) == 1 and key in ServerConfig.model_fields:
        return f"unknown key (did you mean server.{key}?)"
    model: type[BaseModel] | None = None
    if len(loc) == 1:
        model = Config
    elif len(loc) == 2 and loc[0] == "server":
        model = ServerConfig
    elif len(loc) == 3 and loc[0] == "models":
        model = ModelConfig
    if model is not None:
        close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
        if close:
            return f"unknown key (did you mean {close[0]}?)"
    return "unknown key"
