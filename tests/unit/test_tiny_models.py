"""Tiny random-weight models: built fast, cached, atomic, and loadable by mlx_lm."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx_lm")
pytest.importorskip("tokenizers")

from mlx_serve.tiny_models import text as tiny_models
from mlx_serve.tiny_models.text import MARKER_FILE, build_text_model

EXPECTED_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
    MARKER_FILE,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> tuple[Any, Any]:
    import mlx_lm

    model, tokenizer, *_ = mlx_lm.load(str(model_dir))
    return model, tokenizer


def _mtimes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_build_writes_every_file(model_dir: Path) -> None:
    assert {p.name for p in model_dir.iterdir()} == EXPECTED_FILES
    assert "random-weight" in (model_dir / "README.md").read_text()


def test_config_is_a_tiny_llama(model_dir: Path) -> None:
    from mlx_lm.models.llama import ModelArgs

    config = json.loads((model_dir / "config.json").read_text())
    from_dict: Any = ModelArgs.from_dict
    args = from_dict(config)
    assert (args.model_type, args.hidden_size, args.num_hidden_layers, args.vocab_size) == (
        "llama",
        64,
        2,
        512,
    )
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    assert config["eos_token_id"] == added["</s>"]
    assert config["bos_token_id"] == added["<s>"]


def test_no_temporaries_left_next_to_the_build(model_dir: Path) -> None:
    siblings = {p.name for p in model_dir.parent.iterdir()}
    assert siblings == {"model", ".model.lock"}


def test_mlx_lm_loads_and_generates(loaded: tuple[Any, Any]) -> None:
    import mlx_lm

    model, tokenizer = loaded
    text = mlx_lm.generate(model, tokenizer, "Once upon a time", max_tokens=5)
    assert isinstance(text, str)


def test_generation_stops_at_max_tokens_or_eos(loaded: tuple[Any, Any]) -> None:
    import mlx_lm

    model, tokenizer = loaded
    responses = list(mlx_lm.stream_generate(model, tokenizer, "hello", max_tokens=8))
    assert responses[-1].finish_reason in {"length", "stop"}
    assert len(responses) <= 8


def test_every_model_token_id_decodes(model_dir: Path, loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    config = json.loads((model_dir / "config.json").read_text())
    assert len(tokenizer._tokenizer) == config["vocab_size"]
    assert tokenizer.decode(list(range(config["vocab_size"]))) != ""


def test_eos_is_known_to_mlx_lm(model_dir: Path, loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    config = json.loads((model_dir / "config.json").read_text())
    assert tokenizer.eos_token == "</s>"
    assert config["eos_token_id"] in tokenizer.eos_token_ids


def test_chat_template_through_mlx_lm(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    assert tokenizer.has_chat_template
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s><|system|>\nBe brief.</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids) == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_chat_template_through_transformers(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<s><|user|>\nab</s>\n<|assistant|>\n</s>\n"
    no_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=False, tokenize=False
    )
    assert isinstance(no_prompt, str)
    assert not no_prompt.endswith("<|assistant|>\n")


def test_tokenizer_round_trips_text(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    text = "Hello world, the train was late. ünïcødé 日本"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_same_seed_is_deterministic(tmp_path: Path, model_dir: Path) -> None:
    again = build_text_model(tmp_path / "again")
    for name in EXPECTED_FILES:
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_different_seeds_give_different_weights(tmp_path: Path, model_dir: Path) -> None:
    import mlx.core as mx

    other = build_text_model(tmp_path / "other", seed=1)
    a: Any = mx.load(str(model_dir / "model.safetensors"))
    b: Any = mx.load(str(other / "model.safetensors"))
    assert a.keys() == b.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not mx.array_equal(a[name], b[name]).item()
    assert (other / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_second_build_with_same_params_is_a_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = build_text_model(tmp_path / "m", seed=3)
    before = _mtimes(dest)

    def must_not_rebuild(*_args: object) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(tiny_models, "_write_model_dir", must_not_rebuild)
    assert build_text_model(tmp_path / "m", seed=3) == dest
    assert _mtimes(dest) == before


def test_changed_params_rebuild(tmp_path: Path) -> None:
    dest = build_text_model(tmp_path / "m", seed=3)
    build_text_model(dest, seed=3, hidden_size=32, label="smaller")
    config = json.loads((dest / "config.json").read_text())
    assert (config["hidden_size"], config["mlx_serve_demo"]) == (32, "smaller")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]


def test_outdated_builder_version_rebuilds(tmp_path: Path) -> None:
    dest = build_text_model(tmp_path / "m")
    marker = json.loads((dest / MARKER_FILE).read_text())
    marker["builder_version"] -= 1
    (dest / MARKER_FILE).write_text(json.dumps(marker))
    build_text_model(dest)
    assert json.loads((dest / MARKER_FILE).read_text())["builder_version"] == (
        tiny_models.BUILD_VERSION
    )


def test_crashed_build_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("simulated crash while writing weights")

    monkeypatch.setattr(tiny_models, "_write_weights", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_text_model(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"]


def test_leftover_temporary_from_a_killed_build_is_cleaned(tmp_path: Path) -> None:
    leftover = tmp_path / "m.tmp-999999"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    build_text_model(tmp_path / "m")
    assert not leftover.exists()


def test_empty_existing_directory_is_filled(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    dest = build_text_model(tmp_path / "m")
    assert (dest / MARKER_FILE).is_file()


def test_refuses_to_replace_an_unrelated_directory(tmp_path: Path) -> None:
    precious = tmp_path / "m"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_text_model(precious)
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs",
    [{"hidden_size": 60}, {"hidden_size": 0}, {"num_layers": 0}, {"vocab_size": 100}],
)
def test_rejects_impossible_shapes(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_text_model(tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_vocab_larger_than_the_corpus_supports_is_padded(tmp_path: Path) -> None:
    import mlx_lm

    dest = build_text_model(tmp_path / "m", vocab_size=2048)
    model_and_tokenizer: Any = mlx_lm.load(str(dest))
    assert len(model_and_tokenizer[1]._tokenizer) == 2048


def test_main_builds_and_prints_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["tiny_models", str(dest), "--seed", "7"])
    tiny_models.main()
    assert capsys.readouterr().out.strip() == str(dest)
    marker = json.loads((dest / MARKER_FILE).read_text())
    assert marker["params"]["seed"] == 7
