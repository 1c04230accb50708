"""Segmentation losses on logits (B, K, H, W) against class maps (B, H, W).

Cross-entropy (optionally class-weighted), and Dice, focal and Lovasz from
segmentation_models_pytorch; ``Combined`` sums weighted terms. Deep supervision
(U2-Net's multi-output fusion loss) is applied by the LightningModule, which adds
``aux_weight`` x the same loss of every side output. Every loss takes ``ignore_index``
(the task's, from config): pixels with that label count for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from fashionseg.core.errors import ConfigError


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy, averaged over pixels (weighted pixels when ``weights`` is given).

    Args:
        weights: None, a list of K class weights, or ``"auto"``; ``auto`` must be resolved with
            ``median_frequency_weights`` before construction (train.py's ``resolve_auto_weights`` does this).
        boundary_weight: edge-aware training: pixels within ``boundary_width`` pixels (chessboard distance,
            at the training input's size) of a label edge weigh ``1 + boundary_weight``, the others 1; the loss
            is the weighted mean. 0 is plain cross-entropy. Void pixels make no edge.
    """

    def __init__(self, weights: Sequence[float] | None = None, ignore_index: int | None = None,
                 boundary_weight: float = 0.0, boundary_width: int = 3):
        super().__init__()
        if boundary_weight < 0 or boundary_width < 1:
            raise ConfigError(f"loss.boundary_weight must be >= 0 and loss.boundary_width >= 1 pixel, got "
                              f"{boundary_weight} and {boundary_width}.")
        self.boundary_weight, self.boundary_width = boundary_weight, int(boundary_width)
        if isinstance(weights, str):
            raise ConfigError(f"loss.weights={weights!r} must be resolved to numbers first "
                              "(train.py resolves `auto` from the training split).")
        if weights is not None and any(w < 0 for w in weights):
            raise ConfigError(f"loss.weights must be non-negative, got {list(weights)}.")
        self.register_buffer("weight", None if weights is None else torch.tensor(list(weights), dtype=torch.float32))
        self.ignore_index = -100 if ignore_index is None else ignore_index  # -100: PyTorch's "none"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise ConfigError(
                f"loss.weights has {self.weight.numel()} values but the task has {logits.shape[1]} classes; "
                "give one weight per class."
            )
        if not self.boundary_weight:
            return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)
        per_pixel = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index  # (B, H, W)
        weight = 1.0 + self.boundary_weight * near_edges(target, valid, self.boundary_width).float()
        if self.weight is not None:
            weight = weight * self.weight[target.clamp(0, len(self.weight) - 1)]
        weight = weight * valid
        return (weight * per_pixel).sum() / weight.sum().clamp(min=torch.finfo(weight.dtype).tiny)


def near_edges(target: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, W) bool: pixels with another class within ``width`` pixels (a (2w+1)^2 square); void pixels
    (``valid`` False) count as no class, so a void region makes no edge."""
    t = target.float()[:, None]
    k = 2 * width + 1
    highest = F.max_pool2d(torch.where(valid[:, None], t, -1.0), k, stride=1, padding=width)  # -1: no class
    lowest = -F.max_pool2d(torch.where(valid[:, None], -t, -float(2**24)), k, stride=1, padding=width)
    return (highest != lowest)[:, 0] & valid


class Dice(smp_losses.DiceLoss):
    """Soft Dice over classes (smp), from logits."""

    def __init__(self, smooth: float = 0.0, eps: float = 1e-7, ignore_index: int | None = None):
        super().__init__(mode="multiclass", from_logits=True, smooth=smooth, eps=eps, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.float(), target)


class Focal(smp_losses.FocalLoss):
    def __init__(self, gamma: float = 2.0, ignore_index: int | None = None):
        super().__init__(mode="multiclass", gamma=gamma, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.float(), target)


class Lovasz(smp_losses.LovaszLoss):
    def __init__(self, per_image: bool = False, ignore_index: int | None = None):
        super().__init__(mode="multiclass", per_image=per_image, from_logits=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.float(), target)


class Combined(nn.Module):
    """Weighted sum of losses, e.g. CE + Dice."""

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.losses)
        if len(self.weights) != len(self.losses):
            raise ConfigError(f"Combined loss: {len(self.losses)} losses but {len(self.weights)} weights.")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses))


def median_frequency_weights(frequencies: np.ndarray) -> list[float]:
    """Inverse-frequency class weights, median frequency balancing (Eigen & Fergus 2015).

    ``w_c = median(f) / f_c``; a class absent from the training split gets weight 0.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    present = f > 0
    w = np.zeros_like(f)
    w[present] = np.median(f[present]) / f[present]
    return [round(float(x), 6) for x in w]
