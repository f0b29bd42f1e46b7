"""mlx-serve: an always-on local inference server for MLX models.

A long-lived supervisor starts one worker process per active model on demand and an aiohttp
router speaks the OpenAI API in front of them, hot-swapping models as requests arrive.
"""

__version__ = "0.4.0.dev0"
