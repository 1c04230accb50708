"""Dashboards: validation photos with predicted and true masks, and the confusion matrix, for W&B and TensorBoard."""

from __future__ import annotations

import io

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from fashionseg.core.heads import Head, head_label
from fashionseg.core.io import default_palette, overlay
from fashionseg.metrics import labels_from_scores
from fashionseg.metrics.figures import confusion_figure


class PredictionImages(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and after testing): ``num_images`` fixed validation photos
    with masks, and the split's confusion matrix with per-class IoU.

    W&B gets ``wandb.Image(photo, masks={"prediction", "ground_truth"})`` with class labels, so the UI
    can toggle classes; TensorBoard gets the same photos as overlays (photo | prediction | truth).
    Loggers of other kinds are skipped.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 8, opacity: float = 0.5):
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}.")
        self.every_n_epochs, self.num_images, self.opacity = every_n_epochs, num_images, opacity

    @staticmethod
    def _targets(trainer: L.Trainer) -> list:
        return [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, TensorBoardLogger))]

    def _samples(self, trainer: L.Trainer, module, subset: str, head: Head
                 ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """(id, photo at label size, predicted label, true label) of a head for the first images of a subset."""
        datamodule = trainer.datamodule
        dataset = datamodule.datasets[subset]
        out = []
        was_training = module.training
        module.eval()
        for i in range(min(self.num_images, len(dataset))):
            item = dataset[i]
            photo, true = dataset.arrays[i]
            true = head_label(true, module.heads, head)
            logits = module.predict_logits(item["image"][None].to(module.device), item["valid_hw"][None], true.shape)
            pred = labels_from_scores(logits[:, head.channels])[0].cpu().numpy().astype(np.uint8)
            out.append((item["id"], photo, pred, true))
        module.train(was_training)
        return out

    def _log(self, trainer: L.Trainer, module, subset: str, key: str, head: Head, confusion: torch.Tensor | None
             ) -> None:
        targets = self._targets(trainer)
        if not targets or trainer.sanity_checking:
            return
        names = list(head.class_names)
        task = (module.hparams.get("config") or {}).get("task", {})
        task = task["heads"][head.name] if module.joint else task
        palette = np.asarray(task.get("palette") or default_palette(len(names)), np.uint8)
        samples = self._samples(trainer, module, subset, head)
        title = f"{key} epoch {trainer.current_epoch}"
        figure = _figure_array(confusion, names, title) if confusion is not None else None
        step = trainer.global_step
        for target in targets:
            if isinstance(target, WandbLogger):
                import wandb

                labels = dict(enumerate(names))
                images = [wandb.Image(photo, caption=sid, masks={
                    "prediction": {"mask_data": pred, "class_labels": labels},
                    "ground_truth": {"mask_data": true, "class_labels": labels}}) for sid, photo, pred, true in samples]
                payload = {f"{key}/predictions": images}
                if figure is not None:
                    payload[f"{key}/confusion_matrix"] = wandb.Image(figure)
                target.log_metrics(payload, step=step)  # W&B's own step stays Lightning's; global_step rides along
            else:
                writer = target.experiment
                for sid, photo, pred, true in samples:
                    panel = np.concatenate([photo,
                                            np.asarray(overlay(photo, pred, palette, names, self.opacity, False)),
                                            np.asarray(overlay(photo, true, palette, names, self.opacity, False))], 1)
                    writer.add_image(f"{key}/predictions/{sid}", panel, step, dataformats="HWC")
                if figure is not None:
                    writer.add_image(f"{key}/confusion_matrix", figure, step, dataformats="HWC")

    # Callbacks' epoch-end hooks run before the module's, which computes and resets the metrics:
    # compute() here (every rank, as DDP needs) reads the same, complete confusion matrix.
    def on_validation_epoch_end(self, trainer: L.Trainer, module) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not self._targets(trainer) or \
                not ((epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == trainer.max_epochs):
            return
        self._log_heads(trainer, module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, module) -> None:
        if not self._targets(trainer):
            return
        self._log_heads(trainer, module, "test")

    def _log_heads(self, trainer: L.Trainer, module, stage: str) -> None:
        """Each head's photos and confusion matrix, under ``<stage>`` (a joint network's: ``<stage>/<task>``)."""
        for head, metric in module.head_metrics(stage).items():
            confusion = metric.confusion.compute()
            if trainer.is_global_zero:
                self._log(trainer, module, stage, f"{stage}/{head.name}" if module.joint else stage, head, confusion)


def _figure_array(confusion: torch.Tensor, names: list[str], title: str) -> np.ndarray:
    buffer = io.BytesIO()
    confusion_figure(confusion.cpu().numpy(), names, buffer, title=title)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))
