"""Tiny random-weight rerankers, built locally in about a second: a BERT cross-encoder and
a Qwen3-style generative reranker.

The rerank worker loads a model directory with mlx-vlm's ``load_reranker(dir)``, the loader
``mlx_vlm.server`` uses for its own ``/v1/rerank``: a ``config.json`` declaring a
``*ForSequenceClassification`` architecture with one label, Hugging Face-layout safetensors
(``bert.`` prefixes and all, as in a real checkpoint) and a tokenizer that encodes *pairs*
(``[CLS] query [SEP] document [SEP]`` with token type ids). :func:`build_rerank_model` writes
all of that for a two-layer BERT (hidden size 32) shaped like the real
``cross-encoder/ms-marco-MiniLM-L-6-v2``, with a WordPiece tokenizer trained on the few
paragraphs :mod:`mlx_serve.tiny_models.text` trains its tokenizer on. Nothing is downloaded.

Its weights are random, so its relevance scores mean nothing; they are deterministic,
spread over (0, 1) rather than all near 0.5, and a document's score does not depend on the
other documents of the request (padding is masked), which is what the tests check.

:func:`build_generative_rerank_model` writes the other kind mlx-vlm serves, shaped like
``Qwen/Qwen3-Reranker-0.6B``: a two-layer Qwen3 causal LM (Hugging Face names, tied
embeddings) whose byte-level BPE tokenizer has ChatML's special tokens, a chat template and
single tokens for ``yes`` and ``no`` (the score is ``sigmoid(logit(yes) - logit(no))`` after
the prompt). Builds are cached and atomic (see :mod:`mlx_serve.tiny_models._atomic`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlx_serve.tiny_models._atomic import build_once
from mlx_serve.tiny_models.text import _CORPUS, _name_seed, _write_json, train_bpe_tokenizer

__all__ = ["BUILD_VERSION", "build_generative_rerank_model", "build_rerank_model"]

# Bump whenever the files this module writes change, so cached builds are redone.
BUILD_VERSION = 1

_VOCAB_SIZE = 600  # an upper bound: the trainer stops when the corpus runs out of words
_HIDDEN_SIZE = 32
_NUM_LAYERS = 2
_NUM_HEADS = 4
_MAX_POSITION_EMBEDDINGS = 512
# The classifier's weights are scaled up so that random logits spread over a few units and
# the sigmoid scores over most of (0, 1).
_CLASSIFIER_SCALE = 40.0

_PAD, _UNK, _CLS, _SEP, _MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
_SPECIAL_TOKENS = (_PAD, _UNK, _CLS, _SEP, _MASK)

_README = """\
# tiny random-weight reranker

Built locally by `mlx_serve.tiny_models.rerank` (seed {seed}). It has never been trained:
its relevance scores are noise. It exists so that the tests and the demo can exercise the
real reranker loading and serving code quickly and offline.

- architecture: BertForSequenceClassification (one label), {layers} layers, hidden {hidden}
- tokenizer: lower-cased WordPiece trained on a few paragraphs, BERT's special tokens
- loads with `mlx_vlm.reranker_loader.load_reranker("<this dir>")`
"""


def build_rerank_model(dest: Path, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny random-weight BERT cross-encoder directory at ``dest``.

    Returns ``dest``. A finished build with the same parameters is reused as is;
    any other non-empty directory is refused with :class:`FileExistsError`.
    """
    params: dict[str, Any] = {"seed": seed}
    return build_once(
        Path(dest),
        {"builder_version": BUILD_VERSION, "kind": "rerank", "params": params},
        lambda out: _write_model_dir(out, seed=seed),
    )


def _write_model_dir(out: Path, *, seed: int) -> None:
    tokenizer = _train_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    # vocab.txt too, as BERT checkpoints ship it: the slow tokenizer's (and some tools') file.
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")

    config: dict[str, Any] = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": _HIDDEN_SIZE,
        "num_hidden_layers": _NUM_LAYERS,
        "num_attention_heads": _NUM_HEADS,
        "intermediate_size": 2 * _HIDDEN_SIZE,
        "hidden_act": "gelu",
        "max_position_embeddings": _MAX_POSITION_EMBEDDINGS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": tokenizer.token_to_id(_PAD),
        # One label: a relevance logit, as every cross-encoder reranker has.
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "torch_dtype": "float32",
        "mlx_serve_demo": "tiny random-weight reranker",
    }
    _write_json(out / "config.json", config)
    _write_weights(out / "model.safetensors", config, seed=seed)
    specials = {
        "cls_token": _CLS,
        "sep_token": _SEP,
        "pad_token": _PAD,
        "unk_token": _UNK,
        "mask_token": _MASK,
    }
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "model_max_length": _MAX_POSITION_EMBEDDINGS,
            "clean_up_tokenization_spaces": True,
            **specials,
        },
    )
    _write_json(out / "special_tokens_map.json", specials)
    (out / "README.md").write_text(
        _README.format(seed=seed, layers=_NUM_LAYERS, hidden=_HIDDEN_SIZE), encoding="utf-8"
    )


def _train_tokenizer() -> Any:
    """BERT's tokenizer pipeline (lower-casing, WordPiece, ``[CLS] a [SEP] b [SEP]``),
    trained on the built-in corpus."""
    from tokenizers import (  # noqa: PLC0415 -- optional extra
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.WordPiece(unk_token=_UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=_VOCAB_SIZE, special_tokens=list(_SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(_CORPUS.split("\n\n"), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id(_CLS), tokenizer.token_to_id(_SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{_CLS}:0 $A:0 {_SEP}:0",
        pair=f"{_CLS}:0 $A:0 {_SEP}:0 $B:1 {_SEP}:1",
        special_tokens=[(_CLS, cls_id), (_SEP, sep_id)],
    )
    return tokenizer


def _write_weights(path: Path, config: dict[str, Any], *, seed: int) -> None:
    """Save freshly initialised weights in the layout of a Hugging Face BERT checkpoint.

    The model is instantiated through mlx-vlm's own classes and the weights are loaded back
    (after mlx-vlm's own ``sanitize``) with ``strict=True``, so every name and shape is
    checked against the code that will serve them. Each tensor is drawn from its own key
    (seed + name): the process-wide MLX random state is untouched.
    """
    import importlib  # noqa: PLC0415

    import mlx.core as mx  # noqa: PLC0415 -- mlx-vlm is an optional extra
    from mlx.utils import tree_flatten  # noqa: PLC0415

    # Untyped in mlx-vlm (its configs' from_dict, its re-exports): used as a plain Any.
    bert: Any = importlib.import_module("mlx_vlm.models.bert")
    model = bert.SequenceClassificationModel(
        bert.ModelConfig.from_dict({**config, "num_labels": 1})
    )

    defaults: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    checkpoint: dict[str, Any] = {}
    for name, default in defaults:
        shape: tuple[int, ...] = tuple(default.shape)
        key = mx.random.key(_name_seed(seed, name))
        if "LayerNorm" in name:
            value = mx.ones(shape) if name.endswith(".weight") else mx.zeros(shape)
        elif name.endswith(".bias"):
            value = mx.zeros(shape)
        elif name.endswith("embeddings.weight"):
            value = mx.random.normal(shape, key=key)
        else:
            bound = 1.0 / math.sqrt(shape[-1])
            if name.startswith("classifier."):
                bound *= _CLASSIFIER_SCALE
            value = mx.random.uniform(-bound, bound, shape, key=key)
        # Hugging Face names: everything but the classification head lives under "bert.".
        hf_name = name if name.startswith("classifier.") else "bert." + name
        checkpoint[hf_name] = value.astype(mx.float32)
    model.load_weights(list(model.sanitize(checkpoint).items()), strict=True)
    mx.eval(model.parameters())
    mx.save_safetensors(str(path), checkpoint, {"format": "pt"})


# -- a generative reranker (Qwen3-Reranker's layout) ---------------------------------------

_QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
_QWEN_VOCAB_SIZE = 510  # the BPE tokens; "yes" and "no" are added after them
# ChatML, as Qwen3's template renders a conversation (roles and string contents only).
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_generative_rerank_model(dest: Path, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny random-weight Qwen3-style generative reranker at ``dest``.

    Loads with ``mlx_vlm.reranker_loader.load_reranker`` (as a Qwen3 causal LM) and is scored
    by mlx-vlm's yes/no reranking. Same caching rules as :func:`build_rerank_model`.
    """
    params: dict[str, Any] = {"seed": seed}
    return build_once(
        Path(dest),
        {"builder_version": BUILD_VERSION, "kind": "rerank-qwen3", "params": params},
        lambda out: _write_generative_dir(out, seed=seed),
    )


def _write_generative_dir(out: Path, *, seed: int) -> None:
    tokenizer = train_bpe_tokenizer(_QWEN_VOCAB_SIZE, _QWEN_SPECIAL_TOKENS)
    tokenizer.add_tokens(["yes", "no"])  # the two answers the score compares
    tokenizer.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": _NUM_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
        "pad_token_id": tokenizer.token_to_id("<|endoftext|>"),
        "torch_dtype": "float32",
        "mlx_serve_demo": "tiny random-weight generative reranker",
    }
    _write_json(out / "config.json", config)
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "model_max_length": config["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
            "chat_template": _QWEN_CHAT_TEMPLATE,
        },
    )

    import importlib  # noqa: PLC0415

    import mlx.core as mx  # noqa: PLC0415 -- mlx-vlm is an optional extra
    from mlx.utils import tree_flatten  # noqa: PLC0415

    qwen3: Any = importlib.import_module("mlx_vlm.models.qwen3")
    model = qwen3.Model(qwen3.ModelConfig.from_dict(config))
    defaults: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    checkpoint: dict[str, Any] = {}
    for name, default in defaults:
        shape: tuple[int, ...] = tuple(default.shape)
        if "norm" in name:
            value = mx.ones(shape)
        else:
            key = mx.random.key(_name_seed(seed, name))
            value = mx.random.normal(shape, scale=1.0 / math.sqrt(shape[-1]), key=key)
        # Hugging Face names ("model.layers.0...."), as a real Qwen3 checkpoint has them.
        checkpoint[name.removeprefix("language_model.")] = value.astype(mx.float32)
    model.load_weights(list(model.sanitize(dict(checkpoint)).items()), strict=True)
    mx.eval(model.parameters())
    mx.save_safetensors(str(out / "model.safetensors"), checkpoint, {"format": "pt"})
    (out / "README.md").write_text(
        "# tiny random-weight generative reranker\n\nBuilt locally by "
        f"`mlx_serve.tiny_models.rerank` (seed {seed}); Qwen3 layout, random weights: its "
        "scores are noise.\n",
        encoding="utf-8",
    )
