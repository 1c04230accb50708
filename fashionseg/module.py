"""One LightningModule for every network and task: loss, metrics, optimiser and scheduler."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric

from fashionseg.metrics import SegmentationMetrics, labels_from_scores, scores


class SegmentationModule(L.LightningModule):
    """Trains and evaluates a network that returns ``{"out": logits, "aux": [side logits]}``.

    Args:
        net: the network (plain ``nn.Module``), input uint8 or [0, 1] images (B, 3, H, W).
        loss: ``f(logits, target) -> scalar``.
        optimizer: partial optimiser, called with the parameters.
        scheduler: partial LR scheduler (called with the optimiser) or None.
        class_names: K names, in class-index order.
        aux_weight: weight of each side output's loss (U2-Net's fusion loss: 1.0; 0 ignores them).
        scheduler_monitor: metric a plateau scheduler watches.
        tta_hflip: at evaluation, average logits of the photo and its mirror image.
        config: the run's resolved configuration, stored in every checkpoint.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None,
                 class_names: Sequence[str], aux_weight: float = 0.0, scheduler_monitor: str = "val/loss",
                 tta_hflip: bool = False, config: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(class_names)
        k = len(self.class_names)
        self.val_metrics, self.test_metrics = SegmentationMetrics(k), SegmentationMetrics(k)
        self.val_miou_best = MaxMetric()
        self.val_miou_best.persistent(True)  # part of the checkpoint: a resumed run keeps its best
        self.test_scores: dict[str, float] = {}
        self.test_confusion: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> dict:
        return self.net(images)

    def compute_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        loss = self.loss(out["out"], target)
        if self.hparams.aux_weight and out.get("aux"):
            loss = loss + self.hparams.aux_weight * sum(self.loss(a, target) for a in out["aux"])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        loss = self.compute_loss(out, batch["mask"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["id"]))
        return loss

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor, valid_hw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Logits for the photos at ``size`` (H, W): crop the padding, then resize. Returns (B, K, H, W) float."""
        logits = self(images)["out"].float()
        if self.hparams.tta_hflip:
            logits = 0.5 * (logits + self(images.flip(-1))["out"].float().flip(-1))
        vh, vw = (int(v) for v in valid_hw[0])
        logits = logits[..., :vh, :vw]
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    def _eval_step(self, batch: dict, metrics: SegmentationMetrics, stage: str) -> None:
        mask = batch["mask"]  # (B, H, W) at the label's native size
        logits = self.predict_logits(batch["image"], batch["valid_hw"], mask.shape[-2:])
        self.log(f"{stage}/loss", self.loss(logits, mask), on_epoch=True, batch_size=len(mask))
        metrics.update(labels_from_scores(logits), mask)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_validation_epoch_end(self) -> None:
        s = scores(self.val_metrics.compute(), self.class_names)
        self.val_metrics.reset()
        self.log_dict({f"val/{k}": v for k, v in s.items()})
        if not self.trainer.sanity_checking:  # the untrained sanity pass is no "best"
            self.val_miou_best.update(torch.tensor(s["miou"]))
        self.log("val/miou_best", self.val_miou_best.compute() if self.val_miou_best.update_called else 0.0,
                 prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self.test_confusion = self.test_metrics.compute().cpu()
        self.test_scores = scores(self.test_confusion, self.class_names)
        self.test_metrics.reset()
        self.log_dict({f"test/{k}": v for k, v in self.test_scores.items()})

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": scheduler, "monitor": self.hparams.scheduler_monitor, "interval": "epoch", "frequency": 1}}
