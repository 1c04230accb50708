"""Confusion-based metrics over a whole split (mIoU, Boundary IoU, pixel accuracy, per class) and their figures."""

from fashionseg.metrics.segmentation import (
    BoundaryIoU,
    SegmentationMetrics,
    SplitMetrics,
    boundary_scores,
    confusion_lists,
    labels_from_scores,
    scores,
)

__all__ = ["BoundaryIoU", "SegmentationMetrics", "SplitMetrics", "boundary_scores", "confusion_lists",
           "labels_from_scores", "scores"]
