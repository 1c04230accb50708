"""Fully connected CRF in plain PyTorch: mean-field inference with permutohedral-lattice filtering.

Follows Krähenbühl & Koltun (NIPS 2011) and their C++ code (densecrf, wrapped by pydensecrf2):
the lattice of Adams, Baek & Davis (2010) with the same elevation, rounding, barycentric weights,
blur and slice normalisation (alpha = 1 / (1 + 2^-d)), symmetric kernel normalisation, Potts
compatibility. Where the C++ code hashes every (pixel, vertex) pair, this version works on whole
tensors and does the expensive per-pixel work once per lattice:

- pixels are grouped by their enclosing simplex (one sort of one integer code per pixel), so that
  vertex keys are computed and deduplicated per simplex (far fewer than pixels on photos);
- the mean field keeps its pixels in that simplex order, so the splat reads memory sequentially;
- splat = a weighted sum over the pixels of each simplex, then over the simplex corners of each
  vertex; each blur step and the slice are weighted sums over 3 and d+1 lattice rows. All are
  ``F.embedding_bag`` calls (multi-threaded segment sums), with the kernel normalisation and the
  compatibility folded into their weights;
- a batch of photos shares one bilateral lattice (the image index is part of each code); the
  spatial lattice depends only on the photo size and is built once per size;
- the per-pixel arithmetic (elevation, rounding, ranks, barycentric weights, codes) runs through
  ``torch.compile`` where it works, eagerly elsewhere; compiled, each mean-field update (both
  slices, the unary and the softmax, written class by class) is one fused loop over the pixels;
- index arrays are int32, and the stable (radix) sort groups the codes.

Runs on CPU and CUDA; no extension to build.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F


class PermutohedralLattice:
    """Gaussian filtering in a d-dimensional feature space, for features (B, N, d) of B images with N pixels each.

    ``filter(values)`` with values (B * N, C) returns, for every pixel, the (approximate) sum over all
    pixels of the same image of exp(-|f_i - f_j|^2 / 2) * value_j, times the pixel's output scale
    (1 unless ``scale`` set one). Rows of values and results are pixels in the order ``self.order``
    (row r = pixel ``order[r]``): the lattice's own simplex order, in which its splat reads memory
    sequentially; an image's pixels stay in one block of N rows. ``reordered`` gives the same
    filter in any other order, ``in_pixel_order`` in the features' own order (``order`` None).
    """

    def __init__(self, features: torch.Tensor, compile: bool = True, adjoint: bool = False):
        b, n, d = features.shape
        device, self.d, self.size = features.device, d, b * n
        bn = b * n
        i = torch.arange(1, d + 1, device=device, dtype=torch.float32)
        scale = math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt(i * (i + 1))
        f = features.float().reshape(bn, d).t().contiguous()  # coordinate-major: contiguous per coordinate
        rem0, rank, weights = maybe_compiled(enclosing_simplices, compile)(f, scale)
        # Vertex keys (first d coordinates; the last follows from the zero sum) lie within d of
        # rem0 * (d+1); blur neighbours within d+1 more. Mixed-radix code: (image, key_0, ..., key_d-1).
        lo, hi = rem0[:d].amin(1).long(), rem0[:d].amax(1).long()
        mins = lo * (d + 1) - (2 * d + 1)
        spans = [int(v) for v in (hi - lo) * (d + 1) + 2 * (2 * d + 1) + 1]
        if b * math.prod(spans) * (d + 1) ** d >= 2 ** 62:
            raise ValueError("Lattice keys need more than 62 bits: the features span too wide a range "
                             "(scale them down, e.g. larger sxy/srgb) or filter fewer images at once.")
        strides = [math.prod(spans[j + 1:]) for j in range(d)]
        stride_t = torch.tensor(strides, device=device)
        code = maybe_compiled(simplex_codes, compile)(rem0, rank, mins, stride_t, math.prod(spans), n)
        del rem0, rank
        # Group pixels by enclosing simplex (one sort; on CPU the stable sort is the faster radix sort);
        # the image index leads the code, so each image keeps one block of rows.
        sorted_codes, perm = torch.sort(code, stable=True)
        del code
        simplex_code, simplex, counts = torch.unique_consecutive(sorted_codes, return_inverse=True,
                                                                 return_counts=True)  # simplex: of each row
        del sorted_codes
        s = counts.numel()
        starts = counts.cumsum(0) - counts
        corner_codes = maybe_compiled(simplex_corners, compile)(simplex_code, stride_t)
        # Distinct vertices (one more sort), with the corners of each vertex side by side; corners are
        # numbered simplex-major (s * (d+1) + k).
        sorted_corners, self.corner_order = torch.sort(corner_codes.reshape(-1), stable=True)
        self.codes, per_vertex = torch.unique_consecutive(sorted_corners, return_counts=True)
        self.m = m = self.codes.numel()
        self.corner_starts = per_vertex.cumsum(0) - per_vertex
        # Index arrays are built in int32 where they fit (see _compact_indices): half the memory traffic.
        itype = torch.int32 if bn * (d + 1) < 2 ** 31 else torch.int64
        corners = torch.empty(s * (d + 1), dtype=itype, device=device)  # lattice row (1-based) of each corner
        corners[self.corner_order] = torch.arange(1, m + 1, dtype=itype, device=device).repeat_interleave(per_vertex)
        # Splat: pixels -> simplex corners -> vertices. Bag (s, k) holds the rows of simplex s (consecutive
        # in simplex order) weighted for corner k; simplex-major, so that the d+1 bags of a simplex read
        # the same rows while they are in cache (faster than corner-major).
        self.order = perm
        weights = weights[perm]  # (bn, d+1), rows in simplex order from here on
        self.pixels, self.splat_w = maybe_compiled(simplex_major_bags, compile)(simplex, starts, counts, weights, itype)
        offsets = torch.arange(d + 1, device=device) * counts[:, None]
        self.pixel_starts = ((d + 1) * starts[:, None] + offsets).reshape(-1)
        # Slice: each pixel's d+1 vertices (row 0 of the blurred lattice is an always-zero row).
        self.slice_idx = corners.view(s, d + 1)[simplex]  # (bn, d+1)
        alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.slice_w = weights * alpha  # (bn, d+1); alpha of densecrf's slice
        # The adjoint (transposed) filter's weights, kept only where a backward pass needs them: its splat
        # weighs with the slice's weights and its slice with the splat's (see ``adjoint``).
        self.splat_w_adj, self.slice_w_adj = (self.splat_w * alpha, weights) if adjoint else (None, None)
        # Blur neighbours: along direction j a key moves by -1 in every coordinate and by +d in j (and back).
        # Each blur step is one more weighted sum: row r <- 1 * row r + 1/2 * (both neighbours), 0 = none.
        rows = torch.arange(m + 1, device=device)
        zero = torch.zeros(1, dtype=torch.int64, device=device)
        self.blur_idx = []
        for j in range(d + 1):
            step = sum(strides) - (d + 1) * (strides[j] if j < d else 0)
            up = torch.cat([zero, self._find(self.codes + step)])
            down = torch.zeros_like(up)
            down[up] = rows  # u + step = v  <=>  v - step = u: one search per direction
            down[0] = 0  # (all vertices without an up neighbour wrote to row 0)
            self.blur_idx.append(torch.stack([rows, down, up], 1))
        self.blur_w = torch.tensor([1.0, 0.5, 0.5], device=device).expand(m + 1, 3).contiguous()
        self._compact_indices()

    def _compact_indices(self) -> PermutohedralLattice:
        """int32 indices where they fit (the same dtype for all, as embedding_bag wants): half the memory
        traffic of every filter call."""
        dtype = torch.int32 if self.pixels.numel() < 2 ** 31 else torch.int64
        for name in ("pixels", "pixel_starts", "corner_order", "corner_starts", "slice_idx"):
            setattr(self, name, getattr(self, name).to(dtype))
        self.blur_idx = [idx.to(dtype) for idx in self.blur_idx]
        return self

    def _find(self, codes: torch.Tensor) -> torch.Tensor:
        """Lattice row (1-based) of each code, 0 where the vertex does not exist."""
        pos = torch.searchsorted(self.codes, codes).clamp(max=self.codes.numel() - 1)
        return torch.where(self.codes[pos] == codes, pos + 1, torch.zeros_like(pos))

    def reordered(self, order: torch.Tensor) -> PermutohedralLattice:
        """The same filter for values given (and returned) in another pixel order: row r = pixel ``order[r]``."""
        new = copy.copy(self)
        position = torch.empty_like(order, dtype=self.pixels.dtype)  # pixel -> new row, in the index dtype
        position[order] = torch.arange(order.numel(), dtype=position.dtype, device=order.device)
        if self.order is None:  # rows are pixels
            new.pixels, rows = position[self.pixels], order
        else:
            current = torch.empty_like(self.order)
            current[self.order] = torch.arange(self.order.numel(), device=order.device)  # pixel -> current row
            new.pixels, rows = position[self.order][self.pixels], current[order]
        new.slice_idx, new.slice_w, new.order = self.slice_idx[rows], self.slice_w[rows], order
        if self.slice_w_adj is not None:
            new.slice_w_adj = self.slice_w_adj[rows]
        return new._compact_indices()

    def in_pixel_order(self) -> PermutohedralLattice:
        """The same filter with rows = pixels (``order`` None): values in the features' own order."""
        new = self.reordered(torch.arange(self.size, device=self.codes.device))
        new.order = None
        return new

    def tiled(self, b: int) -> PermutohedralLattice:
        """The filter of ``b`` images with the same features as this one-image lattice (values (b * N, C))."""
        new = copy.copy(self)
        n, p, c, m = self.size, self.pixels.numel(), self.corner_order.numel(), self.m
        new.size = b * n
        i = torch.arange(b, device=self.codes.device)[:, None]
        new.order = None if self.order is None else (self.order[None] + i * n).reshape(-1)
        new.pixels, new.splat_w = (self.pixels[None] + i * n).reshape(-1), self.splat_w.repeat(b)
        new.pixel_starts = (self.pixel_starts[None] + i * p).reshape(-1)
        new.corner_order = (self.corner_order[None] + i * c).reshape(-1)
        new.corner_starts = (self.corner_starts[None] + i * c).reshape(-1)
        shift = lambda idx: torch.where(idx > 0, idx[None] + (i * m).view(-1, *[1] * idx.dim()), 0)  # noqa: E731
        new.blur_idx = [torch.cat([idx[:1], shift(idx[1:]).reshape(-1, idx.shape[1])]) for idx in self.blur_idx]
        new.blur_w = torch.cat([self.blur_w[:1], self.blur_w[1:].repeat(b, 1)])
        new.slice_idx, new.slice_w = shift(self.slice_idx).reshape(-1, self.d + 1), self.slice_w.repeat(b, 1)
        if self.splat_w_adj is not None:
            new.splat_w_adj, new.slice_w_adj = self.splat_w_adj.repeat(b), self.slice_w_adj.repeat(b, 1)
        new.m = b * m
        return new._compact_indices()

    def scale(self, inputs: torch.Tensor | float = 1.0, outputs: torch.Tensor | float = 1.0) -> None:
        """Fold per-pixel factors (B * N,) or scalars into the filter: filter(v) := outputs * filter(inputs * v)."""
        def per_entry(f):  # a factor per splat entry (the bag layout of ``pixels``)
            return f.reshape(-1)[self.pixels] if isinstance(f, torch.Tensor) else f

        def per_row(f):  # a factor per row, for the slice
            return f.reshape(-1, 1) if isinstance(f, torch.Tensor) else f

        self.splat_w, self.slice_w = self.splat_w * per_entry(inputs), self.slice_w * per_row(outputs)
        if self.splat_w_adj is not None:  # the transpose: the outputs' factors scale its inputs, and back
            self.splat_w_adj = self.splat_w_adj * per_entry(outputs)
            self.slice_w_adj = self.slice_w_adj * per_row(inputs)

    def to(self, dtype: torch.dtype) -> PermutohedralLattice:
        """The same filter with its weights in ``dtype`` (float64 for ``torch.autograd.gradcheck``)."""
        new = copy.copy(self)
        new.splat_w, new.slice_w, new.blur_w = (w.to(dtype) for w in (self.splat_w, self.slice_w, self.blur_w))
        if self.splat_w_adj is not None:
            new.splat_w_adj, new.slice_w_adj = self.splat_w_adj.to(dtype), self.slice_w_adj.to(dtype)
        return new

    def blurred(self, values: torch.Tensor) -> torch.Tensor:
        """Splat and blur values (B * N, C): the lattice rows (1 + vertices, C) that the slice reads (row 0 = 0)."""
        corners = F.embedding_bag(self.pixels, values, self.pixel_starts, per_sample_weights=self.splat_w,
                                  mode="sum")  # ((d+1) * simplices, C)
        lattice = F.embedding_bag(self.corner_order, corners, self.corner_starts, mode="sum")
        lattice = torch.cat([values.new_zeros(1, values.shape[1]), lattice])
        for idx in self.blur_idx:  # blur along each lattice direction: [1/2, 1, 1/2]
            lattice = F.embedding_bag(idx, lattice, per_sample_weights=self.blur_w, mode="sum")
        return lattice

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """values (B * N, C) float32 -> filtered (B * N, C).

        Differentiable in ``values``: every step is an ``embedding_bag`` (a weighted sum of rows) with fixed
        weights, so autograd's backward is the exact adjoint of the filter (its transpose: splat and slice
        swap places, the blur runs in reverse order)."""
        return slice_rows(self.blurred(values), self.slice_idx, self.slice_w)

    def adjoint(self, values: torch.Tensor) -> torch.Tensor:
        """The transposed filter, values (B * N, C) -> (B * N, C): <filter(u), v> = <u, adjoint(v)>. The same
        steps as ``filter``: a splat with the slice's weights, the blur directions in reverse order (each
        blur step is symmetric), a slice with the splat's weights. Needs ``adjoint=True`` at construction."""
        if self.splat_w_adj is None:
            raise RuntimeError("This lattice was built without adjoint=True; it has no backward pass.")
        corners = F.embedding_bag(self.pixels, values, self.pixel_starts, per_sample_weights=self.splat_w_adj,
                                  mode="sum")
        lattice = F.embedding_bag(self.corner_order, corners, self.corner_starts, mode="sum")
        lattice = torch.cat([values.new_zeros(1, values.shape[1]), lattice])
        for idx in reversed(self.blur_idx):
            lattice = F.embedding_bag(idx, lattice, per_sample_weights=self.blur_w, mode="sum")
            lattice[0] = 0  # row 0 stands for "no neighbour": it holds no vertex, so no gradient
        return slice_rows(lattice, self.slice_idx, self.slice_w_adj)


class TorchDenseCRF:
    """Mean-field inference of the fully connected CRF with Gaussian + bilateral kernels, Potts compatibility.

    Same model, parameters and unary as ``pydensecrf2`` (``unary_from_softmax``, 1e-5 clip); whole
    batches of same-size photos at once.

    ``downsample`` s > 1 runs the mean field on the photo and the probabilities averaged over s x s blocks
    (the kernel widths in pixels divided by s: the same kernels, s^2 times fewer pixels to filter), then
    adds the last iteration's pairwise term, lifted back bilinearly, to the full-resolution unary: the labels
    keep the network's own edges, and the kernels (tens of pixels wide, normalised) change little between
    resolutions. Agreement with the full-resolution CRF and the speed-up: ``scripts/benchmark_crf.py``.
    """

    def __init__(self, iterations: int = 5, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
                 bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0, bilateral_compat: float = 10.0,
                 device: str | torch.device | None = None, compile: bool = True, downsample: int = 1):
        self.iterations, self.downsample = iterations, downsample_factor(downsample)
        self.gaussian_sxy, self.gaussian_compat = gaussian_sxy, gaussian_compat
        self.bilateral_sxy, self.bilateral_srgb, self.bilateral_compat = bilateral_sxy, bilateral_srgb, bilateral_compat
        self.device = torch.device(device) if device else None
        self.compile = compile
        self._gauss: dict[tuple, PermutohedralLattice] = {}
        self._small: TorchDenseCRF | None = None  # the kernels at 1 / downsample of the size

    def gaussian_lattice(self, h: int, w: int, b: int, device: torch.device) -> PermutohedralLattice:
        """The spatial kernel depends only on the photo size: built once per size and device, normalised,
        for b photos, in the pixels' row-major order."""
        key = (h, w, b, str(device))
        if key not in self._gauss:
            lattice = PermutohedralLattice((pixel_xy(h, w, device) / self.gaussian_sxy)[None], self.compile)
            lattice = lattice.in_pixel_order()
            norm = lattice.filter(torch.ones(h * w, 1, device=device)).add_(1e-20).rsqrt_()
            lattice.scale(norm, norm * self.gaussian_compat)
            self._gauss = {key: lattice.tiled(b)}
        return self._gauss[key]

    def marginals(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """images (B, H, W, 3) uint8, probs (B, K, H, W) -> Q (B, K, H, W) float32."""
        if self.downsample > 1:
            return self.upsampled(images, probs, "q")
        b, k, h, w = probs.shape
        q, order = self.mean_field(images, probs)
        return in_pixel_order(q, order, (b, h, w, k)).permute(0, 3, 1, 2).contiguous()

    def labels(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """images (B, H, W, 3) uint8, probs (B, K, H, W) -> the labels argmax Q, (B, H, W) uint8."""
        if self.downsample > 1:
            return self.upsampled(images, probs, "labels")
        b, k, h, w = probs.shape
        labels, order = self.mean_field(images, probs, out="labels")
        return in_pixel_order(labels, order, (b, h, w))

    @torch.no_grad()
    def upsampled(self, images: torch.Tensor, probs: torch.Tensor, out: str) -> torch.Tensor:
        """The mean field on s x s block averages (s = ``downsample``), its pairwise term lifted to the full
        resolution and added to the full unary: ``out`` labels (B, H, W) uint8, or Q (B, K, H, W)."""
        device = self.device or probs.device
        images, probs = images.to(device), probs.to(device).float()
        small_images, small_probs = block_means(images, probs, self.downsample)
        b, k, h, w = small_probs.shape
        if self._small is None:
            self._small = self.scaled(self.downsample)
        pairwise, order = self._small.mean_field(small_images, small_probs, out="pairwise")
        pairwise = in_pixel_order(pairwise, order, (b, h, w, k)).permute(0, 3, 1, 2)
        return maybe_compiled(lifted, self.compile)(pairwise, probs, out)

    def scaled(self, factor: int) -> TorchDenseCRF:
        """This CRF's kernels for photos ``factor`` times smaller (widths in pixels divided by it)."""
        new = copy.copy(self)
        new.gaussian_sxy, new.bilateral_sxy = self.gaussian_sxy / factor, self.bilateral_sxy / factor
        new.downsample, new._gauss, new._small = 1, {}, None
        return new

    @torch.no_grad()
    def mean_field(self, images: torch.Tensor, probs: torch.Tensor,
                   out: str = "q") -> tuple[torch.Tensor, torch.Tensor]:
        """Q (B * H * W, K) with its rows in the order ``order`` of the pixels (row r = pixel order[r]);
        ``out="labels"``: instead of Q the arg-max labels (B * H * W,) uint8 (the last softmax is skipped);
        ``out="pairwise"``: the last iteration's pairwise term (B * H * W, K) (its unary + it = log Q + const).

        Runs at the size of ``images`` and ``probs`` (``downsample`` is ``upsampled``'s)."""
        device = self.device or probs.device
        images, probs = images.to(device), probs.to(device).float()
        b, k, h, w = probs.shape
        n = h * w
        rgb = images.reshape(b, n, 3).float() / self.bilateral_srgb
        xy = pixel_xy(h, w, device) / self.bilateral_sxy
        bilateral = PermutohedralLattice(torch.cat([xy.expand(b, n, 2), rgb], -1), self.compile)
        norm = bilateral.filter(torch.ones(b * n, 1, device=device)).add_(1e-20).rsqrt_()  # symmetric normalisation
        bilateral.scale(norm, norm * self.bilateral_compat)
        # Mean field runs with the pixels in the bilateral lattice's order (each photo keeps its block
        # of n rows); the spatial lattice (one per photo size) is re-indexed to that order.
        order = bilateral.order
        gauss = self.gaussian_lattice(h, w, b, device).reordered(order)
        unary, q = maybe_compiled(gather_unary, self.compile)(probs.view(b, k, n), order)  # -energy, softmax
        step = maybe_compiled(mean_field_step, self.compile)
        for i in range(self.iterations):
            q = step(unary, bilateral.blurred(q), bilateral.slice_idx, bilateral.slice_w,
                     gauss.blurred(q), gauss.slice_idx, gauss.slice_w, out if i == self.iterations - 1 else "q")
        return q, order


def enclosing_simplices(f: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel, features f (d, P): the remainder-0 vertex rem0 (d+1, P, in units of d+1), the rank of
    each coordinate's residual (d+1, P) and the barycentric weights of the d+1 vertices (P, d+1).

    Elementwise arithmetic only, written for torch.compile, which fuses it into a few loops (much faster
    than eager on CPU); the same steps as densecrf's ``Permutohedral::init``.
    """
    d = f.shape[0]
    cf = f * scale[:, None]
    # Elevate onto the hyperplane x . 1 = 0 of R^(d+1): e_j = sum_{k>=j} cf_k - j cf_(j-1).
    elevated = [None] * (d + 1)
    suffix = torch.zeros_like(cf[0])
    for j in range(d, 0, -1):
        elevated[j] = suffix - j * cf[j - 1]
        suffix = suffix + cf[j - 1]
    elevated[0] = suffix
    elevated = torch.stack(elevated)
    # Nearest remainder-0 point, then the rank of each residual (ties: the lower index ranks first).
    down = torch.floor(elevated / (d + 1))
    rem0 = torch.where((down + 1) * (d + 1) - elevated < elevated - down * (d + 1), down + 1, down)
    total = rem0.sum(0)
    diff = elevated - rem0 * (d + 1)
    rank = []
    for c in range(d + 1):
        r = torch.zeros_like(total)
        for a in range(d + 1):
            if a != c:
                r = r + ((diff[a] >= diff[c]) if a < c else (diff[a] > diff[c])).float()
        rank.append(r)
    rank = torch.stack(rank) + total
    low, high = (rank < 0).float(), (rank > d).float()
    rank = rank + (d + 1) * (low - high)
    rem0 = rem0 + low - high
    # Barycentric weights: with v_r the residual of rank r, w_0 = 1 + v_d - v_0, w_t = v_(d-t) - v_(d+1-t).
    residual = (elevated - rem0 * (d + 1)) / (d + 1)
    by_rank = [sum(residual[j] * (rank[j] == r).float() for j in range(d + 1)) for r in range(d + 1)]
    weights = [by_rank[d] + 1.0 - by_rank[0]] + [by_rank[d - t] - by_rank[d + 1 - t] for t in range(1, d + 1)]
    return rem0, rank.long(), torch.stack(weights, 1)


def simplex_codes(rem0: torch.Tensor, rank: torch.Tensor, mins: torch.Tensor, strides: torch.Tensor,
                  image_stride: int, n: int) -> torch.Tensor:
    """Mixed-radix code per pixel of its enclosing simplex: (image, remainder-0 vertex, first d ranks)."""
    d = rank.shape[0] - 1
    base = (torch.arange(rank.shape[1], device=rank.device) // n) * image_stride
    code = torch.zeros_like(base)
    for j in range(d):
        base = base + (rem0[j].long() * (d + 1) - mins[j]) * strides[j]
        code = code * (d + 1) + rank[j]
    return base * (d + 1) ** d + code


def gather_unary(probs: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log(clip(p, 1e-5)) as pydensecrf's unary_from_softmax, for probs (B, K, N), rows in ``order``: (B * N, K);
    and its softmax, the mean field's start (one loop when compiled)."""
    n, k = probs.shape[2], probs.shape[1]
    rows = order[:, None]
    p = probs[rows // n, torch.arange(k, device=probs.device)[None, :], rows % n]
    unary = torch.log(p.clamp(1e-5, 1.0))
    return unary, softmax_rows(unary)


def simplex_corners(simplex: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Codes (S, d+1) of the d+1 vertices of S simplices given by ``simplex_codes``: vertex k has
    key_j = rem0_j + k, minus d+1 where rank_j > d - k."""
    d = strides.shape[0]
    base = simplex // (d + 1) ** d
    rank = [simplex // (d + 1) ** (d - 1 - j) % (d + 1) for j in range(d)]
    corners = []
    for k in range(d + 1):
        c = base + k * strides.sum()
        for j in range(d):
            c = c - (d + 1) * strides[j] * (rank[j] > d - k).long()
        corners.append(c)
    return torch.stack(corners, 1)


def simplex_major_bags(simplex: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and weights of the splat's bags, bag (s, k) = the ``counts[s]`` rows from ``starts[s]`` with
    weights ``weights[row, k]``, bags in simplex-major order; ``simplex`` is each row's simplex. Each
    row writes its d+1 entries (one scatter, no per-entry index array); rows in ``dtype``."""
    bn, d1 = weights.shape
    row = torch.arange(bn, device=weights.device)
    first, count = starts[simplex], counts[simplex]
    pos = ((d1 - 1) * first + row)[:, None] + torch.arange(d1, device=weights.device)[None, :] * count[:, None]
    pos = pos.reshape(-1)
    rows = torch.empty(bn * d1, dtype=dtype, device=weights.device)
    rows = rows.index_put((pos,), row.to(rows.dtype)[:, None].expand(bn, d1).reshape(-1))
    splat_w = weights.new_empty(bn * d1).index_put((pos,), weights.reshape(-1))
    return rows, splat_w


def slice_rows(lattice: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The slice, sum_k weights[:, k] * lattice[idx[:, k]]: an embedding_bag eagerly; under torch.compile
    a gather that fuses with the code around it (no (B * N, C) result written and read back)."""
    if not torch.compiler.is_compiling():
        return F.embedding_bag(idx, lattice, per_sample_weights=weights, mode="sum")
    out = lattice[idx[:, 0]] * weights[:, :1]
    for k in range(1, idx.shape[1]):
        out = out + lattice[idx[:, k]] * weights[:, k:k + 1]
    return out


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """arg-max over the last dim (ties: the first class), uint8; class by class, as ``softmax_rows``."""
    best, labels = x[:, 0], torch.zeros(x.shape[0], dtype=torch.uint8, device=x.device)
    for c in range(1, x.shape[1]):
        labels = torch.where(x[:, c] > best, c, labels).to(torch.uint8)
        best = torch.maximum(best, x[:, c])
    return labels


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim, for few classes. Written class by class: compiled, inductor vectorises
    it over rows, which it does not for a reduction over a short last dim."""
    cols = [x[:, i] for i in range(x.shape[1])]
    top = cols[0]
    for col in cols[1:]:
        top = torch.maximum(top, col)
    exps = [torch.exp(col - top) for col in cols]
    total = exps[0]
    for e in exps[1:]:
        total = total + e
    inv = 1.0 / total
    return torch.stack([e * inv for e in exps], 1)


def mean_field_step(unary: torch.Tensor, bilateral: torch.Tensor, bilateral_idx: torch.Tensor,
                    bilateral_w: torch.Tensor, gauss: torch.Tensor, gauss_idx: torch.Tensor,
                    gauss_w: torch.Tensor, out: str = "q") -> torch.Tensor:
    """One mean-field update, Q = softmax(unary - pairwise energy), from the two blurred lattices (the
    compatibility is in the slice weights); compiled, the slices and the softmax are one loop. ``out``:
    ``q``, ``labels`` (the arg-max of Q, uint8) or ``pairwise`` (the pairwise term alone, - energy)."""
    pairwise = slice_rows(bilateral, bilateral_idx, bilateral_w) + slice_rows(gauss, gauss_idx, gauss_w)
    if out == "pairwise":
        return pairwise
    x = unary + pairwise
    return argmax_rows(x) if out == "labels" else softmax_rows(x)


def downsample_factor(value, key: str = "downsample") -> int:
    """A CRF's ``downsample`` as an int, or a ValueError naming the config ``key``."""
    if value != int(value) or value < 1:
        raise ValueError(f"{key} must be an integer >= 1 (1: full resolution), got {value}.")
    return int(value)


def in_pixel_order(rows: torch.Tensor, order: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Rows in the lattice order ``order`` (row r = pixel order[r]) back in pixel order, viewed as ``shape``."""
    out = torch.empty_like(rows)
    out[order] = rows
    return out.view(shape)


def block_means(images: torch.Tensor, probs: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, H, W, 3) and probs (B, K, H, W) averaged over factor x factor blocks (partial blocks at the
    bottom and right edges: over their pixels): float images (B, h, w, 3), probs (B, K, h, w)."""
    colour = F.avg_pool2d(images.permute(0, 3, 1, 2).float(), factor, ceil_mode=True)
    return colour.permute(0, 2, 3, 1).contiguous(), F.avg_pool2d(probs, factor, ceil_mode=True)


def lifted(pairwise: torch.Tensor, probs: torch.Tensor, out: str = "q") -> torch.Tensor:
    """The full-resolution scores x from a low-resolution mean field: log(clip(probs, 1e-5)) (the unary, as
    ``gather_unary``) + the pairwise term (B, K, h, w) resized bilinearly to probs' size (B, K, H, W).
    ``out``: ``x``, its softmax ``q`` (the marginals) or its arg-max ``labels`` (uint8). One fused loop
    when compiled."""
    x = torch.log(probs.clamp(1e-5, 1.0)) + F.interpolate(pairwise, size=probs.shape[-2:], mode="bilinear",
                                                          align_corners=False)
    return x if out == "x" else x.argmax(1).to(torch.uint8) if out == "labels" else x.softmax(1)


_COMPILED: dict = {}


def maybe_compiled(fn, compile: bool = True):
    """torch.compile(fn) (dynamic shapes, compiled once per process), or fn itself where compiling is
    off or impossible (no C++ compiler, unsupported platform): same results, slower."""
    if not compile:
        return fn
    if fn not in _COMPILED:
        compiled = torch.compile(fn, dynamic=True)

        def run(*args):
            if _COMPILED.get(("failed", fn)):
                return fn(*args)
            try:
                return compiled(*args)
            except Exception as e:  # noqa: BLE001 - any backend failure: fall back to eager, say so once
                warnings.warn(f"torch.compile failed for {fn.__name__} ({type(e).__name__}: {str(e)[:200]}); "
                              "running it eagerly (same results, slower).", stacklevel=2)
                _COMPILED[("failed", fn)] = True
                return fn(*args)

        _COMPILED[fn] = run
    return _COMPILED[fn]


def pixel_xy(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(H * W, 2) float32 pixel positions, x = column, y = row, row-major."""
    yy, xx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
