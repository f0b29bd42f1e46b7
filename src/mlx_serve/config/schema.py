"""The models.yaml schema as pydantic models.

The schema is strict (unknown keys are errors) because a misspelt option silently falling
back to its default is the most confusing failure a hand-edited config can have.
File-related concerns (line numbers, the legacy format) live in :mod:`.loader`; this module
only knows about already-parsed Python data, so the models can also be built in code.

Validators that need to know where the file lives (to resolve relative model paths) read
``base_dir`` from the pydantic validation context and fall back to the working directory.
"""

from __future__ import annotations

import os
import unicodedata
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .distributed import DistributedConfig
from .durations import Duration, OptionalDuration
from .sizes import ByteSize, MemoryBudget

__all__ = [
    "DEFAULT_PORT",
    "ArgValue",
    "Config",
    "ModelConfig",
    "ModelType",
    "ServerConfig",
    "validate_model_name",
]

DEFAULT_PORT = 8095
"""Port of the OpenAI-compatible endpoint when the config does not say otherwise."""

NAME_CONFLICT_ERROR = "name_conflict"
"""pydantic error type raised for duplicate model names/aliases; the loader maps its
``ctx["conflicts"]`` entries (``(loc, message)`` pairs) back to individual lines."""


class ModelType(StrEnum):
    """What a model does, which decides the worker backend and the API routes it serves."""

    TEXT = "text"
    VISION = "vision"
    EMBEDDING = "embedding"
    TTS = "tts"
    STT = "stt"
    RERANK = "rerank"


# Spellings used by mlx-serve 0.3.0 and by the upstream libraries; accepted everywhere so a
# config copied from older docs keeps working.
_TYPE_SYNONYMS: dict[str, ModelType] = {
    "lm": ModelType.TEXT,
    "llm": ModelType.TEXT,
    "vlm": ModelType.VISION,
    "embeddings": ModelType.EMBEDDING,
    "embed": ModelType.EMBEDDING,
    "whisper": ModelType.STT,
    "reranker": ModelType.RERANK,
}


def _normalize_type(value: object) -> object:
    if isinstance(value, str):
        lowered = value.strip().lower()
        return _TYPE_SYNONYMS.get(lowered, lowered)
    return value


def validate_model_name(value: str) -> str:
    """Check a model name or alias: clients send it verbatim in the ``model`` field.

    Slashes, colons and dots are fine (``mlx-community/Foo``, ``llama3:8b``); whitespace,
    control characters and the empty string are not, since they cannot be typed reliably
    in a request and usually indicate a YAML mistake.
    """
    if not value:
        raise ValueError("model name must not be empty")
    for char in value:
        if char.isspace() or unicodedata.category(char).startswith("C"):
            raise ValueError(
                f"model name {value!r} must not contain whitespace or control characters"
            )
    return value


ModelName = Annotated[str, Strict(), AfterValidator(validate_model_name)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
ArgValue = str | int | float | bool | None
"""A value in the mapping form of ``args``: ``true`` is a bare flag, ``false``/``null`` omit it."""


def _aliases_before(value: object) -> object:
    # "aliases: qwen" is an obvious intent; don't make the user write a one-element list.
    if isinstance(value, str):
        return [value]
    if value is None:
        return []
    return value


def _none_to_empty_dict(value: object) -> object:
    # A section whose entries are all commented out ("models:" with nothing under it) is
    # null in YAML; it means "nothing here", not a type error.
    return {} if value is None else value


def _args_before(value: object) -> object:
    """Validate ``args`` up front so errors name the offending flag.

    Letting pydantic validate the union directly would report one error per union member
    (dict, list, str, int, ...) for a single mistake.
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"args keys must be non-empty flag names, got {key!r}")
            if item is not None and not isinstance(item, str | int | float | bool):
                raise ValueError(
                    f"args.{key} must be a string, number, boolean or null, "
                    f"got {type(item).__name__}"
                )
        return value
    if isinstance(value, list):
        out: list[str] = []
        for index, item in enumerate(value):
            # Numbers in a raw argument list ("--max-tokens", 100) are meant as text.
            if isinstance(item, int | float) and not isinstance(item, bool):
                out.append(str(item))
            elif isinstance(item, str):
                out.append(item)
            else:
                raise ValueError(
                    f"args[{index}] must be a string or number, got {type(item).__name__}"
                )
        return out
    raise ValueError(
        "args must be a mapping of flag names to values or a list of command-line arguments"
    )


def _prewarm_before(value: object) -> object:
    # "prewarm: text" is an obvious intent; type synonyms work here as in "type:".
    if value is None:
        return False
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        kinds = [_normalize_type(item) for item in value]
        known = {t.value for t in ModelType}
        for item in kinds:
            if item not in known:
                raise ValueError(
                    f"unknown model type {item!r} in prewarm; use true, false or a list of "
                    + ", ".join(sorted(known))
                )
        return kinds
    if not isinstance(value, bool):
        raise ValueError("prewarm must be true, false or a list of model types")
    return value


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, dict):
        base = context.get("base_dir")
        if isinstance(base, Path):
            return base
    return Path.cwd()


def _looks_local(path: str, base_dir: Path) -> bool:
    if path in (".", "..") or path.startswith(("/", "~", "./", "../")):
        return True
    return (base_dir / path).exists()


class ServerConfig(BaseModel):
    """Server-wide settings (the ``server:`` section)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    """Interface to listen on; ``0.0.0.0`` exposes the server to the network."""
    port: Annotated[int, Strict(), Field(ge=1, le=65535)] = DEFAULT_PORT
    idle_timeout: Duration = 600.0
    """Seconds a model may sit idle before it is unloaded; negative keeps it loaded."""
    max_loaded_models: PositiveInt | None = None
    """Most models resident at once. Unset: 1 without a memory budget, no cap with one."""
    memory_budget: MemoryBudget = None
    """Bytes (``24GiB``), a share of physical memory (``75%``) or ``auto``: models stay
    resident together while their footprints fit. ``None``: one at a time (or the count cap)."""
    startup_timeout: Annotated[Duration, Field(gt=0)] = 120.0
    """How long a worker may take to load its model and become ready."""
    stop_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    """Grace period for a worker to exit before it is killed."""
    liveness_interval: Annotated[Duration, Field(ge=0)] = 30.0
    """How often an idle loaded model is asked for a one-token answer (0 = never); one that
    misses two in a row is killed and restarted on the next request."""
    liveness_timeout: Annotated[Duration, Field(gt=0)] = 15.0
    """How long a liveness probe may take before it counts as missed."""
    queue_limit: PositiveInt = 256
    """Maximum number of requests waiting for a model; beyond it clients get 503."""
    max_concurrency: PositiveInt = 8
    """Concurrent upstream connections per worker; the rest queue in the router."""
    fair_wait: Annotated[Duration, Field(ge=0)] = 10.0
    """How long the resident model may keep admitting new requests while another waits."""
    fair_requests: PositiveInt = 32
    """How many new requests the resident model may admit while another model waits."""
    data_dir: Path | None = None
    """Where logs and state live; ``None`` lets the caller pick its default."""
    api_key: str | None = None
    """If set, clients must send ``Authorization: Bearer <api_key>``."""
    max_json_body: ByteSize = 20 * 2**20
    """Largest JSON request body (chat, embeddings, speech, management); more is a 413."""
    max_upload_body: ByteSize = 64 * 2**20
    """Largest multipart upload (audio for transcription); more is a 413."""
    allowed_origins: Annotated[list[str], BeforeValidator(_aliases_before)] = Field(
        default_factory=list
    )
    """Web origins (``https://app.example``) whose pages may call this server, besides its
    own and localhost ones; ``"*"`` allows every origin."""
    allowed_hosts: Annotated[list[str], BeforeValidator(_aliases_before)] = Field(
        default_factory=list
    )
    """Host names this server answers to, besides IPs, localhost and this machine's name;
    ``"*"`` turns the DNS-rebinding check off."""
    allow_remote_images: bool = False
    """Let vision requests name http(s) image URLs, which the worker then fetches."""
    watch_config: bool = True
    """Reload this file when it changes (SIGHUP and ``mlx-serve reload`` work either way)."""
    prewarm: Annotated[bool | list[ModelType], BeforeValidator(_prewarm_before)] = False
    """Keep one spare worker process per kind with its imports done, so a swap skips them:
    ``true`` for every kind the configured models use, or a list of types."""
    memory_guard: bool = True
    """Refuse to load a model whose weights on disk exceed the memory available."""
    auto_pull: bool = False
    """Download a hub model that is not in the Hugging Face cache when a request first needs
    it (the request waits). False: such a request fails at once, saying how to pull it."""
    memory_warning: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Emit a ``memory.low`` event when available memory falls below this share of total."""

    def prewarm_kinds(self, used: set[ModelType]) -> set[ModelType]:
        """The model types to keep a spare of, given the types the configured models use."""
        if self.prewarm is True:
            return set(used)
        if self.prewarm is False:
            return set()
        return set(self.prewarm)

    @property
    def loaded_cap(self) -> int | None:
        """The count cap in force: ``max_loaded_models``, else 1 unless a budget is set."""
        if self.max_loaded_models is not None:
            return self.max_loaded_models
        return None if self.memory_budget is not None else 1

    @field_validator("data_dir", mode="after")
    @classmethod
    def _resolve_data_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Relative to the config file, like model paths, so the config is relocatable.
        if value is None:
            return None
        expanded = value.expanduser()
        if not expanded.is_absolute():
            expanded = Path(os.path.normpath(_base_dir(info) / expanded))
        return expanded

    @field_validator("api_key", mode="after")
    @classmethod
    def _empty_api_key_is_none(cls, value: str | None) -> str | None:
        # "api_key: ''" would otherwise demand an empty bearer token, which no client sends.
        if value is not None and not value.strip():
            return None
        return value


class ModelConfig(BaseModel):
    """One entry under ``models:``; the mapping key is the model's canonical name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: Annotated[ModelType, BeforeValidator(_normalize_type)] = ModelType.TEXT
    path: str
    """Hugging Face repo id (kept as is) or an absolute local directory (resolved)."""
    idle_timeout: OptionalDuration = None
    """Per-model idle timeout; ``None`` inherits ``server.idle_timeout``."""
    max_kv_cache_size: PositiveInt | None = None
    """KV cache size in tokens (older entries are evicted); ``None`` = unbounded."""
    context_length: PositiveInt | None = None
    """Maximum prompt + completion tokens accepted; ``None`` = the model's own limit."""
    aliases: Annotated[list[ModelName], BeforeValidator(_aliases_before)] = Field(
        default_factory=list
    )
    preload: bool = False
    """Load at server start instead of on first request."""
    pin: bool = False
    """Never evict this model to make room for another (its own idle timeout still applies)."""
    defaults: Annotated[dict[str, Any], BeforeValidator(_none_to_empty_dict)] = Field(
        default_factory=dict
    )
    """Request parameters merged into every request; values in the request win."""
    args: Annotated[dict[str, ArgValue] | list[str], BeforeValidator(_args_before)] = Field(
        default_factory=dict
    )
    """Extra worker flags, as ``{flag: value}`` or a raw argument list."""
    max_concurrency: PositiveInt | None = None
    """Per-model override of ``server.max_concurrency``."""
    distributed: DistributedConfig | None = None
    """Shard this (text) model over several ranks with MLX's distributed runtime."""

    @model_validator(mode="after")
    def _distributed_is_text(self) -> ModelConfig:
        if self.distributed is not None and self.type is not ModelType.TEXT:
            raise ValueError(
                f"only text models can be distributed (mlx_lm server runs sharded); this one "
                f"is {self.type.value}"
            )
        return self

    @field_validator("path", mode="after")
    @classmethod
    def _resolve_path(cls, value: str, info: ValidationInfo) -> str:
        """Resolve local directories; keep Hugging Face repo ids untouched.

        A path that looks local but does not exist is an error now rather than a confusing
        "repository not found" from the hub when the model is first requested.
        """
        path = value.strip()
        if not path:
            raise ValueError("path must not be empty")
        base_dir = _base_dir(info)
        if not _looks_local(path, base_dir):
            return path
        local = Path(path).expanduser()
        if not local.is_absolute():
            local = base_dir / local
        # normpath rather than resolve(): keep the user's symlinks in logs and status output.
        local = Path(os.path.normpath(local))
        if not local.exists():
            raise ValueError(f"local model directory does not exist: {local}")
        if not local.is_dir():
            raise ValueError(f"local model path is not a directory: {local}")
        return str(local)


class Config(BaseModel):
    """The whole models.yaml: server settings plus the models that may be served.

    ``source`` (the file it came from, if any) and ``notices`` (non-fatal remarks such as
    "legacy format was converted") are not part of the schema; the loader fills them in.
    """

    model_config = ConfigDict(extra="forbid")

    server: Annotated[ServerConfig, BeforeValidator(_none_to_empty_dict)] = Field(
        default_factory=ServerConfig
    )
    models: Annotated[dict[ModelName, ModelConfig], BeforeValidator(_none_to_empty_dict)] = Field(
        default_factory=dict
    )

    _source: Path | None = PrivateAttr(default=None)
    _notices: list[str] = PrivateAttr(default_factory=list)

    @property
    def source(self) -> Path | None:
        """The file this config was loaded from, or ``None`` if built from text or code."""
        return self._source

    @source.setter
    def source(self, value: Path | None) -> None:
        self._source = value

    @property
    def notices(self) -> list[str]:
        """Non-fatal remarks to show the user once (mutable, the loader appends to it)."""
        return self._notices

    @model_validator(mode="after")
    def _check_name_conflicts(self) -> Config:
        """Every name and alias must identify exactly one model.

        Raised as one custom error whose context carries each conflict's location, so the
        loader can report the line of every offending alias rather than of ``models:``.
        """
        owner: dict[str, str] = {}
        conflicts: list[tuple[tuple[str | int, ...], str]] = []
        for name in self.models:
            owner[name] = name
        for name, model in self.models.items():
            for index, alias in enumerate(model.aliases):
                existing = owner.get(alias)
                if existing is None:
                    owner[alias] = name
                elif existing != name:
                    what = "the name" if alias in self.models else "an alias"
                    conflicts.append(
                        (
                            ("models", name, "aliases", index),
                            f"alias {alias!r} is already {what} of model {existing!r}",
                        )
                    )
        if conflicts:
            raise PydanticCustomError(
                NAME_CONFLICT_ERROR,
                "{summary}",
                {
                    "summary": "; ".join(message for _, message in conflicts),
                    "conflicts": conflicts,
                },
            )
        return self

    def names_and_aliases(self) -> dict[str, str]:
        """Map every model name and alias to the canonical model name."""
        mapping: dict[str, str] = {name: name for name in self.models}
        for name, model in self.models.items():
            for alias in model.aliases:
                mapping.setdefault(alias, name)
        return mapping

    def resolve(self, name_or_alias: str) -> str | None:
        """Canonical model name for a name or alias as sent by a client, or ``None``."""
        if name_or_alias in self.models:
            return name_or_alias
        for name, model in self.models.items():
            if name_or_alias in model.aliases:
                return name
        return None
