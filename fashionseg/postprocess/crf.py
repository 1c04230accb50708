"""Fully connected CRF (Krähenbühl & Koltun, 2011) over the network's probabilities.

Two backends: our PyTorch permutohedral lattice, or pydensecrf2.
"""

from __future__ import annotations

import numpy as np
import torch

from fashionseg.models.permutohedral import downsample_factor
from fashionseg.postprocess.base import Refinement, check_batch

# Photos smaller than this on a side are padded (edges repeated) for the torch backend, then cropped back:
# torch.compile specialises on sides of 1, so a 1x1 or 1xN photo would otherwise compile anew (seconds).
MIN_SIDE = 16


def pad_to_min_side(images: np.ndarray, probs: np.ndarray, min_side: int = MIN_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """images (B, H, W, 3), probs (B, K, H, W) padded at the bottom and right to at least min_side a side."""
    ph, pw = max(0, min_side - images.shape[1]), max(0, min_side - images.shape[2])
    if not (ph or pw):
        return images, probs
    return (np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge"),
            np.pad(probs, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge"))


class DenseCRF(Refinement):
    """Mean-field inference with a Gaussian smoothness kernel and a bilateral appearance kernel, Potts compatibility.

    Args:
        iterations: mean-field iterations.
        gaussian_sxy: the spatial (smoothness) kernel's width, in pixels.
        gaussian_compat: the spatial kernel's weight.
        bilateral_sxy: the appearance kernel's spatial width, in pixels.
        bilateral_srgb: the appearance kernel's colour width, in colour levels.
        bilateral_compat: the appearance kernel's weight.
        backend: ``torch`` (our batched PyTorch implementation, CPU or CUDA, see ``permutohedral.py``)
            or ``pydensecrf2`` (the authors' C++ code, pip install pydensecrf2).
        device: for the torch backend (default: CPU).
        compile: torch backend: ``torch.compile`` its per-pixel arithmetic (a one-off compile per
            process; speed-up measured by scripts/benchmark_crf.py). Falls back to eager, with a
            warning, where compiling fails.
        downsample: torch backend: 1 (exact, the full resolution) or s > 1: the mean field on s x s block
            averages, its pairwise term lifted back to the full-resolution unary (``TorchDenseCRF``);
            about s^2 times less work. Agreement with the exact CRF: scripts/benchmark_crf.py.
    """

    name = "crf"

    def __init__(self, iterations: int = 5, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
                 bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0, bilateral_compat: float = 10.0,
                 backend: str = "torch", device: str | None = None, compile: bool = True, downsample: int = 1):
        if backend not in ("torch", "pydensecrf2"):
            raise ValueError(f"Unknown CRF backend {backend!r}; available: torch, pydensecrf2.")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}.")
        self.downsample = downsample_factor(downsample, "postprocess.crf.downsample")
        if self.downsample > 1 and backend != "torch":
            raise ValueError(f"postprocess.crf.downsample={downsample} needs backend=torch (pydensecrf2 runs at "
                             "full resolution only).")
        self.iterations, self.backend = iterations, backend
        self.gaussian = (gaussian_sxy, gaussian_compat)
        self.bilateral = (bilateral_sxy, bilateral_srgb, bilateral_compat)
        self.device, self.compile = device, compile
        self._torch_crf = None

    def torch_crf(self):
        """Our backend, created once (it keeps the spatial lattice of the last photo size)."""
        if self._torch_crf is None:
            from fashionseg.models.permutohedral import TorchDenseCRF

            self._torch_crf = TorchDenseCRF(self.iterations, *self.gaussian, *self.bilateral, device=self.device,
                                            compile=self.compile, downsample=self.downsample)
        return self._torch_crf

    def refine_batch(self, images: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Same-size photos at once: images (B, H, W, 3) uint8, probs (B, K, H, W) -> labels (B, H, W) uint8."""
        check_batch(images, probs)
        if self.backend == "pydensecrf2":
            return np.stack([self.marginals(i, p).argmax(0) for i, p in zip(images, probs)]).astype(np.uint8)
        h, w = images.shape[1:3]
        images, probs = pad_to_min_side(images, probs, MIN_SIDE * self.downsample)
        probs = torch.as_tensor(probs, dtype=torch.float32)
        return self.torch_crf().labels(torch.as_tensor(images), probs).cpu().numpy()[:, :h, :w]

    def marginals(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """The CRF's approximate marginals Q, (K, H, W) float32."""
        if self.backend == "torch":
            h, w = image.shape[:2]
            images, probs = pad_to_min_side(image[None], probs[None], MIN_SIDE * self.downsample)
            q = self.torch_crf().marginals(torch.as_tensor(images), torch.as_tensor(probs, dtype=torch.float32))
            return q[0, :, :h, :w].cpu().numpy()
        try:
            import pydensecrf.densecrf as dcrf
            from pydensecrf.utils import unary_from_softmax
        except ImportError as e:
            raise ImportError(
                "The CRF needs pydensecrf2: pip install pydensecrf2 (or pip install -e '.[refine]')."
            ) from e
        k, h, w = probs.shape
        crf = dcrf.DenseCRF2D(w, h, k)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.clip(probs, 1e-8, 1.0))))
        crf.addPairwiseGaussian(sxy=self.gaussian[0], compat=self.gaussian[1])
        crf.addPairwiseBilateral(sxy=self.bilateral[0], srgb=self.bilateral[1], rgbim=np.ascontiguousarray(image),
                                 compat=self.bilateral[2])
        return np.asarray(crf.inference(self.iterations), dtype=np.float32).reshape(k, h, w)

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return self.marginals(image, probs).argmax(0)

    def warm_up(self, height: int, width: int, num_classes: int) -> None:
        if self.backend == "torch" and self.compile:  # the compile of the torch backend: tens of seconds, once
            self.run_once(height, width, num_classes)
