"""fashionseg: per-pixel person and clothing segmentation of fashion photos."""

__version__ = "0.1.0"


class FashionsegError(Exception):
    """Base class of the errors this package raises for bad input or configuration."""


class DataError(FashionsegError, ValueError):
    """A data file is missing, corrupt or inconsistent with the task."""


class ConfigError(FashionsegError, ValueError):
    """A configuration value is invalid."""
