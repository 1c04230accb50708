"""The fully connected CRF as a trainable layer on top of any network (CRF-as-RNN, Zheng et al., ICCV 2015).

Mean-field inference of the dense CRF (Krähenbühl & Koltun 2011) unrolled into a differentiable layer:
each iteration filters the current marginals Q with the spatial (Gaussian) and the appearance (bilateral)
kernel through the permutohedral lattice of ``permutohedral.py`` (the code the hand-tuned CRF runs),
weighs the two messages, applies a label compatibility matrix and adds the network's unary:

    x = unary - (w_bilateral * k_bilateral(Q) + w_spatial * k_spatial(Q)) @ compatibility.T,  Q = softmax(x)

Learned: the compatibility matrix (classes x classes, initialised to Potts, 1 - identity), or one per kernel
(``per_kernel_compatibility``, as Zheng et al.: x = unary - w_b k_b(Q) @ C_b.T - w_s k_s(Q) @ C_s.T), and the
two kernel weights; optionally (``learn_unary``) a weight a and per-class biases b on the unary, which becomes
a * log p + b (a temperature and a class prior for the network's probabilities, which the network's own
training does not fit to new photos). Initialised with the hand-tuned CRF's parameters (a = 1, b = 0), the
layer computes what that CRF computes (the same labels); training moves it from there. The kernel widths
stay fixed (config): the lattice is built from rounded lattice positions, so the filter has no gradient in
them.

The backward pass through the lattice is exact: the filter is linear in Q, so its gradient is the
transposed filter, which the lattice runs with the same steps (``PermutohedralLattice.adjoint``: splat and
slice swap their weights, the blur runs in reverse). ``lattice_filter`` is that pair as an autograd function
(checked by gradcheck in the tests); it costs about what the forward filter costs, where autograd through the
``embedding_bag`` calls would cost many times more on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fashionseg.models.permutohedral import (
    PermutohedralLattice,
    block_means,
    downsample_factor,
    lifted,
    maybe_compiled,
    pixel_xy,
    slice_rows,
    softmax_rows,
)

UNARY_FLOOR = math.log(1e-5)  # pydensecrf's unary_from_softmax clips probabilities at 1e-5


class LatticeFilter(torch.autograd.Function):
    """values (B * N, C) -> lattice.filter(values), with the adjoint filter as its backward."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, lattice: PermutohedralLattice) -> torch.Tensor:
        ctx.lattice = lattice
        return lattice.filter(values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.lattice.adjoint(grad.contiguous()), None


def lattice_filter(values: torch.Tensor, lattice: PermutohedralLattice) -> torch.Tensor:
    """The lattice's Gaussian filter of values (B * N, C), differentiable in values (the lattice needs
    ``adjoint=True`` for the backward pass)."""
    return LatticeFilter.apply(values, lattice)


class MeanFieldCRF(nn.Module):
    """Dense CRF mean field over logits, a differentiable layer.

    Args:
        num_classes: K.
        iterations: mean-field iterations (unrolled).
        gaussian_sxy: the spatial kernel's width, in pixels (fixed).
        gaussian_weight: the spatial kernel's initial weight.
        bilateral_sxy: the appearance kernel's spatial width, in pixels (fixed).
        bilateral_srgb: the appearance kernel's colour width, in colour levels (fixed).
        bilateral_weight: the appearance kernel's initial weight.
        learn_compatibility: learn the K x K compatibility matrix (else Potts, fixed).
        learn_weights: learn the two kernel weights (else fixed).
        per_kernel_compatibility: one compatibility matrix per kernel, (2, K, K): [bilateral, spatial], both
            from Potts (the same start as one shared matrix).
        learn_unary: learn the unary's weight a (from 1) and per-class biases b (from 0): x = a * log p + b -
            the pairwise terms. Off: a = 1, b = 0, no parameters (checkpoints without them still load).
        downsample: at inference (no gradient) only: 1, or s > 1 to run the mean field on s x s block averages
            and lift its pairwise term back to the full-resolution unary, as the hand-tuned CRF's ``downsample``
            (``TorchDenseCRF``). Training always runs at full resolution.
    """

    def __init__(self, num_classes: int, iterations: int = 5, gaussian_sxy: float = 3.0, gaussian_weight: float = 3.0,
                 bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0, bilateral_weight: float = 10.0,
                 learn_compatibility: bool = True, learn_weights: bool = True, downsample: int = 1,
                 per_kernel_compatibility: bool = False, learn_unary: bool = False):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"crf_layer.iterations must be >= 1, got {iterations}.")
        self.downsample = downsample_factor(downsample, "crf_layer.downsample")
        for name, value in (("gaussian_sxy", gaussian_sxy), ("bilateral_sxy", bilateral_sxy),
                            ("bilateral_srgb", bilateral_srgb)):
            if value <= 0:
                raise ValueError(f"crf_layer.{name} must be positive (a kernel width), got {value}.")
        self.num_classes, self.iterations = num_classes, iterations
        self.gaussian_sxy, self.bilateral_sxy, self.bilateral_srgb = gaussian_sxy, bilateral_sxy, bilateral_srgb
        potts = 1.0 - torch.eye(num_classes)
        if per_kernel_compatibility:
            potts = torch.stack([potts, potts.clone()])  # [bilateral, spatial]
        self.compatibility = nn.Parameter(potts, requires_grad=learn_compatibility)
        self.kernel_weights = nn.Parameter(torch.tensor([float(bilateral_weight), float(gaussian_weight)]),
                                           requires_grad=learn_weights)
        if learn_unary:
            self.unary_weight = nn.Parameter(torch.tensor(1.0))
            self.unary_bias = nn.Parameter(torch.zeros(num_classes))
        else:
            self.unary_weight = self.unary_bias = None
        self._gauss: dict[tuple, PermutohedralLattice] = {}

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, iterations={self.iterations}, gaussian_sxy={self.gaussian_sxy}, "
                f"bilateral_sxy={self.bilateral_sxy}, bilateral_srgb={self.bilateral_srgb}")

    def compatibilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The compatibility matrices (K, K) of the bilateral and of the spatial kernel (one shared, or one each)."""
        c = self.compatibility
        return (c[0], c[1]) if c.dim() == 3 else (c, c)

    def learned(self) -> dict:
        """The learned parameters as plain numbers: ``compatibility`` (K x K lists, or 2 x K x K: bilateral,
        spatial), both kernel weights and, with ``learn_unary``, ``unary_weight`` and ``unary_bias`` (K)."""
        w = self.kernel_weights.detach().cpu().tolist()
        out = {"compatibility": self.compatibility.detach().cpu().tolist(), "bilateral_weight": w[0],
               "gaussian_weight": w[1]}
        if self.unary_bias is not None:
            out |= {"unary_weight": self.unary_weight.item(), "unary_bias": self.unary_bias.detach().cpu().tolist()}
        return out

    def scaled_unary(self, log_probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The unary a * log p + b with the class axis at ``dim`` (log p itself without ``learn_unary``)."""
        if self.unary_bias is None:
            return log_probs
        shape = [1] * log_probs.dim()
        shape[dim] = self.num_classes
        return self.unary_weight * log_probs + self.unary_bias.view(shape)

    def lattices(self, rgb: torch.Tensor, factor: int = 1) -> tuple[PermutohedralLattice, PermutohedralLattice]:
        """Normalised bilateral and spatial lattices of images rgb (B, 3, H, W) in colour levels (0-255), both
        with rows in the bilateral lattice's pixel order; for photos ``factor`` times smaller than the layer's
        widths are given for (widths in pixels divided by it)."""
        b, _, h, w = rgb.shape
        n, device, adjoint = h * w, rgb.device, torch.is_grad_enabled()  # the backward's weights only if needed
        with torch.no_grad():
            colour = rgb.permute(0, 2, 3, 1).reshape(b, n, 3).float() / self.bilateral_srgb
            xy = pixel_xy(h, w, device) / (self.bilateral_sxy / factor)
            bilateral = PermutohedralLattice(torch.cat([xy.expand(b, n, 2), colour], -1), adjoint=adjoint)
            norm = bilateral.filter(torch.ones(b * n, 1, device=device)).add_(1e-20).rsqrt_()
            bilateral.scale(norm, norm)
            gauss = self.gaussian_lattice(h, w, b, device, factor).reordered(bilateral.order)
        return bilateral, gauss

    def gaussian_lattice(self, h: int, w: int, b: int, device: torch.device, factor: int = 1) -> PermutohedralLattice:
        """The normalised spatial lattice of b photos of h x w, pixels in row-major order (one per size)."""
        key = (h, w, b, str(device), factor)
        if key not in self._gauss:
            lattice = PermutohedralLattice((pixel_xy(h, w, device) / (self.gaussian_sxy / factor))[None],
                                           adjoint=True)
            lattice = lattice.in_pixel_order()
            norm = lattice.filter(torch.ones(h * w, 1, device=device)).add_(1e-20).rsqrt_()
            lattice.scale(norm, norm)
            self._gauss = {key: lattice.tiled(b)}
        return self._gauss[key]

    def forward(self, rgb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """rgb (B, 3, H, W) in colour levels 0-255 (uint8 or float), logits (B, K, H, W) -> the CRF's logits
        (B, K, H, W) after the last iteration (their softmax is the CRF's marginals Q)."""
        b, k, h, w = logits.shape
        if k != self.num_classes:
            raise ValueError(f"The CRF layer was built for {self.num_classes} classes; the network gave {k}.")
        if tuple(rgb.shape[-2:]) != (h, w):
            raise ValueError(f"The CRF layer needs the photo at the logits' size {(h, w)}; "
                             f"got {tuple(rgb.shape[-2:])}.")
        if self.downsample > 1 and not torch.is_grad_enabled():
            return self.upsampled(rgb, logits)
        return self.mean_field(rgb, logits)

    def upsampled(self, rgb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Inference at 1 / ``downsample`` of the size: the mean field on block averages of the photo and of the
        network's probabilities, its pairwise term (x - unary) lifted back to the full-resolution unary."""
        probs = torch.softmax(logits.float(), 1)
        small_rgb, small_probs = block_means(rgb.permute(0, 2, 3, 1), probs, self.downsample)
        small_logits = small_probs.clamp_min(1e-30).log()
        unary = F.log_softmax(small_logits, 1).clamp(min=UNARY_FLOOR)
        x = self.mean_field(small_rgb.permute(0, 3, 1, 2), small_logits, self.downsample)
        x = maybe_compiled(lifted)(x - self.scaled_unary(unary, 1), probs, "x")  # log p + the pairwise term
        if self.unary_bias is None:
            return x
        log_p = torch.log(probs.clamp(1e-5, 1.0))  # lifted's unary, replaced by the learned one
        return x + self.scaled_unary(log_p, 1) - log_p

    def mean_field(self, rgb: torch.Tensor, logits: torch.Tensor, factor: int = 1) -> torch.Tensor:
        """The layer's logits at the size of ``rgb`` and ``logits`` (kernel widths divided by ``factor``)."""
        b, k, h, w = logits.shape
        bilateral, gauss = self.lattices(rgb, factor)
        order = bilateral.order
        dtype = logits.dtype
        if dtype != torch.float32:
            bilateral, gauss = bilateral.to(dtype), gauss.to(dtype)
        rows = logits.permute(0, 2, 3, 1).reshape(b * h * w, k)[order]  # (B * N, K) in the lattice's order
        unary = self.scaled_unary(F.log_softmax(rows, 1).clamp(min=UNARY_FLOOR))
        x = unary
        shared = self.compatibility.dim() == 2
        if torch.is_grad_enabled():
            compat_b, compat_s = self.compatibilities()
            for _ in range(self.iterations):
                q = torch.softmax(x, 1)
                bilateral_message = self.kernel_weights[0] * lattice_filter(q, bilateral)
                spatial_message = self.kernel_weights[1] * lattice_filter(q, gauss)
                if shared:
                    x = unary - (bilateral_message + spatial_message) @ compat_b.t()
                else:
                    x = unary - bilateral_message @ compat_b.t() - spatial_message @ compat_s.t()
        else:  # inference: the same update, with the slices and the softmax fused as the hand-tuned CRF's
            step = maybe_compiled(mean_field_update)
            weights = self.kernel_weights.detach()
            compat_b, compat_s = (c.detach().t().contiguous() for c in self.compatibilities())
            q = softmax_rows(x)
            for _ in range(self.iterations):
                x, q = step(unary, bilateral.blurred(q), bilateral.slice_idx, bilateral.slice_w, gauss.blurred(q),
                            gauss.slice_idx, gauss.slice_w, weights, compat_b, None if shared else compat_s)
        out = torch.empty_like(x)
        out = out.index_copy(0, order, x)  # back to row-major pixels (differentiable)
        return out.view(b, h, w, k).permute(0, 3, 1, 2)


def mean_field_update(unary: torch.Tensor, bilateral: torch.Tensor, bilateral_idx: torch.Tensor,
                      bilateral_w: torch.Tensor, gauss: torch.Tensor, gauss_idx: torch.Tensor, gauss_w: torch.Tensor,
                      weights: torch.Tensor, compat_t: torch.Tensor, spatial_compat_t: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One mean-field update from the two blurred lattices: the layer's logits x and Q = softmax(x). The
    compatibility (transposed) is shared, or ``compat_t`` is the bilateral kernel's and ``spatial_compat_t`` the
    spatial one's."""
    bilateral_message = weights[0] * slice_rows(bilateral, bilateral_idx, bilateral_w)
    spatial_message = weights[1] * slice_rows(gauss, gauss_idx, gauss_w)
    if spatial_compat_t is None:
        x = unary - (bilateral_message + spatial_message) @ compat_t
    else:
        x = unary - bilateral_message @ compat_t - spatial_message @ spatial_compat_t
    return x, softmax_rows(x)


class CRFLayerNetwork(nn.Module):
    """A network with the trainable CRF on its main output: ``{"out": CRF logits, "aux": the network's side
    outputs, "unary": the network's own logits}``.

    Args:
        net: any network of this package (returns ``{"out": logits, ...}``; input uint8 or [0, 1] images).
        crf: the layer.
        freeze_network: train the CRF's parameters alone (stage 1): the network's weights get no gradient
            and it stays in eval mode (batch-norm statistics fixed).
    """

    def __init__(self, net: nn.Module, crf: MeanFieldCRF, freeze_network: bool = False):
        super().__init__()
        self.net, self.crf, self.freeze_network = net, crf, freeze_network
        if freeze_network:
            self.net.requires_grad_(False)

    def train(self, mode: bool = True) -> CRFLayerNetwork:
        super().train(mode)
        if self.freeze_network:
            self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict:
        if self.freeze_network and self.net.training:  # a trainer may restore each submodule's mode directly
            self.net.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_network):
            out = self.net(x)
        rgb = x if x.dtype == torch.uint8 else x * 255.0
        with torch.autocast(x.device.type, enabled=False):  # the mean field in float32 under mixed precision
            logits = self.crf(rgb, out["out"].float())
        return {**out, "out": logits, "unary": out["out"]}
