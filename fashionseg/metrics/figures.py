"""Figures of a test result: row-normalised confusion matrix and per-class IoU, as one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fashionseg.metrics.segmentation import scores


def confusion_figure(confusion: Sequence[Sequence[float]], class_names: Sequence[str], path,
                     title: str = "") -> Path:
    """Left: confusion matrix normalised per true class (recall on the diagonal); right: IoU per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"Confusion matrix of shape {cm.shape} for {k} classes.")
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    s = scores(torch.from_numpy(cm), class_names)
    iou = np.array([s[f"iou_{name}"] for name in class_names])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(5 + 0.9 * k, 0.6 * k + 2.6), gridspec_kw={"width_ratios": [1.2, 1]})
    im = ax1.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax1.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax1.set_yticks(range(k), class_names)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("ground truth")
    ax1.set_title("confusion (share of each true class)")
    for i in range(k):
        for j in range(k):
            ax1.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=8,
                     color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.04)
    ax2.barh(range(k), 100 * np.nan_to_num(iou), color="#3b6ef5")
    ax2.set_yticks(range(k), class_names)
    ax2.invert_yaxis()
    ax2.set_xlim(0, 100)
    ax2.set_xlabel("IoU (%)")
    ax2.set_title(f"per-class IoU, mean {100 * np.nanmean(iou):.1f}%")
    for i, v in enumerate(iou):
        ax2.text(min(100 * np.nan_to_num(v) + 1, 88), i, "n/a" if np.isnan(v) else f"{100 * v:.1f}", va="center",
                 fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path) if isinstance(path, (str, Path)) else path  # a path or a binary file object
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path
