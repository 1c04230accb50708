"""Reseed every random source at the start of each epoch, so that a resumed run repeats an uninterrupted one."""

from __future__ import annotations

import lightning as L


class EpochSeed(L.Callback):
    """Seed torch/numpy/random with ``seed + epoch`` at each epoch start.

    Lightning restores weights, optimiser and scheduler on resume but not the RNG streams;
    deriving the model's randomness (dropout) from the epoch number makes epoch N identical
    whether or not the run was interrupted before it. Shuffling and augmentation are seeded by
    ``EpochShuffleSampler`` in the data module.
    """

    def __init__(self, seed: int = 42):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = self.seed + trainer.current_epoch
        L.seed_everything(seed, workers=True, verbose=False)
