"""Small-region cleanup: connected regions below a size are refilled from their surroundings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components

from fashionseg.postprocess.base import Refinement


class SmallRegionCleanup(Refinement):
    """Remove connected regions smaller than ``min_size`` pixels, per class; each removed pixel
    takes the label of the nearest kept pixel.

    Args:
        min_size: pixels, one number for every class or one per class (0 keeps a class's regions).
            Values below 1 are fractions of the image's area.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours).
    """

    name = "cleanup"

    def __init__(self, min_size: float | Sequence[float] = 0.002, connectivity: int = 2):
        if connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 or 2, got {connectivity}.")
        self.min_size, self.connectivity = min_size, connectivity

    def sizes(self, k: int, area: int) -> np.ndarray:
        sizes = np.broadcast_to(np.asarray(self.min_size, dtype=np.float64), (k,)).copy() \
            if np.ndim(self.min_size) == 0 else np.asarray(self.min_size, dtype=np.float64)
        if len(sizes) != k:
            raise ValueError(f"min_size has {len(sizes)} values for {k} classes; give one number or one per class.")
        return np.where(sizes < 1, sizes * area, sizes)

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return self.clean(probs.argmax(0), probs.shape[0])

    def clean(self, label: np.ndarray, k: int) -> np.ndarray:
        sizes = self.sizes(k, label.size)
        removed = np.zeros(label.shape, bool)
        for c in range(k):
            if sizes[c] <= 0:
                continue
            regions, n = connected_components(label == c, connectivity=self.connectivity, return_num=True)
            if n == 0:
                continue
            counts = np.bincount(regions.ravel())
            small = np.flatnonzero(counts < sizes[c])
            small = small[small > 0]
            if len(small):
                removed |= np.isin(regions, small)
        if not removed.any() or removed.all():
            return label
        # Nearest kept pixel for every removed one (Euclidean distance transform with indices).
        _, (iy, ix) = ndimage.distance_transform_edt(removed, return_indices=True)
        return label[iy, ix]
