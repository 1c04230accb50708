"""One LightningModule for every network and task: loss, metrics, optimiser and scheduler; and the loader that
rebuilds it from a checkpoint (evaluation scores it with a Lightning Trainer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MaxMetric

from fashionseg.core.heads import Head, head_targets, heads_from_names
from fashionseg.inference.checkpoint import build_network, load_network, read_checkpoint
from fashionseg.inference.logits import check_scales, crop_and_resize, network_logits
from fashionseg.inference.package import resolve
from fashionseg.metrics import SplitMetrics, labels_from_scores
from fashionseg.training.distill import Distiller


class SegmentationModule(L.LightningModule):
    """Trains and evaluates a network that returns ``{"out": logits, "aux": [side logits]}``.

    Args:
        net: the network (plain ``nn.Module``), input uint8 or [0, 1] images (B, 3, H, W).
        loss: ``f(logits, target) -> scalar``.
        optimizer: partial optimiser, called with the parameters.
        scheduler: partial LR scheduler (called with the optimiser) or None.
        class_names: K names, in class-index order; or ``{task: names}`` for a network with one head per
            task (task=joint), whose output channels follow that order. Its targets are then (B, tasks, H, W),
            each head has its own loss (summed) and metrics, logged as ``<stage>/<task>/<metric>``; the
            stage's ``miou`` and ``boundary_iou`` (model selection) are the means over the tasks.
        aux_weight: weight of each side output's loss (U2-Net's fusion loss: 1.0; 0 ignores them).
        scheduler_monitor: metric a plateau scheduler watches.
        tta_hflip: at evaluation, average logits of the photo and its mirror image.
        tta_scales: at evaluation, also run the input resized by these factors and average the logits
            (multi-scale test-time augmentation); ``[1.0]``: none.
        ignore_index: label value of pixels left out of the metrics (the loss takes its own).
        boundary_dilation: Boundary IoU's band width, a fraction of the image diagonal.
        channels_last: keep the network's weights and its input batches in channels-last memory order
            (NHWC), the order the CPU convolution kernels prefer; the same model, computed in another order.
        config: the run's resolved configuration, stored in every checkpoint.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None,
                 class_names: Sequence[str] | Mapping[str, Sequence[str]], aux_weight: float = 0.0,
                 scheduler_monitor: str = "val/loss", tta_hflip: bool = False, config: dict | None = None,
                 ignore_index: int | None = None, boundary_dilation: float = 0.02,
                 tta_scales: Sequence[float] = (1.0,), channels_last: bool = False):
        super().__init__()
        check_scales(tta_scales)  # before any training
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.net, self.loss = (net.to(memory_format=torch.channels_last) if channels_last else net), loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.heads: list[Head] = heads_from_names(class_names)
        self.joint = len(self.heads) > 1
        self.class_names = list(self.heads[0].class_names)  # the one head's (joint: the first task's)
        self.val_metrics, self.test_metrics = self.split_metrics(), self.split_metrics()
        self.val_miou_best = MaxMetric()
        self.val_miou_best.persistent(True)  # part of the checkpoint: a resumed run keeps its best
        self.test_scores: dict[str, float] = {}
        self.test_confusion: torch.Tensor | dict[str, torch.Tensor] | None = None
        # Several sets (MultiSetDataModule): one confusion matrix per stage and set, made in setup();
        # several heads: one per stage and head.
        self.set_metrics = nn.ModuleDict({f"{stage}/{h.name}": self.split_metrics(h) for stage in ("val", "test")
                                          for h in self.heads} if self.joint else {})
        self.eval_names: dict[str, list[str]] = {}
        self.test_scores_per_set: dict[str, dict[str, float]] = {}
        self.images_seen = 0  # training photos fed to the network so far (kept by checkpoints)
        self.images_seen_at_start = 0  # ... when this fit started (a resumed run's count so far)
        self.distiller: Distiller | None = None  # train.py's, with distill=kd: a teacher's extra target

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping, loss_cfg: DictConfig | Mapping | None = None,
                    pretrained: bool = True, **overrides: Any) -> SegmentationModule:
        """The module of a run config: what train.py composes, or what a checkpoint stores.

        Args:
            cfg: the run config (model, loss, optimizer, scheduler, task, and the top-level
                ``tta_hflip`` and ``scheduler_monitor``).
            loss_cfg: the loss config with ``weights: auto`` resolved to numbers (default: ``cfg.loss``).
            pretrained: False builds the encoder without pretrained weights (a checkpoint holds them all),
                so loading a checkpoint never touches the network.
            **overrides: constructor arguments that win over the config (e.g. ``tta_hflip``).
        """
        def plain(node):  # resolved in its own config (a loss node interpolates ${task...}), then detached
            return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

        cfg = OmegaConf.create(plain(cfg))
        loss_cfg = cfg.loss if loss_cfg is None else OmegaConf.create(plain(loss_cfg))
        if not pretrained and "encoder_weights" in cfg.model.net:
            cfg.model.net.encoder_weights = None
        config = OmegaConf.to_container(cfg, resolve=True)
        config["loss"] = OmegaConf.to_container(loss_cfg, resolve=True)
        heads = cfg.task.get("heads")
        kwargs = dict(
            net=build_network(cfg, pretrained),
            loss=hydra.utils.instantiate(loss_cfg),
            optimizer=hydra.utils.instantiate(cfg.optimizer),
            scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            class_names={n: list(h.class_names) for n, h in heads.items()} if heads else list(cfg.task.class_names),
            aux_weight=cfg.model.get("aux_weight", 0.0),
            scheduler_monitor=cfg.get("scheduler_monitor", "val/loss"),
            tta_hflip=cfg.get("tta_hflip", False),
            tta_scales=list(cfg.get("tta_scales") or [1.0]),
            ignore_index=cfg.task.get("ignore_index"),
            boundary_dilation=cfg.get("boundary_dilation", 0.02),
            channels_last=cfg.get("channels_last", False),
            config=config,
        )
        return cls(**{**kwargs, **overrides})

    def split_metrics(self, head: Head | None = None) -> SplitMetrics:
        """A split's metrics (confusion matrix and Boundary IoU) for a head's classes (default: the first
        head's) and this module's ignore label."""
        names = (head or self.heads[0]).class_names
        return SplitMetrics(names, self.hparams.ignore_index, self.hparams.boundary_dilation)

    def head_metrics(self, stage: str) -> dict[Head, SplitMetrics]:
        """A stage's (``val`` or ``test``) metrics of each head; with several sets, the selection set's."""
        if self.joint:
            return {h: self.set_metrics[f"{stage}/{h.name}"] for h in self.heads}
        names = self.eval_names.get(stage)
        if names:
            return {self.heads[0]: self.set_metrics[f"{stage}/{names[0]}"]}
        return {self.heads[0]: self.val_metrics if stage == "val" else self.test_metrics}

    def forward(self, images: torch.Tensor) -> dict:
        return self.net(self.memory_order(images))

    def memory_order(self, images: torch.Tensor) -> torch.Tensor:
        """A batch (B, 3, H, W) in the network's memory order (``channels_last``)."""
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def head_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of logits (B, C, H, W) against the targets: with several heads, the sum of each head's."""
        if not self.joint:
            return self.loss(logits, target)
        return sum(self.loss(logits[:, h.channels], t) for h, t in zip(self.heads, head_targets(target, self.heads)))

    def compute_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        loss = self.head_loss(out["out"], target)
        if self.hparams.aux_weight and out.get("aux"):
            loss = loss + self.hparams.aux_weight * sum(self.head_loss(a, target) for a in out["aux"])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        loss = self.compute_loss(out, batch["mask"])
        if self.distiller is not None:
            distill = self.distiller.loss(batch["image"], out["out"], batch["mask"], batch.get("teacher"))
            self.log("train/distill", distill, on_step=False, on_epoch=True, batch_size=len(batch["id"]))
            loss = loss + self.distiller.weight * distill
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["id"]))
        self.images_seen += len(batch["id"])
        return loss

    def on_train_start(self) -> None:
        self.images_seen_at_start = self.images_seen

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["images_seen"] = self.images_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.images_seen = checkpoint.get("images_seen", 0)

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor, valid_hw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Logits for photos that share one valid area and label size: the network (and its TTA), then
        the padding cropped and the rest resized to ``size`` (H, W). Returns (B, K, H, W) float."""
        logits = network_logits(self.net, self.memory_order(images), self.hparams.tta_hflip, self.hparams.tta_scales)
        return crop_and_resize(logits.contiguous(), valid_hw[0], size)

    def setup(self, stage: str) -> None:
        """With several sets, one confusion matrix per set for validation and test (their loader order)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        self.eval_names = dict(getattr(datamodule, "eval_names", None) or {})
        for subset, names in self.eval_names.items():
            for name in names:
                if f"{subset}/{name}" not in self.set_metrics:
                    self.set_metrics[f"{subset}/{name}"] = self.split_metrics()

    def _eval_step(self, batch: dict, stage: str, dataloader_idx: int) -> None:
        mask = batch["mask"]  # (B, H, W) at the label's native size; (B, tasks, H, W) for several heads
        logits = self.predict_logits(batch["image"], batch["valid_hw"], mask.shape[-2:])
        loss = self.head_loss(logits, mask)
        if self.joint:
            self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(mask), add_dataloader_idx=False)
            for (head, metric), target in zip(self.head_metrics(stage).items(), head_targets(mask, self.heads)):
                metric.update(labels_from_scores(logits[:, head.channels]), target)
            return
        labels = labels_from_scores(logits)
        names = self.eval_names.get(stage)
        if not names:
            self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(mask), add_dataloader_idx=False)
            (self.val_metrics if stage == "val" else self.test_metrics).update(labels, mask)
            return
        name = names[dataloader_idx]
        self.log(f"{stage}/{name}/loss", loss, on_epoch=True, batch_size=len(mask), add_dataloader_idx=False)
        if dataloader_idx == 0:  # the selection set: also the run's own stage/loss
            self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(mask), add_dataloader_idx=False)
        self.set_metrics[f"{stage}/{name}"].update(labels, mask)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def _stage_scores(self, stage: str) -> tuple[torch.Tensor | dict[str, torch.Tensor], dict[str, float]]:
        """The stage's confusion matrix and scores (the selection set's with several sets); logs every set's.
        With several heads: ``{task: confusion}`` and every head's scores as ``<task>/<metric>``, with the
        means over the tasks of mIoU, Boundary IoU and pixel accuracy as the stage's own."""
        if self.joint:
            per_head = {}
            for head, metric in self.head_metrics(stage).items():
                per_head[head.name] = metric.compute()
                metric.reset()
            scores = {f"{name}/{k}": v for name, (_, s) in per_head.items() for k, v in s.items()}
            for key in ("miou", "boundary_iou", "pixel_acc"):
                scores[key] = sum(s[key] for _, s in per_head.values()) / len(per_head)
            return {name: confusion for name, (confusion, _) in per_head.items()}, scores
        names = self.eval_names.get(stage)
        if not names:
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            result = metrics.compute()
            metrics.reset()
            return result
        per_set = {}
        for name in names:
            metric = self.set_metrics[f"{stage}/{name}"]
            per_set[name] = metric.compute()
            metric.reset()
            self.log_dict({f"{stage}/{name}/{k}": v for k, v in per_set[name][1].items()}, add_dataloader_idx=False)
        if stage == "test":
            self.test_scores_per_set = {n: s for n, (_, s) in per_set.items()}
        return per_set[names[0]]

    def on_validation_epoch_end(self) -> None:
        _, s = self._stage_scores("val")
        self.log_dict({f"val/{k}": v for k, v in s.items()}, add_dataloader_idx=False)
        if not self.trainer.sanity_checking:  # the untrained sanity pass is no "best"
            self.val_miou_best.update(torch.tensor(s["miou"]))
        self.log("val/miou_best", self.val_miou_best.compute() if self.val_miou_best.update_called else 0.0,
                 prog_bar=True, add_dataloader_idx=False)

    def on_test_epoch_end(self) -> None:
        confusion, self.test_scores = self._stage_scores("test")
        self.test_confusion = {k: c.cpu() for k, c in confusion.items()} if self.joint else confusion.cpu()
        self.log_dict({f"test/{k}": v for k, v in self.test_scores.items()}, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": scheduler, "monitor": self.hparams.scheduler_monitor, "interval": "epoch", "frequency": 1}}


def load_checkpoint(path: str | Path, tta_hflip: bool = False, revision: str | None = None,
                    **overrides) -> SegmentationModule:
    """Load a checkpoint written by train.py (or a model package folder or Hugging Face Hub id, at
    ``revision``) into a SegmentationModule in eval mode; ``overrides`` are evaluation settings of the
    module (``tta_scales``, ``boundary_dilation``).

    The encoder is built without pretrained weights (the checkpoint holds all of them), so loading never
    touches the network. For the network alone (prediction, export, a teacher), use
    ``fashionseg.inference.checkpoint.load_network``, which needs no training code.
    """
    local = resolve(path, revision)
    if local.is_dir():  # a model package: the network's weights, and the run config
        trained = load_network(local)
        module = SegmentationModule.from_config(trained.config, pretrained=False, tta_hflip=tta_hflip,
                                                config=trained.config, **overrides)
        module.net.load_state_dict(trained.net.state_dict(), strict=True)
        return module.eval()
    ckpt = read_checkpoint(local)
    config = ckpt["hyper_parameters"]["config"]
    module = SegmentationModule.from_config(config, pretrained=False, tta_hflip=tta_hflip, config=config, **overrides)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return module.eval()


def untrained_checkpoint(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write a checkpoint as train.py does (config + weights) of the untrained network of ``train.yaml`` composed
    with ``overrides``: the same network as a trained one, so the same cost, for benchmarks that time it."""
    from fashionseg.core.config import compose_config

    path = Path(path)
    cfg = compose_config("train", [*overrides, f"paths.output_dir={path.parent}"])
    module = SegmentationModule.from_config(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path
