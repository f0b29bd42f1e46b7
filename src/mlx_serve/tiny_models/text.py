"""Tiny random-weight MLX text models, built locally in about a second.

The demo (``mlx-serve demo``) and the test fixtures need a real model directory
that the real loading code accepts -- ``mlx_lm.load(dir)`` and
``python -m mlx_lm server --model DIR`` -- without touching the network.
:func:`build_text_model` writes one: a two-layer Llama with random weights and
a byte-level BPE tokenizer trained on a few paragraphs embedded below. The
model answers every request with fast, mostly printable noise.

Builds are deterministic for a given set of parameters, cached (a second call
with the same parameters returns the existing directory untouched) and atomic:
files are written to a sibling temporary directory that is renamed into place
only once complete, so a crashed build never leaves a directory that looks
finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from mlx_serve.tiny_models._atomic import MARKER_FILE, build_once

__all__ = ["BUILD_VERSION", "MARKER_FILE", "build_text_model", "main"]

# Bump whenever the files this module writes change, so cached builds are redone.
BUILD_VERSION = 1
# Written last into a finished build; holds the parameters the build was made from.

_NUM_ATTENTION_HEADS = 4
_NUM_KEY_VALUE_HEADS = 2
_MAX_POSITION_EMBEDDINGS = 2048
_RMS_NORM_EPS = 1e-5
_ROPE_THETA = 10000.0

_PAD = "<pad>"
_BOS = "<s>"
_EOS = "</s>"
_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
_SPECIAL_TOKENS = (_PAD, _BOS, _EOS, *_ROLE_TOKENS)
_BYTE_ALPHABET_SIZE = 256
# Output-head scales: logits of ordinary tokens get a standard deviation of
# about _HEAD_SCALE, which keeps sampled noise varied but mostly readable;
# rows of tokens the noise should avoid are shrunk by _QUIET_ROW_SCALE.
_HEAD_SCALE = 2.0
_QUIET_ROW_SCALE = 0.05

# Renders system/user/assistant turns as ``<|role|>\ncontent</s>\n``. Content
# may be a string, None (assistant turns that only call tools) or a list of
# OpenAI-style parts, of which the text parts are kept.
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set content = message['content'] %}"
    "{% elif message['content'] is none %}{% set content = '' %}"
    "{% else %}{% set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') %}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + content + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Training text for the tokenizer. Any English prose works; it only has to be
# long enough to yield a few hundred merges so the vocabulary fills up.
_CORPUS = """\
The morning train was late again, so the small station filled with people who
held paper cups of coffee and looked at the clock above the platform. A child
asked her father why the trains could not simply run on time, and he said that
the world is a large machine with many moving parts, and every part is a little
bit tired in the morning. She thought about that for a while and then decided
that the trains were probably just sleepy.

In the kitchen, the recipe called for two cups of flour, one egg, a spoon of
sugar and a pinch of salt. Mix the dry things first, then add the milk slowly
while you stir, because a smooth batter makes a light pancake. Heat the pan
until a drop of water dances on it, pour a small circle of batter, and wait for
the bubbles before you turn it over. Serve them warm with butter, honey or fresh
fruit from the market.

A local server answers questions from programs running on the same computer.
It listens on a port, reads each request, loads the model the request names,
and writes the answer back, one token at a time when the client asks for a
stream. When nobody has asked for a model in a long time, the server can unload
it to give the memory back to the system. Good software explains what it is
doing, reports errors clearly, and never loses the work of its users.

The river turned east below the hills, where the old mill still stood. Every
spring the water rose over the stones and the birds came back from the south.
Farmers planted their fields, teachers opened the windows of the school, and
the evenings grew longer and warmer. People walked along the bank after dinner,
talking about the weather, the harvest, their families and the news of the day.

Numbers are useful too: one, two, three, four, five, six, seven, eight, nine,
ten. In 2024 the library had 12,500 books, 340 maps and 58 old letters. Please
write clearly, check your answer twice, and ask a question if something is not
obvious. Thank you for reading this far; the rest of the story is up to you.
"""

_README = """\
# {label}

This directory holds a **random-weight** demo model built locally by
`mlx_serve.tiny_models` (seed {seed}). It has never been trained: whatever it
generates is noise. It exists so that the demo and the tests can exercise the
real loading and serving code quickly and without any download.

- architecture: Llama, {num_layers} layers, hidden size {hidden_size}, vocabulary {vocab_size}
- tokenizer: byte-level BPE trained on a few paragraphs of English
- loads with `mlx_lm.load("<this dir>")` and `python -m mlx_lm server --model <this dir>`
"""


def build_text_model(
    dest: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    label: str = "tiny random-weight demo model",
) -> Path:
    """Build (or reuse) a tiny random-weight Llama model directory at ``dest``.

    Returns ``dest``. If ``dest`` already holds a finished build made with the
    same parameters it is returned as is; a finished build made with other
    parameters is replaced. Any other existing non-empty directory is left
    alone and :class:`FileExistsError` is raised, so a wrong path can never wipe
    unrelated files.
    """
    _validate(hidden_size=hidden_size, num_layers=num_layers, vocab_size=vocab_size)
    dest = Path(dest)
    params: dict[str, Any] = {
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vocab_size": vocab_size,
        "label": label,
    }
    return build_once(
        dest,
        {"builder_version": BUILD_VERSION, "params": params},
        lambda out: _write_model_dir(out, params),
    )


def _validate(*, hidden_size: int, num_layers: int, vocab_size: int) -> None:
    if hidden_size <= 0 or hidden_size % (2 * _NUM_ATTENTION_HEADS) != 0:
        raise ValueError(
            f"hidden_size must be a positive multiple of {2 * _NUM_ATTENTION_HEADS}, "
            f"got {hidden_size}"
        )
    if num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    minimum = _BYTE_ALPHABET_SIZE + len(_SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum}, got {vocab_size}")


def _write_model_dir(out: Path, params: dict[str, Any]) -> None:
    vocab_size: int = params["vocab_size"]
    tokenizer = _train_tokenizer(vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    token_ids = {token: tokenizer.token_to_id(token) for token in _SPECIAL_TOKENS}

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": params["hidden_size"],
        "intermediate_size": 2 * params["hidden_size"],
        "num_hidden_layers": params["num_layers"],
        "num_attention_heads": _NUM_ATTENTION_HEADS,
        "num_key_value_heads": _NUM_KEY_VALUE_HEADS,
        "rms_norm_eps": _RMS_NORM_EPS,
        "vocab_size": vocab_size,
        "rope_theta": _ROPE_THETA,
        "tie_word_embeddings": False,
        "max_position_embeddings": _MAX_POSITION_EMBEDDINGS,
        "bos_token_id": token_ids[_BOS],
        "eos_token_id": token_ids[_EOS],
        "pad_token_id": token_ids[_PAD],
        "torch_dtype": "float32",
        "mlx_serve_demo": params["label"],
    }
    _write_json(out / "config.json", config)
    _write_weights(
        out / "model.safetensors", config, seed=params["seed"], quiet_ids=_quiet_ids(tokenizer)
    )

    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": _BOS,
            "eos_token": _EOS,
            "pad_token": _PAD,
            "model_max_length": _MAX_POSITION_EMBEDDINGS,
            "clean_up_tokenization_spaces": False,
            "chat_template": _CHAT_TEMPLATE,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": _BOS,
            "eos_token": _EOS,
            "pad_token": _PAD,
            "additional_special_tokens": list(_ROLE_TOKENS),
        },
    )
    (out / "README.md").write_text(
        _README.format(
            label=params["label"],
            seed=params["seed"],
            num_layers=params["num_layers"],
            hidden_size=params["hidden_size"],
            vocab_size=vocab_size,
        ),
        encoding="utf-8",
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _train_tokenizer(vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer with exactly ``vocab_size`` tokens."""
    return train_bpe_tokenizer(vocab_size, _SPECIAL_TOKENS)


def train_bpe_tokenizer(vocab_size: int, special_tokens: tuple[str, ...]) -> Any:
    """A byte-level BPE tokenizer trained on the built-in corpus, with exactly ``vocab_size``
    tokens and ``special_tokens`` first (shared by every tiny model builder)."""
    from tokenizers import (  # noqa: PLC0415 -- optional extra, see _write_weights
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.split("\n\n"), trainer=trainer)

    # The model may emit any id below vocab_size, so every id must decode. If
    # the corpus ran out of merges first, fill up with reserved special tokens.
    missing = vocab_size - tokenizer.get_vocab_size(with_added_tokens=True)
    if missing > 0:
        tokenizer.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    return tokenizer


def _quiet_ids(tokenizer: Any) -> list[int]:
    """Ids the noise should avoid: special tokens other than EOS, and tokens
    that do not decode to printable text on their own (control characters and
    the lone UTF-8 continuation bytes that render as U+FFFD)."""
    quiet = []
    for token_id in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        token = tokenizer.id_to_token(token_id)
        if token == _EOS:
            continue
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        printable = text.replace("\n", "").replace("\t", "").isprintable()
        if (
            token in _SPECIAL_TOKENS
            or token.startswith("<|reserved_")
            or "\ufffd" in text
            or not printable
        ):
            quiet.append(token_id)
    return quiet


def _write_weights(path: Path, config: dict[str, Any], *, seed: int, quiet_ids: list[int]) -> None:
    """Save freshly initialised ``mlx_lm`` Llama weights, deterministic in ``seed``.

    Every parameter is drawn from its own key derived from ``seed`` and its
    name, with the same distributions MLX's layers use by default, so the
    process-wide MLX random state is neither read nor reseeded.

    The output head is untied from the input embedding: with tied weights a
    random model mostly predicts the token it was just fed, and repeats it
    forever. Its rows for ``quiet_ids`` are shrunk, so that the noise is mostly
    readable text fragments rather than control bytes and U+FFFD.
    """
    # Imported here: mlx-lm is an optional extra and pulls in transformers,
    # which costs most of a second that plain ``import mlx_serve`` should not.
    import mlx.core as mx  # noqa: PLC0415
    from mlx.utils import tree_flatten  # noqa: PLC0415
    from mlx_lm.models.llama import Model, ModelArgs  # noqa: PLC0415

    model = Model(ModelArgs.from_dict(config))  # type: ignore[no-untyped-call]
    defaults: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    weights: list[tuple[str, Any]] = []
    for name, default in defaults:
        shape: tuple[int, ...] = tuple(default.shape)
        key = mx.random.key(_name_seed(seed, name))
        if "norm" in name:
            value = mx.ones(shape)
        elif name.endswith("embed_tokens.weight"):
            value = mx.random.normal(shape, scale=1.0 / math.sqrt(shape[-1]), key=key)
        elif name == "lm_head.weight":
            value = mx.random.normal(shape, scale=_HEAD_SCALE / math.sqrt(shape[-1]), key=key)
            row_scale = mx.ones((shape[0], 1))
            row_scale[mx.array(quiet_ids)] = _QUIET_ROW_SCALE
            value = value * row_scale
        else:
            bound = 1.0 / math.sqrt(shape[-1])
            value = mx.random.uniform(-bound, bound, shape, key=key)
        weights.append((name, value.astype(mx.float32)))
    # Loading through the model checks that every name and shape matches.
    model.load_weights(weights, strict=True)
    mx.eval(model.parameters())
    mx.save_safetensors(str(path), dict(weights), {"format": "mlx"})


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def main() -> None:
    """``python -m mlx_serve.tiny_models DEST [--seed N]``: build one model and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m mlx_serve.tiny_models",
        description="Build a tiny random-weight MLX text model (noise generator) for demos/tests.",
    )
    parser.add_argument("dest", type=Path, help="directory to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--label", default="tiny random-weight demo model")
    args = parser.parse_args()
    try:
        path = build_text_model(
            args.dest,
            seed=args.seed,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            vocab_size=args.vocab_size,
            label=args.label,
        )
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(path)


if __name__ == "__main__":
    main()
