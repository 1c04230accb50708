"""Guided-filter refinement: the class probabilities smoothed along the photo's own edges, then the arg-max.

The network's probabilities are blurred at boundaries (a stride-4 decoder on a photo resized to its
input size, then upsampled); the photo's edges are sharp. The guided filter (He, Sun and Tang, *Guided
Image Filtering*, 2010) fits each probability map, in every window, as a linear function of the photo:
where the photo has an edge, the filtered probability steps with it; where the photo is flat, it is
smoothed. With ``subsample`` > 1 the linear coefficients are fitted on a grid ``subsample`` times coarser
and upsampled (*Fast Guided Filter*, He and Sun, 2015), which does most of the work on fewer pixels.
kornia's ``guided_blur`` does the filtering.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.filters import guided_blur

from fashionseg.metrics import labels_from_scores
from fashionseg.postprocess.base import Refinement, check_batch


class GuidedFilter(Refinement):
    """Guided filter of the class probabilities with the photo as guide, then the arg-max.

    Args:
        radius: window radius in pixels of the photo (window ``2 * radius + 1``).
        eps: regularisation, in squared intensity units of a [0, 1] photo: edges of contrast well above
            ``sqrt(eps)`` are followed, weaker ones smoothed over.
        guide: ``rgb`` (the colour photo: follows colour edges; slower) or ``gray`` (its luminance).
        subsample: fit the coefficients on every ``subsample``-th pixel (Fast Guided Filter); 1 for the
            exact filter. Above 1, ``2 * radius // subsample`` must be even (e.g. an even radius for 2), so
            that the coarse window is centred.
    """

    name = "guided"

    def __init__(self, radius: int = 6, eps: float = 1e-3, guide: str = "rgb", subsample: int = 2):
        if guide not in ("rgb", "gray"):
            raise ValueError(f"guide must be rgb or gray, got {guide!r}.")
        if not (isinstance(radius, int) and radius >= 1):
            raise ValueError(f"radius must be an integer >= 1 (pixels), got {radius!r}.")
        if not (isinstance(subsample, int) and 1 <= subsample <= radius):
            raise ValueError(f"subsample must be an integer from 1 to radius ({radius}), got {subsample!r}.")
        if subsample > 1 and (2 * radius // subsample) % 2:
            # kornia fits the coefficients with a window of 2 * radius // subsample + 1 coarse pixels; an even
            # one sits half a coarse pixel off centre, and the filtered maps move by ``subsample`` pixels.
            ok = [r for r in range(max(1, radius - subsample), radius + subsample + 1)
                  if r >= subsample and (2 * r // subsample) % 2 == 0]
            raise ValueError(f"radius={radius} with subsample={subsample} gives the coarse grid an even window "
                             f"({2 * radius // subsample + 1} pixels), which moves the result off centre; use a "
                             f"radius such as {' or '.join(map(str, ok[:2]))}, or subsample=1.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}.")
        self.radius, self.eps, self.guide, self.subsample = radius, float(eps), guide, subsample

    def filtered(self, images: np.ndarray, probs: np.ndarray) -> torch.Tensor:
        """Filtered probabilities (B, K, H, W) of photos (B, H, W, 3) uint8 and probabilities (B, K, H, W)."""
        guide = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
        if self.guide == "gray":
            guide = guide.mean(1, keepdim=True)
        probs = torch.as_tensor(probs, dtype=torch.float32)
        # The filter is linear in its input and keeps constants: with two classes, filtering one probability
        # gives the other's as 1 - it, so half the work gives the same labels.
        p = probs[:, 1:] if probs.shape[1] == 2 else probs
        q = guided_blur(guide, p, 2 * self.radius + 1, self.eps, subsample=self.subsample)
        return torch.cat([1 - q, q], 1) if probs.shape[1] == 2 else q

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return labels_from_scores(self.filtered(image[None], probs[None]))[0].numpy()

    def refine_batch(self, images: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Same-size photos at once: images (B, H, W, 3) uint8, probs (B, K, H, W) -> labels (B, H, W) uint8."""
        check_batch(images, probs)
        return labels_from_scores(self.filtered(images, probs)).numpy().astype(np.uint8)
