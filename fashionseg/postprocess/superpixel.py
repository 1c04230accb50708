"""Superpixel voting: over-segment the photo, optionally merge regions, give each region its most probable class."""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2
from skimage import graph
from skimage.segmentation import felzenszwalb, slic

from fashionseg.postprocess.base import Refinement


class SuperpixelVote(Refinement):
    """Each superpixel takes the class of its mean probability (the network's soft majority vote).

    Args:
        method: ``felzenszwalb`` or ``slic`` (scikit-image).
        merge: null, ``rag`` (merge adjacent regions whose mean colours differ by less than
            ``rag_threshold``; skimage.graph) or ``kmeans`` (``clusters`` groups on mean colour and
            position, position weighted by ``position_weight``).
        scale: Felzenszwalb's scale (larger: larger regions).
        sigma: Felzenszwalb's pre-smoothing.
        min_size: Felzenszwalb's smallest region, in pixels.
        n_segments: SLIC's number of regions.
        compactness: SLIC's balance of colour and position.
        rag_threshold: the colour difference under which ``merge=rag`` merges neighbours.
        clusters: ``merge=kmeans``'s number of groups.
        position_weight: ``merge=kmeans``'s weight of position against colour.
        seed: ``merge=kmeans``'s random seed.
    """

    name = "superpixel"

    def __init__(self, method: str = "felzenszwalb", merge: str | None = None, scale: float = 100.0,
                 sigma: float = 0.5, min_size: int = 50, n_segments: int = 800, compactness: float = 10.0,
                 rag_threshold: float = 12.0, clusters: int = 200, position_weight: float = 0.5, seed: int = 0):
        if method not in ("felzenszwalb", "slic"):
            raise ValueError(f"method must be felzenszwalb or slic, got {method!r}.")
        if merge not in (None, "none", "rag", "kmeans"):
            raise ValueError(f"merge must be null, rag or kmeans, got {merge!r}.")
        self.method, self.merge = method, None if merge == "none" else merge
        self.scale, self.sigma, self.min_size = scale, sigma, min_size
        self.n_segments, self.compactness = n_segments, compactness
        self.rag_threshold, self.clusters = rag_threshold, clusters
        self.position_weight, self.seed = position_weight, seed

    def segments(self, image: np.ndarray) -> np.ndarray:
        """Region index per pixel (H, W), 0..R-1."""
        if self.method == "felzenszwalb":
            seg = felzenszwalb(image, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        else:
            seg = slic(image, n_segments=self.n_segments, compactness=self.compactness, start_label=0)
        if self.merge == "rag":
            rag = graph.rag_mean_color(image, seg)
            seg = graph.cut_threshold(seg, rag, self.rag_threshold)
        elif self.merge == "kmeans":
            seg = self._kmeans(image, seg)
        return np.unique(seg, return_inverse=True)[1].reshape(seg.shape)

    def _kmeans(self, image: np.ndarray, seg: np.ndarray) -> np.ndarray:
        seg = np.unique(seg, return_inverse=True)[1].reshape(seg.shape)
        n = seg.max() + 1
        if n <= self.clusters:
            return seg
        counts = np.bincount(seg.ravel(), minlength=n).astype(np.float64)
        yy, xx = np.mgrid[: seg.shape[0], : seg.shape[1]]
        feats = [np.bincount(seg.ravel(), weights=image[..., c].ravel(), minlength=n) / counts for c in range(3)]
        scale = 255.0 / max(seg.shape)  # positions on the colour scale, then weighted
        feats += [self.position_weight * scale * np.bincount(seg.ravel(), weights=a.ravel(), minlength=n) / counts
                  for a in (yy, xx)]
        _, assignment = kmeans2(np.stack(feats, 1), self.clusters, minit="++", seed=self.seed)
        return assignment[seg]

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return vote(self.segments(image), probs)


def vote(segments: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Label every region (H, W ints 0..R-1) with the arg-max of its summed class probabilities."""
    k, n = probs.shape[0], int(segments.max()) + 1
    flat = segments.ravel()
    sums = np.stack([np.bincount(flat, weights=probs[c].ravel(), minlength=n) for c in range(k)], 1)
    return sums.argmax(1)[segments]
