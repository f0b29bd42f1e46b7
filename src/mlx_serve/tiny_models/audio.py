"""Tiny random-weight audio models (text-to-speech and speech-to-text), built locally in seconds.

The tts/stt workers and their tests need model directories that the libraries' own loaders
accept -- ``mlx_audio.tts.utils.load_model(dir)`` and ``mlx_whisper`` -- without any download.
Weights are random, but not *only* random: a handful of them are set by hand so that both
models behave like trained ones in the ways that matter for serving, which keeps every request
short and every answer well-formed:

- **tts** (:func:`build_tts_model`): mlx-audio's *Soprano* (a Qwen3 LM whose hidden states a
  Vocos decoder turns into 32 kHz audio). A real model ends an utterance by sampling its
  ``[STOP]`` token; a random one almost never does and would run to ``max_tokens`` (512 tokens,
  32 s of audio, ~15 s of CPU in the decoder). Here the one attention head averages a "text or
  audio token" flag over the context, and ``[STOP]`` wins as soon as the audio tokens outnumber
  the prompt's text tokens: the clip lasts about 64 ms per input character, like speech, and
  costs about 30 ms of CPU per 64 ms of audio. The decoder cannot be shrunk (Soprano fixes it
  at 8 layers x 512 from the directory name, see :func:`build_tts_model`), so it is what makes
  the directory 27 MB; it is stored in fp16 (the loader upcasts it to fp32).
- **stt** (:func:`build_stt_model`): a one-layer Whisper with the multilingual vocabulary (the
  tokenizer ships inside mlx-whisper, so it works offline). Its learned positional embeddings
  spell out a fixed sentence, :data:`STT_TEXT`, with confident logits. A purely random Whisper
  produces low-probability tokens, which makes ``transcribe`` retry at six temperatures, and
  hits an mlx-whisper timestamp-rule quirk that turns every logit into NaN; this one decodes
  once, in ~15 steps, and says the same thing about any audio (in English).

Builds are deterministic in ``seed``, cached and atomic (:func:`~._atomic.build_once`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mlx_serve.tiny_models._atomic import build_once

__all__ = [
    "STT_BUILD_VERSION",
    "STT_TEXT",
    "TTS_BUILD_VERSION",
    "build_stt_model",
    "build_tts_model",
]

# Bump whenever the files a builder writes change, so cached builds are redone.
TTS_BUILD_VERSION = 1
STT_BUILD_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Text to speech: Soprano
# ---------------------------------------------------------------------------------------------

_TTS_SPECIALS = ("[STOP]", "[TEXT]", "[START]")  # Soprano's prompt is [STOP][TEXT]...[START]
_TTS_HIDDEN = 32
_TTS_HEAD_DIM = 16
_TTS_AUDIO_TOKENS = 64  # ids the LM samples as "audio"; they need no tokenizer entry
_TTS_SAMPLE_RATE = 32000
# Residual-stream dimensions with a fixed meaning (the others carry random features):
_D_ONE = 0  # always 1: lets lm_head rows carry a constant offset
_D_KIND = 1  # +1 for prompt (text) tokens, -1 for generated (audio) tokens
_D_BALANCE = 2  # attention writes here the average of _D_KIND over the context
_BALANCE_GAIN = 8.0
_STOP_GAIN = 2000.0  # [STOP] logit = -gain * balance: huge once audio outnumbers text
_TEXT_ROW_OFFSET = -30.0  # the LM never samples text tokens
_AUDIO_ROW_SCALE = 0.3  # spread of the audio-token logits: varied but not wild sampling


def build_tts_model(dest: Path, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny Soprano text-to-speech model directory at ``dest``.

    Loads with ``mlx_audio.tts.utils.load_model(dest)``; 32 kHz mono output. Soprano sizes its
    decoder from the directory *name* (768 wide if it contains ``soprano-1.1``, else 512), so
    the weights are written for ``dest`` as given: do not rename the built directory to or
    from a name containing ``soprano-1.1``.
    """
    dest = Path(dest)
    params = {"seed": seed, "decoder_variant": _soprano_variant(dest)}
    return build_once(
        dest,
        {"builder": "tts", "builder_version": TTS_BUILD_VERSION, "params": params},
        lambda out: _write_tts_dir(out, dest, seed),
    )


def _soprano_variant(path: Path) -> str:
    # Mirrors mlx_audio.tts.models.soprano.ModelConfig.__post_init__.
    return "1.1" if "soprano-1.1" in str(path).lower() else "1.0"


def _write_tts_dir(out: Path, final_path: Path, seed: int) -> None:
    tokenizer = _tts_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    text_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    config = {
        "model_type": "soprano",
        "architectures": ["SopranoForCausalLM"],
        "hidden_size": _TTS_HIDDEN,
        "num_hidden_layers": 1,
        "intermediate_size": _TTS_HIDDEN,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": _TTS_HEAD_DIM,
        "rms_norm_eps": 1e-6,
        "vocab_size": text_vocab + _TTS_AUDIO_TOKENS,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        # Soprano reads hidden states through lm_head, which only exists when untied.
        "tie_word_embeddings": False,
        "sample_rate": _TTS_SAMPLE_RATE,
        # No "decoder_config": Soprano would keep it as a dict and fail; it uses its defaults.
    }
    _write_json(out / "config.json", config)
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": "[STOP]",  # Soprano's stop token is the pad token
            "model_max_length": 8192,
            "clean_up_tokenization_spaces": False,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {"pad_token": "[STOP]", "additional_special_tokens": list(_TTS_SPECIALS)},
    )
    _write_tts_weights(out / "model.safetensors", config, final_path, seed, text_vocab)
    (out / "README.md").write_text(
        "# tiny random-weight Soprano (text to speech)\n\n"
        f"Built by `mlx_serve.tiny_models.audio` (seed {seed}); never trained, it speaks "
        "noise, about 64 ms per input character. Loads with "
        "`mlx_audio.tts.utils.load_model(<this dir>)`.\n",
        encoding="utf-8",
    )


def _tts_tokenizer() -> Any:
    """Byte-level tokenizer: the three Soprano specials (ids 0-2) and the 256 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415 -- extra

    vocab = {token: i for i, token in enumerate(_TTS_SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(_TTS_SPECIALS))
    return tokenizer


def _write_tts_weights(
    path: Path, config: dict[str, Any], final_path: Path, seed: int, text_vocab: int
) -> None:
    """Soprano weights: a hand-wired one-layer LM (see the module docstring) + random decoder.

    The model is instantiated for the *final* path (its decoder size depends on it), every
    parameter is replaced, and loading them back with ``strict=True`` checks names and shapes.
    """
    # Imported here: mlx-audio is the optional ``tts`` extra and pulls in transformers.
    import mlx.core as mx  # noqa: PLC0415
    from mlx.utils import tree_flatten  # noqa: PLC0415
    from mlx_audio.tts.models.soprano import Model, ModelConfig  # noqa: PLC0415

    model = Model(ModelConfig.from_dict({**config, "model_path": str(final_path)}))
    defaults: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    shapes = {name: tuple(value.shape) for name, value in defaults}
    lm = _tts_lm_weights(shapes, config, seed, text_vocab)
    weights: dict[str, Any] = {}
    for name, default in defaults:
        if name in lm:
            weights[name] = mx.array(lm[name])
        elif name.startswith("decoder."):
            value = _decoder_value(name, np.array(default), seed)
            weights[name] = mx.array(value).astype(mx.float16)
        else:
            raise RuntimeError(f"tiny Soprano builder does not know parameter {name}")
    model.load_weights(list(weights.items()), strict=True)
    mx.save_safetensors(str(path), weights, {"format": "mlx"})


def _tts_lm_weights(
    shapes: dict[str, tuple[int, ...]], config: dict[str, Any], seed: int, text_vocab: int
) -> dict[str, np.ndarray]:
    hidden = config["hidden_size"]
    vocab = config["vocab_size"]
    rng = np.random.default_rng([seed, 1])
    lm: dict[str, np.ndarray] = {}

    def put(name: str, value: np.ndarray) -> None:
        full = "language_model." + name
        if shapes[full] != value.shape:
            raise RuntimeError(f"{full}: built {value.shape}, model wants {shapes[full]}")
        lm[full] = value.astype(np.float32)

    embed = rng.normal(0.0, 1.0, (vocab, hidden))
    embed[:, _D_ONE] = 1.0
    embed[:, _D_KIND] = np.where(np.arange(vocab) < text_vocab, 1.0, -1.0)
    embed[:, _D_BALANCE] = 0.0
    put("embed_tokens.weight", embed)

    layer = "layers.0."
    head_dim = config["head_dim"]
    # A zero query makes every attention score equal: the head averages over the context.
    put(layer + "self_attn.q_proj.weight", np.zeros((head_dim, hidden)))
    put(layer + "self_attn.k_proj.weight", rng.normal(0.0, 0.1, (head_dim, hidden)))
    value = np.zeros((head_dim, hidden))
    value[0, _D_KIND] = 1.0
    put(layer + "self_attn.v_proj.weight", value)
    out = np.zeros((hidden, head_dim))
    out[_D_BALANCE, 0] = _BALANCE_GAIN
    put(layer + "self_attn.o_proj.weight", out)
    put(layer + "self_attn.q_norm.weight", np.ones(head_dim))
    put(layer + "self_attn.k_norm.weight", np.ones(head_dim))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        put(layer + norm + ".weight", np.ones(hidden))
    inter = config["intermediate_size"]
    put(layer + "mlp.gate_proj.weight", np.zeros((inter, hidden)))
    put(layer + "mlp.up_proj.weight", np.zeros((inter, hidden)))
    put(layer + "mlp.down_proj.weight", np.zeros((hidden, inter)))
    put("norm.weight", np.ones(hidden))

    head = np.zeros((vocab, hidden))
    head[0, _D_BALANCE] = -_STOP_GAIN  # row 0 is [STOP]
    head[1:text_vocab, _D_ONE] = _TEXT_ROW_OFFSET
    features = slice(_D_BALANCE + 1, hidden)
    head[text_vocab:, features] = rng.normal(
        0.0, _AUDIO_ROW_SCALE, (vocab - text_vocab, hidden - _D_BALANCE - 1)
    )
    put("lm_head.weight", head)
    return lm


def _decoder_value(name: str, default: np.ndarray, seed: int) -> np.ndarray:
    """Seeded values with MLX's default distributions: norms and layer scales as built,
    weights and biases uniform in +-1/sqrt(fan_in)."""
    if "norm" in name or name.endswith("gamma"):
        return default
    rng = np.random.default_rng([seed, _name_seed(name)])
    fan_in = math.prod(default.shape[1:]) if default.ndim > 1 else default.shape[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return rng.uniform(-bound, bound, default.shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Speech to text: Whisper
# ---------------------------------------------------------------------------------------------

#: What the tiny Whisper "hears" in any audio (greedy decoding, any language setting).
STT_TEXT = "This is noise from a tiny random whisper model."

_STT_STATE = 32
_STT_TEXT_CTX = 64
_STT_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,  # fixed by the 30 s mel window
    "n_audio_state": _STT_STATE,
    "n_audio_head": 2,
    "n_audio_layer": 1,
    "n_vocab": 51865,  # the multilingual vocabulary, whose tokenizer ships with mlx-whisper
    "n_text_ctx": _STT_TEXT_CTX,
    "n_text_state": _STT_STATE,
    "n_text_head": 2,
    "n_text_layer": 1,
}
_TARGET_NORM = 4.0  # token-embedding norm of the tokens the positions spell out
_POSITION_NORM = 40.0  # >> _TARGET_NORM, so the position, not the input token, decides
_OTHER_TOKEN_SCALE = 0.05


def build_stt_model(dest: Path, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny Whisper speech-to-text model directory at ``dest`` (~3.4 MB).

    Loads with ``mlx_whisper.load_models.load_model(dest)`` and transcribes (offline) any audio
    as :data:`STT_TEXT`, language ``en``, in one segment spanning the audio.
    """
    dest = Path(dest)
    params = {"seed": seed, "text": STT_TEXT}
    return build_once(
        dest,
        {"builder": "stt", "builder_version": STT_BUILD_VERSION, "params": params},
        lambda out: _write_stt_dir(out, seed),
    )


def _write_stt_dir(out: Path, seed: int) -> None:
    # Imported here: mlx-whisper is the optional ``stt`` extra (and imports torch and numba).
    import mlx.core as mx  # noqa: PLC0415
    from mlx.utils import tree_flatten  # noqa: PLC0415
    from mlx_whisper.tokenizer import get_tokenizer  # noqa: PLC0415
    from mlx_whisper.whisper import ModelDimensions, Whisper  # noqa: PLC0415

    _write_json(out / "config.json", {**_STT_DIMS, "model_type": "whisper"})
    model = Whisper(ModelDimensions(**_STT_DIMS), mx.float16)
    defaults: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    tokenizer = get_tokenizer(True, num_languages=99, language="en", task="transcribe")
    # ``alignment_heads`` (integer indices, for word timestamps) is an attribute the module
    # lists among its parameters; the model computes it itself, so it is not saved.
    weights: dict[str, np.ndarray] = {
        name: _whisper_default(name, tuple(value.shape), seed)
        for name, value in defaults
        if name != "alignment_heads"
    }
    embedding, positions = _spelled_sequence(tokenizer, seed)
    weights["decoder.token_embedding.weight"] = embedding
    weights["decoder.positional_embedding"] = positions
    # mlx-whisper loads with model.update(), which checks nothing: check names/shapes here.
    model.load_weights(
        [(k, mx.array(v)) for k, v in weights.items()]
        + [("alignment_heads", model.alignment_heads)],
        strict=True,
    )
    # The weights must be fp16: mlx-whisper runs the model in the dtype of the weights.
    mx.save_safetensors(
        str(out / "weights.safetensors"),
        {k: mx.array(v).astype(mx.float16) for k, v in weights.items()},
    )
    (out / "README.md").write_text(
        "# tiny random-weight Whisper (speech to text)\n\n"
        f"Built by `mlx_serve.tiny_models.audio` (seed {seed}); never trained, it transcribes "
        f'any audio as "{STT_TEXT}". Loads with `mlx_whisper.load_models.load_model(<this '
        "dir>)`.\n",
        encoding="utf-8",
    )


def _whisper_default(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    module, _, kind = name.rpartition(".")
    module = module.rpartition(".")[2]
    if module == "ln" or module.endswith("_ln") or module.startswith("ln_"):  # LayerNorms
        return (np.ones if kind == "weight" else np.zeros)(shape, np.float32)
    rng = np.random.default_rng([seed, _name_seed(name)])
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def _spelled_sequence(tokenizer: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token and positional embeddings under which greedy decoding yields :data:`STT_TEXT`.

    The output projection is the token embedding (tied), so giving each wanted token an
    orthonormal embedding row of norm ``_TARGET_NORM`` and each position a much larger multiple
    of the row it must predict makes that token win by a wide logit margin, whatever the
    audio and the input token. The decoder's prefix is ``<|startoftranscript|> <|lang|>
    <|task|>``, so position 0 predicts the language (``en``, for language detection), position
    2 the first timestamp ``<|0.00|>``, and positions 3... the text, then end-of-text.
    """
    vocab, state, ctx = _STT_DIMS["n_vocab"], _STT_STATE, _STT_TEXT_CTX
    rng = np.random.default_rng([seed, 2])
    embedding = rng.normal(0.0, _OTHER_TOKEN_SCALE, (vocab, state))
    text = tokenizer.encode(" " + STT_TEXT)
    language = tokenizer.to_language_token("en")
    targets_by_position = {0: language, 2: tokenizer.timestamp_begin}
    for i, token in enumerate(text):
        targets_by_position[3 + i] = token
    targets = sorted({*targets_by_position.values(), tokenizer.eot})
    # Orthonormal, zero-mean directions (LayerNorm removes the mean of the residual stream).
    basis = rng.normal(size=(state, len(targets)))
    basis -= basis.mean(axis=0, keepdims=True)
    directions, _ = np.linalg.qr(basis)
    direction = {token: directions[:, i] for i, token in enumerate(targets)}
    for token in targets:
        embedding[token] = _TARGET_NORM * direction[token]
    positions = np.zeros((ctx, state))
    for position in range(ctx):
        target = targets_by_position.get(position, tokenizer.eot)
        positions[position] = _POSITION_NORM * direction[target]
    return embedding.astype(np.float32), positions.astype(np.float32)


# ---------------------------------------------------------------------------------------------


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
