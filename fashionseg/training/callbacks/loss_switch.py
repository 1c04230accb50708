"""Train the last epochs on another loss: e.g. the Lovász-softmax, which optimises the IoU itself, once a
smoother loss has brought the network close (Berman et al., CVPR 2018, fine-tune with it)."""

from __future__ import annotations

import lightning as L
from torch import nn

from fashionseg.core.errors import ConfigError


class LossSwitch(L.Callback):
    """From epoch ``max_epochs - last_epochs`` on, the module trains (and validates) with ``loss``.

    The switch is a function of the epoch number, so a resumed run switches where an uninterrupted one
    does. Both losses must be stateless (no parameters or buffers): checkpoints then hold the same
    weights whichever loss wrote them. ``val/loss`` is the switched loss in those epochs, so a schedule
    that watches it (``scheduler=plateau``) sees a step at the switch; ``val/miou`` is unaffected.

    Args:
        loss: the loss of the last epochs (a ``fashionseg.training.losses`` module, e.g. conf/loss/lovasz.yaml).
        last_epochs: how many of ``trainer.max_epochs`` train with it.
    """

    def __init__(self, loss: nn.Module, last_epochs: int):
        if not (isinstance(last_epochs, int) and last_epochs >= 1):
            raise ConfigError(f"loss_switch.last_epochs must be an integer >= 1, got {last_epochs!r}.")
        self.loss, self.last_epochs = loss, last_epochs
        self.original: nn.Module | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (trainer.max_epochs and trainer.max_epochs > self.last_epochs):
            raise ConfigError(f"loss_switch.last_epochs={self.last_epochs} needs trainer.max_epochs above it, "
                              f"got {trainer.max_epochs}.")
        for name, loss in (("the run's loss", pl_module.loss), ("loss_switch.loss", self.loss)):
            if loss.state_dict():
                raise ConfigError(f"{name} ({type(loss).__name__}) has state {list(loss.state_dict())}; the loss "
                                  "switch takes stateless losses only (e.g. no class weights).")
        self.original = pl_module.loss

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        switched = trainer.current_epoch >= trainer.max_epochs - self.last_epochs
        pl_module.loss = self.loss if switched else self.original

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.loss = self.original  # testing and later use: the run's own loss
