"""Rebuild a trained model from its checkpoint alone: network, classes and data settings travel with it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from fashionseg import ConfigError
from fashionseg.module import SegmentationModule


def load_checkpoint(path: str | Path, tta_hflip: bool = False, **overrides) -> SegmentationModule:
    """Load a checkpoint written by train.py into a SegmentationModule in eval mode; ``overrides`` are
    evaluation settings of the module (``boundary_dilation``).

    The encoder is built without pretrained weights (the checkpoint holds all of them), so
    loading never touches the network.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Checkpoint {path} does not exist. Give ckpt_path=<run dir>/checkpoints/<file>.ckpt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a checkpoint at all
        raise ConfigError(f"Cannot read checkpoint {path}: {e}. Is it a file written by train.py?") from e
    config = ckpt.get("hyper_parameters", {}).get("config")
    if not config:
        raise ConfigError(f"Checkpoint {path} holds no fashionseg config; it was not written by train.py.")
    module = SegmentationModule.from_config(config, pretrained=False, tta_hflip=tta_hflip, config=config,
                                           **overrides)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return module.eval()


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
