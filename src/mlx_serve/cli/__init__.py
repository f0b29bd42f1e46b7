"""The ``mlx-serve`` command line (typer + rich)."""
