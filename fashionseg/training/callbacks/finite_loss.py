"""Stop a run at the first non-finite loss, before it reaches the weights."""

from __future__ import annotations

import lightning as L
import torch

from fashionseg.core.errors import FashionsegError


class NonFiniteLossError(FashionsegError, RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(L.Callback):
    """Raise with the step and the likely causes when the loss is NaN/inf.

    Runs before backward, so no optimiser step ever sees the bad loss; checkpoints written so
    far stay as they were (the last good one is named in the message).
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).all():
            return
        ckpt = trainer.checkpoint_callback
        last = (ckpt.last_model_path or ckpt.best_model_path) if ckpt else ""
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise NonFiniteLossError(
            f"Training loss is {loss.item()} at epoch {trainer.current_epoch}, global step {trainer.global_step} "
            f"(batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1} of the epoch). Likely causes: a "
            f"learning rate too high (now {lr:g}; try a smaller optimizer.lr), loss weights that are zero for every "
            "class present, an overflow under reduced precision (try trainer.precision=32-true), or images/labels "
            f"with invalid values. Last good checkpoint: {last or 'none written yet'}. The run was stopped."
        )
