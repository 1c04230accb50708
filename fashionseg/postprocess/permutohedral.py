"""Fully connected CRF in plain PyTorch: mean-field inference with permutohedral-lattice filtering.

Follows Krähenbühl & Koltun (NIPS 2011) and their C++ code (densecrf, wrapped by pydensecrf2):
the lattice of Adams, Baek & Davis (2010) with the same elevation, rounding, barycentric weights,
blur and slice normalisation (alpha = 1 / (1 + 2^-d)), symmetric kernel normalisation, Potts
compatibility. Vertex offsets and barycentric weights are computed once per batch and reused in
every iteration (splat = index_add, slice = index_select); lattice vertices are found by sorting
integer-coded keys instead of a hash table.
A batch of photos shares one lattice per kernel (the image index is part of each key), so the
whole batch is filtered in one product. Runs on CPU and CUDA; nothing to compile.
"""

from __future__ import annotations

import math

import torch


class PermutohedralLattice:
    """Gaussian filtering in a d-dimensional feature space, for features (B, N, d) of B images with N pixels each.

    ``filter(values)`` with values (B * N, C) returns, for every pixel, the (approximate) sum over all
    pixels of the same image of exp(-|f_i - f_j|^2 / 2) * value_j.
    """

    def __init__(self, features: torch.Tensor):
        b, n, d = features.shape
        device, self.d, self.size = features.device, d, b * n
        f = features.float()
        # Elevate onto the hyperplane x . 1 = 0 of R^(d+1), scaled so that the blur has unit variance.
        i = torch.arange(1, d + 1, device=device, dtype=torch.float32)
        cf = f * (math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt(i * (i + 1)))
        suffix = torch.cat([cf.flip(-1).cumsum(-1).flip(-1), torch.zeros_like(cf[..., :1])], -1)  # sum_{k>=j} cf_k
        elevated = torch.cat([suffix[..., :1], suffix[..., 1:] - i * cf], -1)  # (b, n, d+1)
        # Nearest remainder-0 lattice point, then the rank of each coordinate's residual.
        v = elevated / (d + 1)
        up, down = torch.ceil(v) * (d + 1), torch.floor(v) * (d + 1)
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        total = torch.round(rem0.sum(-1) / (d + 1)).to(torch.int64)
        diff = elevated - rem0
        idx = torch.arange(d + 1, device=device)
        before = idx[None, :] < idx[:, None]  # [i, j]: j < i
        after = idx[None, :] > idx[:, None]
        di, dj = diff[..., :, None], diff[..., None, :]
        rank = ((dj >= di) & before).sum(-1) + ((dj > di) & after).sum(-1)
        del di, dj
        rank = rank + total[..., None]
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
        rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))
        # Barycentric weights of the d+1 enclosing simplex vertices.
        vb = (elevated - rem0) / (d + 1)
        bary = torch.zeros(b, n, d + 2, dtype=torch.float32, device=device)
        bary.scatter_add_(-1, d - rank, vb)
        bary.scatter_add_(-1, d + 1 - rank, -vb)
        bary[..., 0] += 1.0 + bary[..., d + 1]
        weights = bary[..., : d + 1].reshape(b * n, d + 1).t().contiguous()  # (d+1, bn)
        # Vertex keys, vertex-major so that neighbouring pixels sit side by side (first d coordinates;
        # the last follows from the zero sum), coded as one int64 each with the image index.
        r = idx.view(d + 1, 1, 1)
        rem0 = rem0[..., :d].to(torch.int64).reshape(1, b * n, d)
        rk = rank[..., :d].reshape(1, b * n, d)
        keys = rem0 + torch.where(rk <= d - r, r, r - (d + 1))  # (d+1, bn, d)
        self._radix(keys, b)
        image = torch.arange(b, device=device).repeat_interleave(n)
        codes = self._encode(keys, image)  # (d+1, bn)
        del keys, rk, rem0
        # Distinct vertices: drop runs of equal codes first (cheap, most of them), then sort the rest.
        self.codes = torch.unique(torch.unique_consecutive(codes.reshape(-1)))
        m = self.codes.numel()
        self.offsets = torch.searchsorted(self.codes, codes) + 1  # row 0 of the lattice is an always-zero row
        alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.splat_w, self.slice_w = weights[..., None], (weights * alpha)[..., None]
        self.m = m
        # Blur neighbours along each of the d+1 lattice directions (0 = the zero row: no neighbour).
        lat_keys, lat_image = self._decode(self.codes)
        zero = torch.zeros(1, dtype=torch.int64, device=device)
        self.neighbours = []
        for j in range(d + 1):
            n1, n2 = lat_keys - 1, lat_keys + 1
            if j < d:
                n1[:, j] += d + 1
                n2[:, j] -= d + 1
            self.neighbours.append((torch.cat([zero, self._find(n1, lat_image)]),
                                    torch.cat([zero, self._find(n2, lat_image)])))

    def _radix(self, keys: torch.Tensor, images: int) -> None:
        """Mixed-radix coding of (image, key) into one int64, with room for every neighbour's key."""
        d = self.d
        flat = keys.reshape(-1, d)
        self.mins = flat.amin(0) - (d + 2)
        self.spans = flat.amax(0) - self.mins + (d + 3)
        if images * math.prod(int(s) for s in self.spans) >= 2 ** 62:
            raise ValueError("Lattice keys need more than 62 bits: the features span too wide a range "
                             "(scale them down, e.g. larger sxy/srgb) or filter fewer images at once.")

    def _encode(self, keys: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        code = image.to(torch.int64).expand(keys.shape[:-1])
        for k in range(self.d):
            code = code * self.spans[k] + (keys[..., k] - self.mins[k])
        return code

    def _decode(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.empty(codes.numel(), self.d, dtype=torch.int64, device=codes.device)
        rest = codes.clone()
        for k in reversed(range(self.d)):
            keys[:, k] = rest % self.spans[k] + self.mins[k]
            rest = rest // self.spans[k]
        return keys, rest

    def _find(self, keys: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        codes = self._encode(keys, image)
        pos = torch.searchsorted(self.codes, codes).clamp(max=self.codes.numel() - 1)
        return torch.where(self.codes[pos] == codes, pos + 1, torch.zeros_like(pos))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """values (B * N, C) float32 -> filtered (B * N, C)."""
        lattice = values.new_zeros(self.m + 1, values.shape[1])
        for offsets, w in zip(self.offsets, self.splat_w):  # splat onto the d+1 vertices
            lattice.index_add_(0, offsets, values * w)
        for n1, n2 in self.neighbours:  # blur along each lattice direction: [1/2, 1, 1/2]
            lattice = lattice + 0.5 * (lattice[n1] + lattice[n2])
        out = None
        for offsets, w in zip(self.offsets, self.slice_w):  # slice back to the pixels
            part = lattice.index_select(0, offsets).mul_(w)
            out = part if out is None else out.add_(part)
        return out


class TorchDenseCRF:
    """Mean-field inference of the fully connected CRF with Gaussian + bilateral kernels, Potts compatibility.

    Same model, parameters and unary as ``pydensecrf2`` (``unary_from_softmax``, 1e-5 clip); whole
    batches of same-size photos at once.
    """

    def __init__(self, iterations: int = 5, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
                 bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0, bilateral_compat: float = 10.0,
                 device: str | torch.device | None = None):
        self.iterations = iterations
        self.gaussian_sxy, self.gaussian_compat = gaussian_sxy, gaussian_compat
        self.bilateral_sxy, self.bilateral_srgb, self.bilateral_compat = bilateral_sxy, bilateral_srgb, bilateral_compat
        self.device = torch.device(device) if device else None

    @torch.no_grad()
    def marginals(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """images (B, H, W, 3) uint8, probs (B, K, H, W) -> Q (B, K, H, W) float32."""
        device = self.device or probs.device
        images, probs = images.to(device), probs.to(device).float()
        b, k, h, w = probs.shape
        n = h * w
        yy, xx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # (n, 2): x = column, y = row
        # The spatial kernel is the same for every photo of this size: one lattice, B*K channels.
        gauss = PermutohedralLattice((xy / self.gaussian_sxy)[None])
        rgb = images.reshape(b, n, 3).float() / self.bilateral_srgb
        bilateral = PermutohedralLattice(torch.cat([(xy / self.bilateral_sxy).expand(b, n, 2), rgb], -1))
        norm_g = gauss.filter(torch.ones(n, 1, device=device)).add_(1e-20).rsqrt_()          # (n, 1)
        norm_b = bilateral.filter(torch.ones(b * n, 1, device=device)).add_(1e-20).rsqrt_()  # (bn, 1)
        unary = -torch.log(probs.clamp(1e-5, 1.0)).permute(0, 2, 3, 1).reshape(b * n, k)  # pixel-major
        q = torch.softmax(-unary, -1)
        for _ in range(self.iterations):
            qg = q.view(b, n, k).permute(1, 0, 2).reshape(n, b * k)
            msg_g = (norm_g * gauss.filter(norm_g * qg)).view(n, b, k).permute(1, 0, 2).reshape(b * n, k)
            msg_b = norm_b * bilateral.filter(norm_b * q)
            q = torch.softmax(-unary + self.gaussian_compat * msg_g + self.bilateral_compat * msg_b, -1)
        return q.view(b, h, w, k).permute(0, 3, 1, 2).contiguous()
