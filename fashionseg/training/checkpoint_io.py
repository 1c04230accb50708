"""How training writes checkpoints: atomically (a kill never leaves a truncated file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file beside the target, fsync, then rename over it.

    A kill at any moment leaves either the previous file or the new one, never a truncated one
    (Lightning's own transaction writes to the system temp dir and moves the file, a copy when
    that is another filesystem).
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
