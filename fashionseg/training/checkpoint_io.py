"""How training writes checkpoints: atomically (a kill never leaves a truncated file)."""

from __future__ import annotations

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from fashionseg.core.io import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file beside the target, fsync, then rename over it.

    A kill at any moment leaves either the previous file or the new one, never a truncated one
    (Lightning's own transaction writes to the system temp dir and moves the file, a copy when
    that is another filesystem).
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        write_atomic(path, lambda f: torch.save(checkpoint, f), fsync=True)
