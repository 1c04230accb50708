"""Refinements of a network's prediction: each maps (photo, class probabilities) to a label map.

Every refinement is a callable ``f(image, probs) -> label`` with ``image`` (H, W, 3) uint8 RGB,
``probs`` (K, H, W) float class probabilities and ``label`` (H, W) uint8; configured from
``conf/postprocess/``.
"""

from fashionseg.postprocess.base import Identity, Refinement, check_inputs
from fashionseg.postprocess.cleanup import SmallRegionCleanup
from fashionseg.postprocess.crf import DenseCRF
from fashionseg.postprocess.edges import EdgeRegionVote
from fashionseg.postprocess.guided import GuidedFilter
from fashionseg.postprocess.superpixel import SuperpixelVote
from fashionseg.postprocess.superpixel_classifier import SuperpixelClassifier

__all__ = ["DenseCRF", "EdgeRegionVote", "GuidedFilter", "Identity", "Refinement", "SmallRegionCleanup",
           "SuperpixelClassifier", "SuperpixelVote", "check_inputs"]
