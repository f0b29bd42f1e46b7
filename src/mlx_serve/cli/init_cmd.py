"""``mlx-serve init``: write the commented example models.yaml, and say what comes next."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlx_serve.cli.options import ConfigOpt
from mlx_serve.cli.output import fail, log_console
from mlx_serve.cli.settings import url_for
from mlx_serve.config import find_config_path, load_config

__all__ = ["init", "init_next_steps", "write_example_config"]


def init(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
    print_only: Annotated[
        bool, typer.Option("--print", help="print the example, write nothing")
    ] = False,
) -> None:
    """Write a commented example models.yaml."""
    from mlx_serve.config import example_config_text

    if print_only:
        typer.echo(example_config_text(), nl=False)
        return
    path = find_config_path(config)
    if path.exists() and not force:
        fail(f"{path} already exists (use --force to overwrite)")
    write_example_config(path)
    log_console.print(f"wrote {path}")
    log_console.print(init_next_steps(path), highlight=False)


def init_next_steps(path: Path) -> str:
    """What to do after ``init``: start, get a model's files (or let ``auto_pull`` do it),
    and where clients and the dashboard are. Lines fit 80 columns but for long names."""
    from mlx_serve.hub import check_model_files

    cfg = load_config(path)
    base = url_for(cfg.server.host, cfg.server.port)
    missing = [
        model.path
        for model in cfg.models.values()
        if (lack := check_model_files(model.path)) is not None and lack.pullable
    ]
    steps = [f"edit {path}: keep the models you want", "mlx-serve start --detach"]
    if missing:
        others = "each other model you keep; " if len(missing) > 1 else ""
        steps.append(
            f"mlx-serve models pull {missing[0]}\n"
            f"     ({others}or set server.auto_pull: true to download\n"
            "     a model when a request first needs it)"
        )
    steps.append(f"clients: {base}/v1   dashboard: {base}/")
    return "next steps:\n" + "\n".join(f"  {i}. {step}" for i, step in enumerate(steps, 1))


def write_example_config(path: Path) -> None:
    """Write the commented example models.yaml to ``path`` (``init``, and ``service install``
    on a machine without a config), atomically: never a half-written config."""
    from mlx_serve.config import example_config_text

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(example_config_text(), encoding="utf-8")
    tmp.replace(path)
