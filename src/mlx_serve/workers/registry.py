"""Which driver starts which model type."""

from __future__ import annotations

from mlx_serve.config import ModelConfig, ModelType
from mlx_serve.workers.base import LaunchContext, WorkerDriver
from mlx_serve.workers.model_server_driver import ModelServerDriver
from mlx_serve.workers.process import LaunchSpec
from mlx_serve.workers.text import TextDriver
from mlx_serve.workers.vision import VisionDriver


class UnavailableDriver(TextDriver):
    """Stands in for a model type this installation cannot run yet.

    The model stays listed and routable (so a request gets a clear 503 naming the reason, and
    a wrong-endpoint request still gets its 400), but starting it fails at once.
    """

    def __init__(self, model_type: ModelType, reason: str) -> None:
        self.model_type = model_type
        self.reason = reason

    def launch_spec(self, ctx: LaunchContext) -> LaunchSpec:
        raise OSError(self.reason)

    def upstream_model(self, model: ModelConfig) -> str:
        return model.path


def default_drivers() -> dict[ModelType, WorkerDriver]:
    """The drivers of every model type, real where this installation supports it."""
    drivers: dict[ModelType, WorkerDriver] = {
        ModelType.TEXT: TextDriver(),
        ModelType.VISION: VisionDriver(),
        # torch is imported through transformers but never used by the embedding, tts and
        # rerank workers (mlx-whisper does use it, so the stt worker keeps it).
        ModelType.EMBEDDING: ModelServerDriver(
            "mlx_serve.workers.embedding_server", without=("torch",)
        ),
        ModelType.TTS: ModelServerDriver("mlx_serve.workers.tts_server", without=("torch",)),
        ModelType.STT: ModelServerDriver("mlx_serve.workers.stt_server"),
        ModelType.RERANK: ModelServerDriver("mlx_serve.workers.rerank_server", without=("torch",)),
    }
    for model_type in ModelType:
        drivers.setdefault(
            model_type,
            UnavailableDriver(model_type, f"{model_type.value} models are not supported yet"),
        )
    return drivers
