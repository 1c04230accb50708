"""fashionseg: per-pixel person and clothing segmentation of fashion photos."""

import os

# albumentations asks PyPI for a newer release whenever it is imported; a run makes no network request it
# does not need (offline, each process would wait for the request's timeout). Set to 0 to allow it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


class FashionsegError(Exception):
    """Base class of the errors this package raises for bad input or configuration."""


class DataError(FashionsegError, ValueError):
    """A data file is missing, corrupt or inconsistent with the task."""


class ConfigError(FashionsegError, ValueError):
    """A configuration value is invalid."""
