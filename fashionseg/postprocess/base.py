"""The refinement interface and its input checks."""

from __future__ import annotations

import numpy as np
import torch


def check_inputs(image: np.ndarray, probs: np.ndarray | torch.Tensor, lifted: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: image (H, W, 3) uint8, probs (K, H, W) float32 numpy (``lifted``: (K, h, w) at most
    the photo's size, for a refinement that lifts the network's own resolution to the photo's).

    Raises ValueError saying what is wrong.
    """
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {getattr(image, 'shape', type(image))} "
                         f"{getattr(image, 'dtype', '')}.")
    if not (isinstance(probs, np.ndarray) and probs.ndim == 3 and probs.shape[0] >= 2):
        raise ValueError(f"probs must be a (K, H, W) array of class probabilities with K >= 2, "
                         f"got {getattr(probs, 'shape', type(probs))}.")
    smaller = all(p <= i for p, i in zip(probs.shape[1:], image.shape[:2]))
    if probs.shape[1:] != image.shape[:2] and not (lifted and smaller):
        raise ValueError(f"probs cover {probs.shape[1:]} pixels but the image is {image.shape[:2]}; "
                         "resize the probabilities to the photo's size first.")
    return image, np.ascontiguousarray(probs, dtype=np.float32)


def check_batch(images: np.ndarray, probs: np.ndarray, lifted: bool = False) -> None:
    """Validate a batch of same-size photos: images (B, H, W, 3) uint8, probs (B, K, H, W); each as ``check_inputs``."""
    if images.ndim != 4 or probs.ndim != 4 or images.shape[0] != probs.shape[0]:
        raise ValueError(f"refine_batch needs images (B, H, W, 3) and probs (B, K, H, W); got {images.shape}, "
                         f"{probs.shape}.")
    for image, p in zip(images, probs):
        check_inputs(image, p, lifted)


def lifts(refine) -> bool:
    """Whether a refinement takes the network's probabilities at the network's resolution (``Refinement.lifts``);
    a refinement written as a plain callable does not."""
    return bool(getattr(refine, "lifts", False))


class Refinement:
    """Base class: ``__call__(image, probs) -> label (H, W) uint8``."""

    name = "refinement"
    # True: takes the network's probabilities at the network's resolution (``Predictor.probabilities(photos,
    # lifted=False)``) and lifts them to the photo's itself; callers then skip resizing them.
    lifts = False

    def __call__(self, image: np.ndarray, probs: np.ndarray | torch.Tensor) -> np.ndarray:
        image, probs = check_inputs(image, probs, self.lifts)
        return self.refine(image, probs).astype(np.uint8)

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def warm_up(self, height: int, width: int, num_classes: int) -> None:
        """Do the one-off work of a first call (a compile) now, on a photo of this size with this many classes:
        a server calls it at start-up so that its first request waits no longer than the others. Nothing to do
        here; a refinement with such a cost (the compiled CRF) calls ``run_once``."""

    def run_once(self, height: int, width: int, num_classes: int) -> None:
        """Refine one random photo of this size and class count."""
        rng = np.random.default_rng(0)
        probs = rng.random((num_classes, height, width), dtype=np.float32)
        self(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), probs / probs.sum(0))


class Identity(Refinement):
    """No refinement: the arg-max of the probabilities."""

    name = "none"

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return probs.argmax(0)
