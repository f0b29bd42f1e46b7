"""Configuration: the models.yaml schema, its loader and the shipped example.

Everything other packages need is re-exported here so they never import the submodules
(which are split only to keep each concern small: units, schema, file handling).
"""

from __future__ import annotations

from .durations import Duration, OptionalDuration, parse_duration
from .errors import ConfigError, ConfigIssue
from .loader import (
    CONFIG_ENV_VAR,
    example_config_text,
    find_config_path,
    load_config,
    parse_config_text,
)
from .schema import DEFAULT_PORT, ArgValue, Config, ModelConfig, ModelType, ServerConfig

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_PORT",
    "ArgValue",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "ModelConfig",
    "ModelType",
    "OptionalDuration",
    "ServerConfig",
    "example_config_text",
    "find_config_path",
    "load_config",
    "parse_config_text",
    "parse_duration",
]
