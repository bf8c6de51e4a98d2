"""Configuration: the settings model and its sources."""

from config.settings import Settings, build_arg_parser, load_settings

__all__ = ["Settings", "build_arg_parser", "load_settings"]
