"""Test-only components that configs can name by ``_target_``."""

import json
from pathlib import Path

import lightning as L
import torch

from fashionseg.training.losses import CrossEntropy


class NaNAfterSteps(CrossEntropy):
    """Cross-entropy that turns NaN after ``steps`` training calls (validation calls are not counted)."""

    def __init__(self, steps: int, ignore_index: int | None = 255):
        super().__init__(ignore_index=ignore_index)  # augmentation borders carry the ignore label
        self.steps, self.calls = steps, 0

    def forward(self, logits, target):
        loss = super().forward(logits, target)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls > self.steps:
                return loss * float("nan")
        return loss


class LeastLikelyLabels:
    """A refinement whose effect shows on any network, trained or not: the least likely class per pixel."""

    def __call__(self, image, probs):
        return probs.argmin(0).numpy().astype("uint8")


class Stripes:
    """A refinement with edges on any network, trained or not: vertical stripes of every class in turn."""

    def __call__(self, image, probs):
        width = max(1, image.shape[1] // (2 * len(probs)))
        return ((torch.arange(image.shape[1]) // width) % len(probs)).expand(image.shape[:2]).numpy().astype("uint8")


class CountedLoss(CrossEntropy):
    """Cross-entropy that counts its training calls (grad enabled) in a class attribute, across instances
    built inside a run."""

    training_calls = 0

    def forward(self, logits, target):
        if torch.is_grad_enabled():
            type(self).training_calls += 1
        return super().forward(logits, target)


class SigtermAtStep:
    """A Lightning callback that sends this process SIGTERM after training step ``step``, as a scheduler would."""

    def __new__(cls, step: int):
        import os
        import signal

        import lightning as L

        class Sender(L.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == step:
                    os.kill(os.getpid(), signal.SIGTERM)

        return Sender()


class SeenIds(L.Callback):
    """Appends the ids of every training batch, with the epoch, to ``<folder>/seen-<global rank>.jsonl``."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"seen-{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "ids": list(batch["id"])}) + "\n")
