"""Training: the LightningModule, losses, callbacks, distillation and the train entry (``train``)."""
