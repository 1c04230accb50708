"""The one inference path: a batch of photos -> logits at the label's size.

``network_logits`` and ``crop_and_resize`` serve the LightningModule's evaluation (and through it the
refinement evaluation and the image callbacks) and ``Predictor`` (predict.py, app.py, export checks,
benchmarks), so every surface scores the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fashionseg.core.errors import ConfigError

# A runner maps a uint8 batch (B, 3, H, W) to float logits (B, K, H, W): the eager network or ONNX Runtime.
Runner = Callable[[torch.Tensor], torch.Tensor]


def network_logits(net: nn.Module | Runner, images: torch.Tensor, tta_hflip: bool = False,
                   scales: Sequence[float] = (1.0,), multiple: int = 32) -> torch.Tensor:
    """Float logits (B, K, h, w) of a batch at the network's input size; with ``tta_hflip``, averaged
    with the mirror image's. ``net`` returns ``{"out": logits}`` (a network) or logits (a Runner).

    ``scales``: multi-scale test-time augmentation: the batch is also run resized by each factor (sides
    rounded to ``multiple``), and the logits, resized back (bilinear), are averaged over every scale (and
    mirror image). ``(1.0,)`` runs the input size alone.
    """
    h, w = images.shape[-2:]
    total = None
    for scale in scales:
        size = scaled_size((h, w), scale, multiple)
        x = images if size == (h, w) else \
            F.interpolate(_unit(images), size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        for flip in (False, True) if tta_hflip else (False,):
            out = net(x.flip(-1) if flip else x)
            logits = (out["out"] if isinstance(out, dict) else out).float()
            logits = logits.flip(-1) if flip else logits
            if tuple(logits.shape[-2:]) != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
    return total / (len(scales) * (2 if tta_hflip else 1))


def scaled_size(size: Sequence[int], scale: float, multiple: int = 32) -> tuple[int, ...]:
    """The input size (H, W) that ``scale`` runs: each side times ``scale``, rounded half up to ``multiple``."""
    return tuple(max(multiple, int(side * scale / multiple + 0.5) * multiple) for side in size)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Multi-scale TTA factors, checked: at least one, each positive."""
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"tta_scales={list(scales)}: give one or more positive factors of the input size, "
                          "e.g. [0.75,1.0,1.25], or [1.0] for none.")
    return scales


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 photos as float in [0, 1], which every network and Runner here also takes."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def lift_size(valid_hw: Sequence[int] | torch.Tensor, size: Sequence[int]) -> tuple[int, int]:
    """The size of probabilities handed to a refinement that lifts them (``Refinement.lifts``): the network's own
    resolution (the photo's area ``valid_hw`` in its input) where it is no larger than the photo's ``size``, else
    the photo's."""
    valid = tuple(int(v) for v in valid_hw)
    return valid if all(v <= s for v, s in zip(valid, size)) else tuple(int(s) for s in size)


def crop_and_resize(logits: torch.Tensor, valid_hw: Sequence[int] | torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits (B, K, h, w) of photos padded to the network's input: the padding cropped to the photo's
    area ``valid_hw`` (H', W'), the rest resized (bilinear) to the label's ``size`` (H, W)."""
    vh, vw = (int(v) for v in valid_hw)
    logits = logits[..., :vh, :vw]
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits
