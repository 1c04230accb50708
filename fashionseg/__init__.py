"""fashionseg: per-pixel person and clothing segmentation of fashion photos.

The package is a stack of layers, each importing only those below it (docs/design.md; enforced by
import-linter, ``make lint``): cli > serving | evaluation > training > postprocess > inference >
models | data | metrics > core.
"""

import os
from importlib.metadata import PackageNotFoundError, version

from fashionseg.core.errors import ConfigError, DataError, FashionsegError

# albumentations asks PyPI for a newer release whenever it is imported; a run makes no network request it
# does not need (offline, each process would wait for the request's timeout). Set to 0 to allow it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

try:
    __version__ = version("fashionseg")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "DataError", "FashionsegError", "__version__"]
