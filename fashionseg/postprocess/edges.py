"""Edge-based refinement: regions bounded by the photo's edges, merged across weak edges, vote on their class.

The network's boundaries are blurred (a stride-4 decoder, and a photo resized to 384x256); the photo's
own colour edges are sharp. Over-segment the photo along its edges, merge neighbouring regions whose
shared boundary is weak (a boundary region adjacency graph, ``skimage.graph.rag_boundary`` +
``merge_hierarchical``), then give each merged region the class of its mean probability: a label
boundary then runs along an edge of the photo.
"""

from __future__ import annotations

import numpy as np
from skimage import filters, graph
from skimage.feature import canny
from skimage.segmentation import slic, watershed

from fashionseg.postprocess.base import Refinement
from fashionseg.postprocess.superpixel import vote


class EdgeRegionVote(Refinement):
    """Edge map -> over-segmentation -> boundary RAG merge -> mean-probability vote per region.

    Args:
        detector: ``sobel`` (gradient magnitude) or ``canny`` (binary edges, smoothed by ``sigma``), of each
            colour channel, the strongest.
        sigma: Canny's Gaussian smoothing, in pixels.
        prob_weight: weight of the probabilities' own edges (Sobel of each class map, the strongest class)
            in the edge map, ``(1 - w) * photo edges + w * probability edges``; 0 uses the photo alone.
        segments: ``watershed`` (compact watershed of the edge map, regions bounded by edges) or ``slic``.
        n_segments: number of regions of the over-segmentation (watershed markers or SLIC's target).
        compactness: the watershed's (small: follow edges) or SLIC's compactness.
        threshold: regions merge while the mean edge strength along their shared boundary is below it;
            0 keeps the over-segmentation unmerged.
    """

    name = "edges"

    def __init__(self, detector: str = "sobel", sigma: float = 2.0, prob_weight: float = 0.75,
                 segments: str = "watershed", n_segments: int = 600, compactness: float = 0.001,
                 threshold: float = 0.02):
        if detector not in ("sobel", "canny"):
            raise ValueError(f"detector must be sobel or canny, got {detector!r}.")
        if segments not in ("watershed", "slic"):
            raise ValueError(f"segments must be watershed or slic, got {segments!r}.")
        if not 0 <= prob_weight <= 1:
            raise ValueError(f"prob_weight must lie in [0, 1], got {prob_weight}.")
        if n_segments < 1 or threshold < 0:
            raise ValueError(f"n_segments must be >= 1 and threshold >= 0, got {n_segments} and {threshold}.")
        self.detector, self.sigma, self.prob_weight = detector, sigma, prob_weight
        self.segments, self.n_segments, self.compactness, self.threshold = segments, n_segments, compactness, threshold

    def edge_map(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """(H, W) float edge strength: the photo's edges, mixed with the probabilities' by ``prob_weight``."""
        # Per colour channel, the strongest: a red-blue edge can be nearly invisible in grey.
        channels = [image[..., c] / 255.0 for c in range(3)]
        if self.detector == "sobel":
            edges = np.max([filters.sobel(c) for c in channels], axis=0)
        else:
            edges = np.max([canny(c, sigma=self.sigma) for c in channels], axis=0).astype(np.float64)
        if self.prob_weight:
            prob_edges = np.max([filters.sobel(p) for p in probs], axis=0)
            edges = (1 - self.prob_weight) * edges + self.prob_weight * prob_edges
        return edges

    def regions(self, image: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Region index per pixel (H, W), 0..R-1: the over-segmentation merged across weak edges."""
        if self.segments == "watershed":
            seg = watershed(edges, markers=self.n_segments, compactness=self.compactness)
        else:
            seg = slic(image, n_segments=self.n_segments, compactness=self.compactness, start_label=1)
        if self.threshold > 0 and seg.max() > 1:
            rag = graph.rag_boundary(seg, edges)
            seg = graph.merge_hierarchical(seg, rag, thresh=self.threshold, rag_copy=False, in_place_merge=True,
                                           merge_func=merge_boundary, weight_func=weight_boundary)
        return np.unique(seg, return_inverse=True)[1].reshape(seg.shape)

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return vote(self.regions(image, self.edge_map(image, probs)), probs)


# The boundary RAG's merge rule (scikit-image's "Hierarchical merging of region boundary RAGs" example): an edge
# holds the summed edge strength and pixel count of a shared boundary; merging two regions adds their counts.
def weight_boundary(rag: graph.RAG, src: int, dst: int, n: int) -> dict:
    default = {"weight": 0.0, "count": 0}
    count_src = rag[src].get(n, default)["count"]
    count_dst = rag[dst].get(n, default)["count"]
    weight_src = rag[src].get(n, default)["weight"]
    weight_dst = rag[dst].get(n, default)["weight"]
    count = count_src + count_dst
    return {"count": count, "weight": (count_src * weight_src + count_dst * weight_dst) / count}


def merge_boundary(rag: graph.RAG, src: int, dst: int) -> None:
    """Nothing to carry over: the edge weights are recomputed by ``weight_boundary``."""
