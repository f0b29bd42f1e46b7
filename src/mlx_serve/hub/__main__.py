"""``python -m mlx_serve.hub download ...``: the download child process (see :mod:`.download`)."""

from mlx_serve.hub.download import main

if __name__ == "__main__":
    main()
