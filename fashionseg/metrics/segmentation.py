"""Mean IoU, global pixel accuracy and per-class IoU from a confusion matrix accumulated over a split, and
Boundary IoU, the same per class over the pixels near each region's contour."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Confusion matrix (rows = ground truth, columns = prediction) summed over every pixel of a split;
    pixels labelled ``ignore_index`` are left out."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs):
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, normalize=None, validate_args=False,
                         **kwargs)


def labels_from_scores(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Arg-max over the class dimension of scores (..., K, ...) (logits or probabilities), int64.

    The same as ``scores.argmax(dim)`` (ties: the first class wins) but faster on CPU, where
    arg-max over an outer dimension of a few classes is slow: K - 1 element-wise comparisons instead.
    """
    planes = scores.unbind(dim)
    best, labels = planes[0], torch.zeros(planes[0].shape, dtype=torch.int64, device=scores.device)
    for c, plane in enumerate(planes[1:], start=1):
        labels.masked_fill_(plane > best, c)
        best = torch.maximum(best, plane)
    return labels


def scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """Scores of a confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class that appears neither in the ground truth nor in the
    predictions has no IoU (NaN) and is left out of the mean; one predicted but absent from
    the ground truth scores 0.

    Returns:
        ``miou``, ``pixel_acc`` (correct pixels / all pixels), and ``iou_<class>`` per class.
    """
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    out = {"miou": float(torch.nanmean(iou)), "pixel_acc": float(tp.sum() / cm.sum().clamp(min=1))}
    out.update({f"iou_{name}": float(v) for name, v in zip(class_names, iou)})
    return out


def inner_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """The pixels of each mask within ``width`` pixels (chessboard distance) of its contour.

    masks: (B, K, H, W) bool. Outside the image counts as outside every mask, so a mask cut by the image
    border has a contour there, as in the Boundary IoU paper's reference code (an erosion by a 3x3 square
    ``width`` times, after a 1-pixel zero border). Returns (B, K, H, W) bool.
    """
    x = F.pad(masks.float(), (width, width, width, width))  # zeros: outside the image is outside the mask
    k = 2 * width + 1  # erosion = min over the (2w+1)^2 square, separable into rows and columns
    eroded = -F.max_pool2d(-x, (1, k), stride=1)
    eroded = -F.max_pool2d(-eroded, (k, 1), stride=1)
    return masks & (eroded < 0.5)


def band_width(height: int, width: int, dilation: float) -> int:
    """The band's width in pixels: ``dilation`` x the image diagonal, rounded, at least 1."""
    return max(1, round(dilation * math.hypot(height, width)))


class BoundaryIoU(Metric):
    """Boundary IoU (Cheng, Girshick, Dollar, Berg, Kirillov, CVPR 2021) per class, accumulated over a split.

    For class c, the ground-truth band G_d holds the pixels of class c within d of that region's contour
    and the predicted band P_d the same for the prediction; Boundary IoU_c = |G_d & P_d| / |G_d | P_d|,
    both counts summed over every photo of the split (like the confusion matrix behind mIoU). d is
    ``dilation`` x the image diagonal (0.02: 14 pixels at 600x400). Pixels labelled ``ignore_index``
    count in neither set. A class in neither band anywhere has no value (NaN, left out of the mean).
    """

    full_state_update = False

    def __init__(self, num_classes: int, dilation: float = 0.02, ignore_index: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < dilation < 1:
            raise ValueError(f"Boundary IoU dilation must be a fraction of the image diagonal in (0, 1), got "
                             f"{dilation}; 0.02 is the paper's.")
        self.num_classes, self.dilation, self.ignore_index = num_classes, dilation, ignore_index
        self.add_state("intersection", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds, target: (B, H, W) or (H, W) class indices of the same size."""
        if preds.shape != target.shape:
            raise ValueError(f"Boundary IoU: prediction {tuple(preds.shape)} and target {tuple(target.shape)} differ.")
        preds, target = preds.reshape(-1, *preds.shape[-2:]), target.reshape(-1, *target.shape[-2:])
        classes = torch.arange(self.num_classes, device=preds.device)[None, :, None, None]
        width = band_width(*preds.shape[-2:], self.dilation)
        true_band = inner_band(target[:, None] == classes, width)  # (B, K, H, W)
        pred_band = inner_band(preds[:, None] == classes, width)
        if self.ignore_index is not None:
            valid = (target != self.ignore_index)[:, None]
            true_band, pred_band = true_band & valid, pred_band & valid
        self.intersection += (true_band & pred_band).sum((0, 2, 3)).double()
        self.union += (true_band | pred_band).sum((0, 2, 3)).double()

    def compute(self) -> torch.Tensor:
        """(K,) Boundary IoU per class, NaN for a class in neither band."""
        return torch.where(self.union > 0, self.intersection / self.union.clamp(min=1),
                           torch.full_like(self.union, float("nan")))


def boundary_scores(per_class: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """``boundary_iou`` (mean over classes with a value) and ``boundary_iou_<class>`` from BoundaryIoU.compute()."""
    out = {"boundary_iou": float(torch.nanmean(per_class))}
    out.update({f"boundary_iou_{name}": float(v) for name, v in zip(class_names, per_class)})
    return out


class SplitMetrics(nn.Module):
    """Everything scored over a split: the confusion matrix (mIoU, pixel accuracy, IoU per class) and
    Boundary IoU, both leaving out ``ignore_index`` pixels.

    ``compute()`` returns the confusion matrix and the scores: ``miou``, ``pixel_acc``, ``iou_<class>``,
    ``boundary_iou`` and ``boundary_iou_<class>``.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int | None = None, boundary_dilation: float = 0.02):
        super().__init__()
        self.class_names = list(class_names)
        self.confusion = SegmentationMetrics(len(self.class_names), ignore_index=ignore_index)
        self.boundary = BoundaryIoU(len(self.class_names), boundary_dilation, ignore_index)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion.update(preds, target)
        self.boundary.update(preds, target)

    def compute(self) -> tuple[torch.Tensor, dict[str, float]]:
        confusion = self.confusion.compute()
        return confusion, {**scores(confusion, self.class_names),
                           **boundary_scores(self.boundary.compute(), self.class_names)}

    def reset(self) -> None:
        self.confusion.reset()
        self.boundary.reset()


def confusion_lists(confusion: torch.Tensor | Mapping[str, torch.Tensor]) -> list | dict[str, list]:
    """A confusion matrix as nested lists for JSON; ``{task: matrix}`` (a joint network's) as ``{task: lists}``."""
    if isinstance(confusion, Mapping):
        return {name: c.tolist() for name, c in confusion.items()}
    return confusion.tolist()
