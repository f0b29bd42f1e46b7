"""The ``mlx-serve`` command line (typer + rich)."""

from mlx_serve.cli.help_format import hide_flag_types

hide_flag_types()
