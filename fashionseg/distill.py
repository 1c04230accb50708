"""Knowledge distillation: a trained teacher's softened class probabilities as a second training target.

``python train.py experiment=fast_person_trainval distill=kd distill.teacher=<teacher>.ckpt`` trains the
fast network (the student) on its own loss plus ``weight * T^2 * KL(teacher || student)`` at temperature
``T`` (Hinton et al. 2015, "Distilling the knowledge in a neural network"), per labelled pixel, on the
same augmented batch. The teacher is any train.py checkpoint with the student's classes (a joint
teacher lends the matching head); it runs frozen, in eval mode, and is no part of the student's
checkpoint, so the student's inference cost is unchanged.

A teacher that learned this run's validation or test photos would leak them into training; the
teacher run's ``split.json`` (beside its ``checkpoints/``) is checked against this run's split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fashionseg import ConfigError
from fashionseg.data.datamodule import SUBSETS
from fashionseg.heads import Head, head_targets
from fashionseg.inference import network_logits


class Distiller:
    """The distillation term of a student's training loss.

    Deliberately not an ``nn.Module``: the teacher is not registered with the LightningModule, so its
    weights stay out of the optimiser, the checkpoints and the parameter count.

    Args:
        teacher: the teacher network (returns ``{"out": logits}``), frozen here.
        pairs: (student head, teacher head) with the same classes: which teacher channels teach which
            student channels.
        temperature: softmax temperature ``T`` of both distributions; the term is scaled by ``T^2`` so that
            its gradients keep their size across temperatures.
        weight: the term's weight in the training loss.
        tta_hflip: the teacher's logits averaged with its mirror image's.
        ignore_index: label of pixels that count for nothing (void).
        scale: the teacher sees the batch resized by this factor (sides rounded to 32), its logits resized
            back: a teacher trained at another input size (e.g. 1.25 for a 608x416 teacher of a 480x320
            student).
    """

    def __init__(self, teacher: nn.Module, pairs: Sequence[tuple[Head, Head]], temperature: float = 2.0,
                 weight: float = 1.0, tta_hflip: bool = False, ignore_index: int | None = None,
                 scale: float = 1.0):
        if temperature <= 0 or weight < 0 or scale <= 0:
            raise ConfigError(f"distill.temperature and distill.scale must be > 0 and distill.weight >= 0, got "
                              f"{temperature}, {scale} and {weight}.")
        self.teacher = teacher.eval().requires_grad_(False)
        self.pairs, self.temperature, self.weight = list(pairs), float(temperature), float(weight)
        self.tta_hflip, self.ignore_index, self.scale = tta_hflip, ignore_index, float(scale)

    @classmethod
    def from_config(cls, cfg: Mapping, student_heads: Sequence[Head], ids: Mapping,
                    ignore_index: int | None = None) -> Distiller:
        """The distiller of a run's ``distill`` config (conf/distill/kd.yaml), its heads and its split ids."""
        from fashionseg.checkpoint import load_checkpoint

        path = teacher_path(cfg)
        if cfg.get("check_split", True):
            check_teacher_split(path, ids)
        teacher = load_checkpoint(path)
        pairs = []
        for head in student_heads:
            match = next((t for t in teacher.heads if t.class_names == head.class_names), None)
            if match is None:
                raise ConfigError(
                    f"Teacher {path} has no head with the student's {head.name} classes {list(head.class_names)}; "
                    f"its heads: {[(t.name, list(t.class_names)) for t in teacher.heads]}. Distil from a network "
                    "of the same task (or a joint one with that task).")
            pairs.append((head, match))
        return cls(teacher.net, pairs, cfg.get("temperature", 2.0), cfg.get("weight", 1.0),
                   cfg.get("tta_hflip", False), ignore_index, cfg.get("scale", 1.0))

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's float logits (B, C, H, W) of a training batch (B, 3, H, W)."""
        device = next(self.teacher.parameters()).device
        if device != images.device:
            self.teacher.to(images.device)
        return network_logits(self.teacher, images, self.tta_hflip, (self.scale,))

    def loss(self, images: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``T^2 * KL(teacher || student)`` per labelled pixel, averaged, summed over the heads.

        Args:
            images: the batch (B, 3, H, W) the student saw.
            logits: the student's logits (B, C, h, w).
            target: labels (B, H, W), or (B, tasks, H, W) for a joint student; void pixels are left out.
        """
        teacher = self.teacher_logits(images)
        if teacher.shape[-2:] != logits.shape[-2:]:
            teacher = F.interpolate(teacher, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        students = [s for s, _ in self.pairs]
        targets = head_targets(target, students)
        t = self.temperature
        total = logits.new_zeros((), dtype=torch.float32)
        for (student, teach), labels in zip(self.pairs, targets):
            log_p = F.log_softmax(logits[:, student.channels].float() / t, dim=1)  # (B, K, h, w)
            log_q = F.log_softmax(teacher[:, teach.channels] / t, dim=1)
            kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1)  # (B, h, w)
            if labels.shape[-2:] != kl.shape[-2:]:
                labels = F.interpolate(labels[:, None].float(), size=kl.shape[-2:], mode="nearest")[:, 0].long()
            valid = labels != self.ignore_index if self.ignore_index is not None else torch.ones_like(kl, dtype=bool)
            total = total + (kl * valid).sum() / valid.sum().clamp(min=1) * t * t
        return total


def teacher_path(cfg: Mapping) -> Path:
    """The teacher checkpoint of a ``distill`` config, checked to be set and to exist."""
    if not cfg.get("teacher"):
        raise ConfigError("distill.teacher is not set: give distill.teacher=<teacher run>/checkpoints/<file>.ckpt "
                          "(a checkpoint written by train.py).")
    path = Path(cfg["teacher"])
    if not path.is_file():
        raise ConfigError(f"distill.teacher={path} does not exist; give a checkpoint written by train.py "
                          "(<teacher run>/checkpoints/<file>.ckpt).")
    return path


def subset_ids(ids: Mapping) -> dict[str, set[str]]:
    """Photo ids per subset of a split manifest: one set's ``{subset: ids}``, or several sets'
    ``{set: {subset: ids}}`` (each id then prefixed by its set's name)."""
    out = {name: set() for name in SUBSETS}
    for key, value in ids.items():
        if key in SUBSETS and isinstance(value, (list, tuple)):
            out[key] |= {str(i) for i in value}
        elif isinstance(value, Mapping):
            for subset, members in subset_ids(value).items():
                out[subset] |= {f"{key}/{i}" for i in members}
    return out


def check_teacher_split(path: Path, ids: Mapping) -> None:
    """Refuse a teacher that learned this run's test photos (its training or validation photos) or its
    validation photos (its training photos): the student would learn them through it."""
    manifest = path.parent.parent / "split.json"
    if not manifest.is_file():
        raise ConfigError(
            f"Cannot check which photos teacher {path} learned: {manifest} is missing (train.py writes it beside "
            "checkpoints/). Copy the teacher's run folder whole, or give distill.check_split=false if you are "
            "sure it never saw this run's validation and test photos.")
    teacher = subset_ids(json.loads(manifest.read_text()))
    student = subset_ids(ids)
    for subset, seen, what in (("test", teacher["train"] | teacher["val"], "trained or selected on"),
                               ("val", teacher["train"], "trained on")):
        leaked = sorted(student[subset] & seen)
        if leaked:
            raise ConfigError(
                f"Teacher {path} was {what} {len(leaked)} of this run's {subset} photos (e.g. {leaked[:5]}, from "
                f"{manifest}): distilling it would leak them into training. Train the teacher on this run's "
                f"training photos only (the same data.seed and data.split), or distil into a run without a "
                f"{subset} split.")
