"""The errors this package raises for bad input or configuration: one clear message, no traceback."""


class FashionsegError(Exception):
    """Base class of the errors this package raises for bad input or configuration."""


class DataError(FashionsegError, ValueError):
    """A data file is missing, corrupt or inconsistent with the task."""


class ConfigError(FashionsegError, ValueError):
    """A configuration value is invalid."""


class Interrupted(FashionsegError):
    """A run stopped by a signal (SIGTERM) after saving what it needs to resume; its process exits with 143."""

    exit_status = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
