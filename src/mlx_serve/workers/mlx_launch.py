"""``python -m mlx_serve.workers.mlx_launch ARGS`` runs ``mlx.launch ARGS``.

MLX's launcher is a console script; its module (``mlx._distributed_utils.launch``) has no
``__main__`` block, so ``python -m`` on it does nothing. The guard runs modules, hence this
one line of glue (used for the JACCL and MPI backends, and by ``bench.distributed``).
"""

from mlx._distributed_utils.launch import main

if __name__ == "__main__":
    main()  # type: ignore[no-untyped-call]  # MLX ships no type hints for it
