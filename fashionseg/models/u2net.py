"""U2-Net and U2-NetP (Qin et al. 2020): one parametrised RSU block and a stage table.

Follows U-2-Net's ``model/u2net_refactor.py``. Every side output and the fused output
are K-channel logits; no sigmoid or softmax is applied here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fashionseg.core.heads import total_classes
from fashionseg.models.base import Normalize

# (height, in_ch, mid_ch, out_ch, dilated) per stage: six encoders, then decoders De_5 .. De_1.
STAGES = {
    "u2net": {
        "encoders": [(7, 3, 32, 64, False), (6, 64, 32, 128, False), (5, 128, 64, 256, False),
                     (4, 256, 128, 512, False), (4, 512, 256, 512, True), (4, 512, 256, 512, True)],
        "decoders": [(4, 1024, 256, 512, True), (4, 1024, 128, 256, False), (5, 512, 64, 128, False),
                     (6, 256, 32, 64, False), (7, 128, 16, 64, False)],
    },
    "u2netp": {
        "encoders": [(7, 3, 16, 64, False), (6, 64, 16, 64, False), (5, 64, 16, 64, False),
                     (4, 64, 16, 64, False), (4, 64, 16, 64, True), (4, 64, 16, 64, True)],
        "decoders": [(4, 128, 16, 64, True), (4, 128, 16, 64, False), (5, 128, 16, 64, False),
                     (6, 128, 16, 64, False), (7, 128, 16, 64, False)],
    },
}


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of ``height`` levels; ``dilated`` replaces pooling by dilation (RSU-4F)."""

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False):
        super().__init__()
        self.height, self.dilated = height, dilated
        # Dilation per level 1..height: the bottom level is always dilated (x2 in RSU-L).
        dil = [2 ** i for i in range(height)] if dilated else [1] * (height - 1) + [2]
        self.conv_in = ConvBNReLU(in_ch, out_ch)
        self.encoder = nn.ModuleList(
            [ConvBNReLU(out_ch, mid_ch, dil[0])] + [ConvBNReLU(mid_ch, mid_ch, d) for d in dil[1:]]
        )
        # Decoder levels height-1 .. 1; the last returns to out_ch for the residual sum.
        self.decoder = nn.ModuleList(
            [ConvBNReLU(2 * mid_ch, mid_ch, dil[lvl]) for lvl in range(height - 2, 0, -1)]
            + [ConvBNReLU(2 * mid_ch, out_ch, dil[0])]
        )
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.conv_in(x)
        feats, h = [], x_in
        for level, conv in enumerate(self.encoder):
            if 0 < level < self.height - 1 and not self.dilated:
                h = self.pool(h)
            h = conv(h)
            feats.append(h)
        d = feats[-1]
        for conv, skip in zip(self.decoder, reversed(feats[:-1])):
            d = conv(torch.cat([upsample_like(d, skip), skip], dim=1))
        return d + x_in


class U2Net(nn.Module):
    """U2-Net with K-class side outputs.

    Args:
        num_classes: K, channels of every output; or one count per head (task=joint): their sum.
        variant: ``u2net`` (44M parameters) or ``u2netp`` (1.1M).

    Returns from ``forward``: ``{"out": fused logits (B, K, H, W), "aux": [six side logits (B, K, H, W)]}``.
    """


    def __init__(self, num_classes: int | Sequence[int], variant: str = "u2net", in_channels: int = 3):
        super().__init__()
        num_classes = total_classes(num_classes)
        if variant not in STAGES:
            raise ValueError(f"Unknown U2-Net variant {variant!r}; valid: {sorted(STAGES)}.")
        table = STAGES[variant]
        enc_cfg = [(table["encoders"][0][0], in_channels, *table["encoders"][0][2:])] + table["encoders"][1:]
        self.normalize = Normalize()
        self.encoders = nn.ModuleList([RSU(*cfg) for cfg in enc_cfg])
        self.decoders = nn.ModuleList([RSU(*cfg) for cfg in table["decoders"]])
        # Side heads on De_1 .. De_5 and En_6 (shallow to deep).
        side_ch = [cfg[3] for cfg in reversed(table["decoders"])] + [table["encoders"][-1][3]]
        self.sides = nn.ModuleList([nn.Conv2d(c, num_classes, 3, padding=1) for c in side_ch])
        self.fuse = nn.Conv2d(len(side_ch) * num_classes, num_classes, 1)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> dict:
        size = x.shape[-2:]
        h, feats = self.normalize(x), []
        for i, stage in enumerate(self.encoders):
            if i > 0:
                h = self.pool(h)
            h = stage(h)
            feats.append(h)
        d, side_inputs = feats[-1], [feats[-1]]  # deepest first: En_6, De_5, ..., De_1
        for stage, skip in zip(self.decoders, reversed(feats[:-1])):
            d = stage(torch.cat([upsample_like(d, skip), skip], dim=1))
            side_inputs.append(d)
        sides = [
            F.interpolate(head(f), size=size, mode="bilinear", align_corners=False)
            for head, f in zip(self.sides, reversed(side_inputs))
        ]  # 6 x (B, K, H, W)
        return {"out": self.fuse(torch.cat(sides, dim=1)), "aux": sides}


def u2net(num_classes: int | Sequence[int]) -> U2Net:
    return U2Net(num_classes, "u2net")


def u2netp(num_classes: int | Sequence[int]) -> U2Net:
    return U2Net(num_classes, "u2netp")
