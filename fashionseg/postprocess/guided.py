"""Guided-filter refinement: the class probabilities smoothed along the photo's own edges, then the arg-max.

The network's probabilities are blurred at boundaries (a stride-4 decoder on a photo resized to its
input size, then upsampled); the photo's edges are sharp. The guided filter (He, Sun and Tang, *Guided
Image Filtering*, 2010) fits each probability map, in every window, as a linear function of the photo:
where the photo has an edge, the filtered probability steps with it; where the photo is flat, it is
smoothed. With ``subsample`` > 1 the linear coefficients are fitted on a grid ``subsample`` times coarser
and upsampled (*Fast Guided Filter*, He and Sun, 2015), which does most of the work on fewer pixels.
kornia's ``guided_blur`` does the filtering.

With ``lift=True`` the filter takes the network's probabilities at the network's own resolution (a photo
resized to a small input) and fits the coefficients there, on the photo's luma resized to that grid;
the coefficients are then lifted to the photo (``guided_lift``). That is the Fast Guided Filter with the
network's grid as the coarse one: the probabilities are never resized to the photo's size, and the mask's
edges still come from the full-resolution photo.
"""

from __future__ import annotations

import cv2
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
        lift: take probabilities at the network's resolution (smaller than the photo) and fit on that grid
            (``guided_lift``; gray guide); predict.py, eval.py and the benchmarks then pass them unresized.
            Probabilities at the photo's size are filtered as without it.
    """

    name = "guided"

    def __init__(self, radius: int = 6, eps: float = 1e-3, guide: str = "rgb", subsample: int = 2, lift: bool = False):
        if guide not in ("rgb", "gray"):
            raise ValueError(f"guide must be rgb or gray, got {guide!r}.")
        if lift and guide != "gray":
            raise ValueError("guided.lift=true fits the filter on the network's grid with the photo's gray levels: "
                             "set guided.guide=gray (or lift=false for the colour guide).")
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
        self.lifts = bool(lift)

    def filtered(self, images: np.ndarray, probs: np.ndarray) -> torch.Tensor:
        """Filtered probabilities (B, K, H, W) of photos (B, H, W, 3) uint8 and probabilities (B, K, H, W)."""
        if tuple(np.shape(probs)[-2:]) != tuple(np.shape(images)[1:3]):  # lift=True: the network's resolution
            check_batch(np.asarray(images), np.asarray(probs), self.lifts)
            probs = np.asarray(probs, dtype=np.float32)
            p = probs[:, 1:] if probs.shape[1] == 2 else probs
            q = torch.from_numpy(np.stack([guided_lift(i, pi, self.radius, self.eps) for i, pi in zip(images, p)]))
            return torch.cat([1 - q, q], 1) if probs.shape[1] == 2 else q
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
        if probs.shape[1:] != image.shape[:2]:  # lift=True: straight to the labels, at the photo's size only once
            if probs.shape[0] == 2:
                return (guided_lift(image, probs[1:], self.radius, self.eps)[0] > 0.5).astype(np.uint8)
            return guided_lift(image, probs, self.radius, self.eps).argmax(0)
        return labels_from_scores(self.filtered(image[None], probs[None]))[0].numpy()

    def refine_batch(self, images: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Same-size photos at once: images (B, H, W, 3) uint8, probs (B, K, H, W) -> labels (B, H, W) uint8."""
        check_batch(images, probs, self.lifts)
        if probs.shape[-2:] != images.shape[1:3]:
            return np.stack([self.refine(image, p) for image, p in zip(images, probs)]).astype(np.uint8)
        return labels_from_scores(self.filtered(images, probs)).numpy().astype(np.uint8)


def guided_lift(photo: np.ndarray, probs: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter of coarse ``probs`` (K, h, w) guided by a photo (H, W, 3) uint8 at full resolution: the
    linear coefficients fitted on the coarse grid (the photo's luma in [0, 1], resized to it by pixel area; the
    window ``radius`` photo pixels scaled to it), averaged, lifted bilinearly to (H, W) and applied to the
    full-resolution luma (He and Sun, *Fast Guided Filter*, 2015). OpenCV's box filters (reflected borders) and
    resizes do the work. Returns (K, H, W) float32."""
    (h, w), (big_h, big_w) = probs.shape[-2:], photo.shape[:2]
    luma = cv2.cvtColor(np.ascontiguousarray(photo), cv2.COLOR_RGB2GRAY).astype(np.float32) * np.float32(1 / 255)
    guide = cv2.resize(luma, (w, h), interpolation=cv2.INTER_AREA)[..., None]
    r = max(1, round(radius * h / big_h))

    def box(x: np.ndarray) -> np.ndarray:  # window means, (h, w, C)
        out = cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)
        return out.reshape(x.shape)

    p = np.ascontiguousarray(probs.transpose(1, 2, 0), dtype=np.float32)  # (h, w, K)
    mean_i, mean_p = box(guide), box(p)
    var_i = box(guide * guide) - mean_i * mean_i
    a = (box(guide * p) - mean_i * mean_p) / (var_i + np.float32(eps))
    b = mean_p - a * mean_i

    def lift(x: np.ndarray) -> np.ndarray:  # (h, w, K) -> (H, W, K)
        return cv2.resize(box(x), (big_w, big_h), interpolation=cv2.INTER_LINEAR).reshape(big_h, big_w, -1)

    return (lift(a) * luma[..., None] + lift(b)).transpose(2, 0, 1)
