"""How much memory a model will take, from its directory alone, before any process starts.

Three parts, each visible on its own in ``models show`` and ``/api/models``:

- **weights**: the byte ranges the ``.safetensors`` headers declare (exact for what MLX will
  map, whatever the dtype or quantization), or the files' sizes for other formats;
- **KV cache**: what one sequence of the planning context needs at the model's dtype
  (``2 x layers x kv_heads x head_dim x tokens x bytes``), for text and vision models; the
  context is ``args.max_kv_size`` when set (mlx_lm then caps the cache), else the model's
  ``context_length:``, else the model's own ``max_position_embeddings`` capped at
  :data:`DEFAULT_PLANNING_CONTEXT` (a 128k-token window is a ceiling, not what a laptop user
  fills; Ollama plans with a few thousand tokens for the same reason);
- **overhead**: the worker process itself (interpreter, libraries, allocator slack), learned
  per model type from earlier loads (measured RSS minus weights) or, before any load, the
  figure in :data:`DEFAULT_OVERHEAD`, measured on Linux with torch kept out of the workers.

Nothing here loads a tensor or touches the network; a model that is not on disk yet (a hub
repo not pulled) has unknown weights and is planned by its overhead until it has been loaded
once and measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlx_serve.config import ModelType

if TYPE_CHECKING:
    from mlx_serve.config import ModelConfig

__all__ = [
    "DEFAULT_OVERHEAD",
    "DEFAULT_PLANNING_CONTEXT",
    "Estimate",
    "estimate_model",
    "kv_cache_bytes",
    "weights_bytes",
]

MiB = 2**20

#: Resident memory of a worker with a tiny model, by type: the interpreter plus the libraries
#: it imports (measured on Linux, 2 cores, torch hidden from the workers; see bench/).
#: Rounded up from bench/results/residency.md and model_types.md (text 89 MiB, vision 136,
#: embedding 127 beyond its weights, tts 218, stt 294; rerank 108 with the tiny BERT, given
#: the embedding worker's margin because real rerankers such as bge's carry a 250k-token
#: XLM-R tokenizer); the first load of each type replaces it.
DEFAULT_OVERHEAD: dict[ModelType, int] = {
    ModelType.TEXT: 128 * MiB,
    ModelType.VISION: 192 * MiB,
    ModelType.EMBEDDING: 160 * MiB,
    ModelType.TTS: 256 * MiB,
    ModelType.STT: 320 * MiB,
    ModelType.RERANK: 160 * MiB,
}

#: Tokens of KV cache planned for when neither the config nor the flags bound the context.
DEFAULT_PLANNING_CONTEXT = 8192

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class Estimate:
    """A model's expected footprint, part by part (bytes)."""

    weights_bytes: int | None  # None: the model's files are not on disk
    kv_cache_bytes: int
    overhead_bytes: int
    context_tokens: int | None  # the context the KV figure plans for

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes or 0) + self.kv_cache_bytes + self.overhead_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate_bytes": self.total_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "overhead_bytes": self.overhead_bytes,
            "context_tokens": self.context_tokens,
        }


def estimate_model(model: ModelConfig, overhead_bytes: int | None = None) -> Estimate:
    """The footprint of ``model``; ``overhead_bytes`` is the learned per-type overhead."""
    overhead = overhead_bytes if overhead_bytes is not None else DEFAULT_OVERHEAD[model.type]
    root = _model_dir(model.path)
    if root is None:
        return Estimate(None, 0, overhead, None)
    weights = weights_bytes(root)
    kv, context = 0, None
    if model.type in (ModelType.TEXT, ModelType.VISION):
        config = _read_json(root / "config.json")
        context = _planning_context(model, config)
        kv = kv_cache_bytes(config, context) if config else 0
    if model.distributed is not None and weights is not None:
        # Sharded: each rank holds about 1/n of the weights and of the KV cache (tensor
        # mode splits every layer, pipeline mode the layers); only the ranks on this machine
        # count against its memory, each with its own interpreter and libraries.
        local, ranks = model.distributed.local_ranks(), model.distributed.ranks
        weights, kv = weights * local // ranks, kv * local // ranks
        overhead *= local
    return Estimate(weights, kv, overhead, context)


def _model_dir(path: str) -> Path | None:
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    try:
        from mlx_serve.hub.cache import resolve_model_dir  # noqa: PLC0415 - hub repos only

        return resolve_model_dir(path).path
    except Exception:  # not a repo id, unreadable cache: the size is unknown, not an error
        return None


def weights_bytes(root: Path) -> int | None:
    """Bytes of tensor data the weight files declare; None when there are none."""
    from mlx_serve.hub.cache import weight_files  # noqa: PLC0415
    from mlx_serve.hub.info import safetensors_header  # noqa: PLC0415

    files = weight_files(root)
    if not files:
        return None
    total = 0
    for path in files:
        try:
            if path.suffix != ".safetensors":
                total += path.stat().st_size
                continue
            header = safetensors_header(path)
            total += sum(
                int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
                for name, entry in header.items()
                if name != "__metadata__"
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            try:  # a header this cannot read: the file's size is the next best figure
                total += path.stat().st_size
            except OSError:
                return None
    return total


def _planning_context(model: ModelConfig, config: dict[str, Any] | None) -> int:
    args = model.args if isinstance(model.args, dict) else {}
    for key in ("max_kv_size", "max-kv-size"):
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if model.context_length is not None:
        return model.context_length
    text = _text_config(config) if config else {}
    native = text.get("max_position_embeddings")
    if isinstance(native, int) and native > 0:
        return min(native, DEFAULT_PLANNING_CONTEXT)
    return DEFAULT_PLANNING_CONTEXT


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Vision models keep the language model's settings under ``text_config``."""
    nested = config.get("text_config")
    if isinstance(nested, dict):
        return {**config, **nested}
    return config


def kv_cache_bytes(config: dict[str, Any], tokens: int) -> int:
    """Keys and values for ``tokens`` tokens across every layer; 0 if the config lacks sizes."""
    text = _text_config(config)
    layers = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _int(text, "hidden_size", "n_embd", "d_model")
    heads = _int(text, "num_attention_heads", "n_head")
    if layers is None or heads is None:
        return 0
    kv_heads = _int(text, "num_key_value_heads") or heads
    head_dim = _int(text, "head_dim") or (hidden // heads if hidden else None)
    if head_dim is None:
        return 0
    dtype = text.get("torch_dtype") or text.get("dtype") or "float16"
    width = _DTYPE_BYTES.get(str(dtype), 2)
    return 2 * layers * kv_heads * head_dim * tokens * width


def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
