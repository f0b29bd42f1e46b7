"""``python -m mlx_serve.tiny_models DEST [--seed N]``: build a tiny text model."""

from mlx_serve.tiny_models.text import main

main()
