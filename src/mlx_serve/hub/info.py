"""What a model directory holds, read from disk only: ``show`` and ``estimated_size_bytes``.

Nothing here touches the network or loads a tensor. The parameter count comes from the JSON
headers of the ``.safetensors`` files (an 8-byte little-endian length, then that much JSON),
which is a few kilobytes per file even for a 70B model.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import get_cached_repo_tree
from huggingface_hub.errors import CachedRepoTreeNotFoundError

from .cache import ModelDir, resolve_model_dir, weight_files
from .errors import HubError

__all__ = ["estimated_size_bytes", "safetensors_header", "show"]

# Real headers are kilobytes to a few megabytes; anything bigger is not a safetensors file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_SKIP_DIRS = frozenset({".git", ".cache", "__pycache__"})
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def show(path_or_repo: str, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """Describe a local model directory or a cached hub repo, without network access.

    Returns ``source`` ("local"/"hub"), ``path``, ``repo_id`` and ``revision`` (hub only),
    ``cached``, ``complete`` (hub: every file of the snapshot's file list is present, from
    the listing huggingface_hub caches; None when unknown), ``files``, ``size_bytes``,
    ``architecture`` (config ``model_type``) and ``architectures``, ``quantization``,
    ``parameters`` and ``dtype`` (from safetensors headers, None if not derivable),
    ``has_tokenizer`` and ``has_chat_template``. A hub repo that is not cached gives
    ``cached: False`` and empty/None fields. Raises PathNotFound for a string that is neither
    an existing directory nor a valid repo id.
    """
    where = resolve_model_dir(path_or_repo, cache_dir)
    result: dict[str, Any] = {"source": where.source}
    if where.source == "hub":
        result["repo_id"] = where.repo_id
        result["revision"] = where.revision
    result["path"] = str(where.path) if where.path is not None else None
    result["cached"] = where.path is not None
    if where.path is None:
        result.update(
            complete=False, files=[], size_bytes=0, architecture=None, architectures=[],
            quantization=None, parameters=None, dtype=None, has_tokenizer=False,
            has_chat_template=False,
        )  # fmt: skip
        return result

    root = where.path
    files = _list_files(root)
    config = _read_json(root / "config.json")
    names = {f["name"] for f in files}
    if where.source == "hub":
        result["complete"] = _snapshot_complete(where, names)
    result["files"] = files
    result["size_bytes"] = sum(f["size"] for f in files)
    model_type = config.get("model_type") if config else None
    architectures = config.get("architectures") if config else None
    result["architecture"] = model_type if isinstance(model_type, str) else None
    result["architectures"] = (
        [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []
    )
    quant = _quantization(config)
    result["quantization"] = quant
    params, dtype = _parameters(root, config)
    result["parameters"] = params
    result["dtype"] = dtype
    result["has_tokenizer"] = any(name in names for name in _TOKENIZER_FILES)
    result["has_chat_template"] = _has_chat_template(root, names)
    return result


def estimated_size_bytes(path_or_repo: str, *, cache_dir: Path | None = None) -> int | None:
    """Bytes of weight files on disk: a lower bound on the memory the model needs to load.

    None when the model is not on disk (an uncached repo, a missing path) or has no weight
    files this recognises, so callers can tell "unknown" from "small".
    """
    try:
        where = resolve_model_dir(path_or_repo, cache_dir)
    except (HubError, OSError):
        return None
    if where.path is None:
        return None
    weights = weight_files(where.path)
    if not weights:
        return None
    total = 0
    for path in weights:
        try:
            total += path.stat().st_size
        except OSError:
            return None
    return total


def _list_files(root: Path) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            full = Path(dirpath) / name
            try:
                size = full.stat().st_size  # follows snapshot symlinks to their blobs
            except OSError:
                continue  # a dangling link is not a file the model has
            files.append({"name": full.relative_to(root).as_posix(), "size": size})
    files.sort(key=lambda f: str(f["name"]))
    return files


def _snapshot_complete(where: ModelDir, names: set[str]) -> bool | None:
    if where.repo_id is None or where.revision is None or where.storage is None:
        return None
    try:
        tree = get_cached_repo_tree(
            where.repo_id, revision=where.revision, cache_dir=where.storage.parent
        )
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return None
    return all(entry.path in names for entry in tree)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _quantization(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"bits", "group_size"}`` (plus ``mode``/``quant_method`` when set), else None.

    MLX conversions write ``quantization``; transformers-style repos ``quantization_config``.
    """
    if not config:
        return None
    for key in ("quantization", "quantization_config"):
        raw = config.get(key)
        if isinstance(raw, dict):
            quant: dict[str, Any] = {
                "bits": raw.get("bits") if isinstance(raw.get("bits"), int) else None,
                "group_size": (
                    raw.get("group_size") if isinstance(raw.get("group_size"), int) else None
                ),
            }
            for extra in ("mode", "quant_method"):
                if isinstance(raw.get(extra), str):
                    quant[extra] = raw[extra]
            return quant
    return None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (tensor name -> dtype, shape, offsets).

    Raises ValueError for anything that is not a well-formed safetensors header; reads only
    the header, never the tensor data.
    """
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path.name}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length <= 0 or length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path.name}: implausible header length {length}")
        raw = f.read(length)
    if len(raw) != length:
        raise ValueError(f"{path.name}: truncated header")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: header is not a JSON object")
    return header


def _parameters(root: Path, config: dict[str, Any] | None) -> tuple[int | None, str | None]:
    """Total parameters and the dominant dtype, from safetensors headers; (None, None) if unknown.

    MLX-quantized layers store ``weight`` packed into uint32 plus ``scales``/``biases``
    companions; their unpacked size is ``rows x scales_columns x group_size``, and the
    companions are quantization metadata, not parameters.
    """
    files = sorted(root.glob("*.safetensors"))
    if not files:
        return None, None
    tensors: dict[str, tuple[str, list[int]]] = {}
    try:
        for path in files:
            for name, entry in safetensors_header(path).items():
                if name == "__metadata__":
                    continue
                dtype, shape = entry["dtype"], entry["shape"]
                if not isinstance(dtype, str) or not all(isinstance(d, int) for d in shape):
                    raise ValueError(f"{path.name}: malformed entry {name!r}")
                tensors[name] = (dtype, list(shape))
    except (OSError, ValueError, KeyError, TypeError):
        return None, None

    quant = config.get("quantization") if config else None
    quant = quant if isinstance(quant, dict) else {}
    total = 0
    by_dtype: Counter[str] = Counter()
    for name, (dtype, shape) in tensors.items():
        prefix, _, leaf = name.rpartition(".")
        packed = tensors.get(f"{prefix}.weight")
        if leaf in ("scales", "biases") and packed is not None and packed[0] == "U32":
            continue  # quantization metadata of a packed weight, not parameters
        scales = tensors.get(f"{prefix}.scales")
        if leaf == "weight" and dtype == "U32" and scales is not None:
            numel = _unpacked_numel(prefix, shape, scales[1], quant)
            if numel is None:
                return None, None  # better unknown than wrong
            total += numel
            continue
        numel = math.prod(shape)
        total += numel
        by_dtype[dtype] += numel
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else None
    return total, dominant


def _unpacked_numel(
    prefix: str, packed_shape: list[int], scales_shape: list[int], quant: dict[str, Any]
) -> int | None:
    """Elements of a quantized weight before packing, from its group size (or its bits).

    mlx_lm lets a config override quantization per layer (``"model.layers.0.mlp": {...}``).
    """
    layer = quant.get(prefix)
    settings = layer if isinstance(layer, dict) else quant
    group = settings.get("group_size", quant.get("group_size"))
    if isinstance(group, int) and group > 0:
        return math.prod(scales_shape) * group
    bits = settings.get("bits", quant.get("bits"))
    if isinstance(bits, int) and bits > 0:
        return math.prod(packed_shape) * 32 // bits
    return None


def _has_chat_template(root: Path, names: set[str]) -> bool:
    if "chat_template.json" in names or "chat_template.jinja" in names:
        return True
    tok_config = _read_json(root / "tokenizer_config.json")
    template = tok_config.get("chat_template") if tok_config else None
    return bool(template) and isinstance(template, (str, list))
