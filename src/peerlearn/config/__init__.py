"""Experiment configuration: schema, TOML loading, overrides and error reporting."""

from peerlearn.config.load import ConfigError, dump_config, load_config
from peerlearn.config.schema import ExperimentConfig

__all__ = ["ConfigError", "ExperimentConfig", "dump_config", "load_config"]
