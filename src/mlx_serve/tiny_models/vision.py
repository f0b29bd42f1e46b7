"""A tiny random-weight Qwen2-VL model, built locally in about a second.

The vision worker runs ``mlx_vlm.server``, which loads a model directory with
``mlx_vlm.load(dir)``: a ``config.json`` whose ``model_type`` picks the
architecture, MLX-layout safetensors, a tokenizer, a chat template and an image
preprocessor config. :func:`build_vision_model` writes all of that for a
two-layer Qwen2-VL (hidden size 64, a two-block vision tower) so the tests and
the demo exercise the real loading, image preprocessing and generation code
without any download. Its weights are random, so it describes every image with
noise.

Qwen2-VL is used because it works on CPU from a tiny config; LLaVA-style models
do not load this way with mlx-vlm 0.7 (their processor passes ``padding=`` to
the CLIP image processor). Builds are cached and atomic (see
:mod:`mlx_serve.tiny_models._atomic`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlx_serve.tiny_models._atomic import build_once
from mlx_serve.tiny_models.text import _name_seed, _write_json, train_bpe_tokenizer

__all__ = ["BUILD_VERSION", "build_vision_model"]

# Bump whenever the files this module writes change, so cached builds are redone.
BUILD_VERSION = 1

_VOCAB_SIZE = 512
_HIDDEN_SIZE = 64
_NUM_LAYERS = 2
_NUM_HEADS = 4  # head_dim 16: the mrope sections below must sum to head_dim / 2
_NUM_KV_HEADS = 2
_MROPE_SECTION = [2, 3, 3]
_MAX_POSITION_EMBEDDINGS = 4096
_VISION = {
    "model_type": "qwen2_vl",
    "depth": 2,
    "embed_dim": 32,
    "hidden_size": _HIDDEN_SIZE,  # the merger projects into the text model's width
    "num_heads": 2,
    "mlp_ratio": 2,  # an int: mlx_vlm sizes the MLP with int(embed_dim * mlp_ratio)
    "in_channels": 3,
    "patch_size": 14,
    "spatial_patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# Images are resized to between 4 and 16 merged 28x28 tiles: a few dozen vision tokens.
_MIN_PIXELS = 56 * 56
_MAX_PIXELS = 112 * 112

_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"
_ENDOFTEXT = "<|endoftext|>"
_VISION_START = "<|vision_start|>"
_VISION_END = "<|vision_end|>"
_IMAGE_PAD = "<|image_pad|>"
_VIDEO_PAD = "<|video_pad|>"
_SPECIAL_TOKENS = (
    _ENDOFTEXT,
    _IM_START,
    _IM_END,
    _VISION_START,
    _VISION_END,
    _IMAGE_PAD,
    _VIDEO_PAD,
)
_HEAD_SCALE = 2.0
_QUIET_ROW_SCALE = 0.05

# Qwen2-VL-Instruct's own chat template: images and videos become
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands to one pad
# token per merged patch.
_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_README = """\
# tiny random-weight vision model

Built locally by `mlx_serve.tiny_models.vision` (seed {seed}). It has never been
trained: whatever it says about an image is noise. It exists so that the tests and
the demo can exercise the real vision loading and serving code quickly and offline.

- architecture: Qwen2-VL, {layers} text layers (hidden {hidden}), {depth}-block vision tower
- tokenizer: byte-level BPE trained on a few paragraphs, with Qwen's special tokens
- loads with `mlx_vlm.load("<this dir>")` and `python -m mlx_vlm.server --model <this dir>`
"""


def build_vision_model(dest: Path, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny random-weight Qwen2-VL model directory at ``dest``.

    Returns ``dest``. A finished build with the same parameters is reused as is;
    any other non-empty directory is refused with :class:`FileExistsError`.
    """
    params: dict[str, Any] = {"seed": seed}
    return build_once(
        Path(dest),
        {"builder_version": BUILD_VERSION, "kind": "vision", "params": params},
        lambda out: _write_model_dir(out, seed=seed),
    )


def _write_model_dir(out: Path, *, seed: int) -> None:
    tokenizer = _train_tokenizer(_VOCAB_SIZE)
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in _SPECIAL_TOKENS}

    config: dict[str, Any] = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        # Text-model fields live at the top level, as in the released Qwen2-VL configs.
        "hidden_size": _HIDDEN_SIZE,
        "intermediate_size": 2 * _HIDDEN_SIZE,
        "num_hidden_layers": _NUM_LAYERS,
        "num_attention_heads": _NUM_HEADS,
        "num_key_value_heads": _NUM_KV_HEADS,
        "rms_norm_eps": 1e-6,
        "vocab_size": _VOCAB_SIZE,
        "max_position_embeddings": _MAX_POSITION_EMBEDDINGS,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": _MROPE_SECTION},
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": ids[_ENDOFTEXT],
        "eos_token_id": ids[_IM_END],
        "pad_token_id": ids[_ENDOFTEXT],
        "image_token_id": ids[_IMAGE_PAD],
        "video_token_id": ids[_VIDEO_PAD],
        "vision_start_token_id": ids[_VISION_START],
        "vision_end_token_id": ids[_VISION_END],
        "vision_config": dict(_VISION),
        "mlx_serve_demo": "tiny random-weight vision model",
    }
    _write_json(out / "config.json", config)
    _write_weights(out / "model.safetensors", config, seed=seed, quiet_ids=_quiet_ids(tokenizer))

    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": _IM_END,
            "pad_token": _ENDOFTEXT,
            "unk_token": None,
            "model_max_length": _MAX_POSITION_EMBEDDINGS,
            "clean_up_tokenization_spaces": False,
            "additional_special_tokens": list(_SPECIAL_TOKENS[1:]),
            "chat_template": _CHAT_TEMPLATE,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {
            "eos_token": _IM_END,
            "pad_token": _ENDOFTEXT,
            "additional_special_tokens": list(_SPECIAL_TOKENS[1:]),
        },
    )
    _write_json(out / "chat_template.json", {"chat_template": _CHAT_TEMPLATE})
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "patch_size": _VISION["patch_size"],
        "temporal_patch_size": _VISION["temporal_patch_size"],
        "merge_size": _VISION["spatial_merge_size"],
        "min_pixels": _MIN_PIXELS,
        "max_pixels": _MAX_PIXELS,
    }
    _write_json(out / "preprocessor_config.json", preprocessor)
    # Written so that the processor never looks for them on the Hugging Face hub.
    _write_json(out / "video_preprocessor_config.json", preprocessor)
    _write_json(out / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})
    (out / "README.md").write_text(
        _README.format(seed=seed, layers=_NUM_LAYERS, hidden=_HIDDEN_SIZE, depth=_VISION["depth"]),
        encoding="utf-8",
    )


def _train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with exactly ``vocab_size`` tokens, Qwen's specials first."""
    return train_bpe_tokenizer(vocab_size, tuple(_SPECIAL_TOKENS))


def _quiet_ids(tokenizer: Any) -> list[int]:
    """Ids the noise should avoid: specials other than <|im_end|> (the EOS), and tokens
    that do not decode to printable text on their own."""
    quiet = []
    for token_id in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        token = tokenizer.id_to_token(token_id)
        if token == _IM_END:
            continue
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        printable = text.replace("\n", "").isprintable()
        special = token in _SPECIAL_TOKENS or token.startswith("<|reserved_")
        if special or "\ufffd" in text or not printable:
            quiet.append(token_id)
    return quiet


def _write_weights(path: Path, config: dict[str, Any], *, seed: int, quiet_ids: list[int]) -> None:
    """Save freshly initialised MLX-layout Qwen2-VL weights, deterministic in ``seed``.

    The model is instantiated through mlx_vlm's own config classes and the weights are
    loaded back with ``strict=True``, so every name and shape is checked against the
    code that will serve them. Each tensor is drawn from its own key (seed + name), so
    the process-wide MLX random state is untouched. The output head is untied and its
    rows for ``quiet_ids`` shrunk, as in :mod:`mlx_serve.tiny_models.text`.
    """
    import importlib  # noqa: PLC0415

    import mlx.core as mx  # noqa: PLC0415 -- mlx-vlm is an optional extra
    from mlx.utils import tree_flatten  # noqa: PLC0415

    # Untyped in mlx-vlm (its configs' from_dict, its re-exports): used as a plain Any.
    qwen2_vl: Any = importlib.import_module("mlx_vlm.models.qwen2_vl")

    model_config = qwen2_vl.ModelConfig.from_dict(dict(config))
    model_config.text_config = qwen2_vl.TextConfig.from_dict(model_config.text_config)
    model_config.vision_config = qwen2_vl.VisionConfig.from_dict(config["vision_config"])
    model = qwen2_vl.Model(model_config)

    defaults: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    weights: list[tuple[str, Any]] = []
    for name, default in defaults:
        shape: tuple[int, ...] = tuple(default.shape)
        key = mx.random.key(_name_seed(seed, name))
        if "norm" in name or name.endswith("ln_q.weight"):
            value = mx.ones(shape)
        elif name.endswith(".bias"):
            value = mx.zeros(shape)
        elif name.endswith("embed_tokens.weight"):
            value = mx.random.normal(shape, scale=1.0 / math.sqrt(shape[-1]), key=key)
        elif name.endswith("lm_head.weight"):
            value = mx.random.normal(shape, scale=_HEAD_SCALE / math.sqrt(shape[-1]), key=key)
            row_scale = mx.ones((shape[0], 1))
            row_scale[mx.array(quiet_ids)] = _QUIET_ROW_SCALE
            value = value * row_scale
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            bound = 1.0 / math.sqrt(fan_in)
            value = mx.random.uniform(-bound, bound, shape, key=key)
        weights.append((name, value.astype(mx.float32)))
    model.load_weights(weights, strict=True)
    mx.eval(model.parameters())
    mx.save_safetensors(str(path), dict(weights), {"format": "mlx"})
