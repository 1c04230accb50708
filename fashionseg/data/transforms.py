"""Albumentations pipelines: fit photos to the network's input, augment the training split.

Items leave the pipeline as uint8 image tensors (3, H, W); the network normalises them.
Training items have their label warped with the image; evaluation items keep the label at
its native size so that metrics are computed at the label's own resolution. A stack of label maps
(H, W, kinds), a joint task's, is warped as one and leaves as (kinds, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from fashionseg.core.errors import ConfigError


def fit_transform(size: Sequence[int] | None, multiple: int, ignore_index: int | None = None) -> A.BasicTransform:
    """Resize to ``size`` (H, W), or with ``size=None`` pad bottom/right up to a multiple of ``multiple``.

    Padded label pixels get ``ignore_index`` (not learned, not scored), or background without one.
    """
    if size is None:
        return A.PadIfNeeded(
            min_height=None, min_width=None, pad_height_divisor=multiple, pad_width_divisor=multiple,
            position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=_fill(ignore_index),
        )
    h, w = (int(s) for s in size)
    if h % multiple or w % multiple:
        raise ConfigError(
            f"data.image_size={[h, w]} is not divisible by {multiple}, which the model needs; "
            f"use e.g. data.image_size=[{_round_up(h, multiple)},{_round_up(w, multiple)}] "
            "or data.image_size=null to pad the native size."
        )
    return A.Resize(h, w, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)


def augmentations(hflip: float = 0.5, scale: Sequence[float] | None = None, translate: float = 0.0,
                  rotate: float = 0.0, color_jitter: float = 0.0, crop: Sequence[int] | None = None,
                  ignore_index: int | None = None, multiple: int = 1) -> list[A.BasicTransform]:
    """Training augmentations chosen by config switches (0 / null turns one off). Label pixels that a
    shift, zoom-out or rotation brings in from outside the photo get ``ignore_index``.

    ``crop`` (H, W) trains on a random window of the fitted photo, last: a network that predicts at the
    native size (``data.image_size=null``) learns at native scale for the cost of the window's pixels.
    A photo smaller than the window is padded (void labels).
    """
    ops: list[A.BasicTransform] = []
    if hflip:
        ops.append(A.HorizontalFlip(p=hflip))
    if scale or translate or rotate:
        ops.append(A.Affine(
            scale=tuple(scale) if scale else 1.0, translate_percent=(-translate, translate), rotate=(-rotate, rotate),
            keep_ratio=True, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=_fill(ignore_index), p=0.8,
        ))
    if color_jitter:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                 hue=min(color_jitter / 4, 0.5), p=0.8))
    if crop:
        h, w = (int(c) for c in crop)
        if h % multiple or w % multiple:
            raise ConfigError(f"data.augment.crop={[h, w]} is not divisible by {multiple}, which the model needs; "
                              f"use e.g. data.augment.crop=[{_round_up(h, multiple)},{_round_up(w, multiple)}].")
        ops.append(A.RandomCrop(h, w, pad_if_needed=True, pad_position="top_left", border_mode=cv2.BORDER_CONSTANT,
                                fill=0, fill_mask=_fill(ignore_index)))
    return ops


class TrainTransform:
    """Fit, then augment; label warped with the image (nearest neighbour), new pixels ``ignore_index``.

    A teacher's stored logits (H, W, C) of the photo (``distill.logits``) are warped as the label is
    (nearest neighbour; new pixels get the label's fill value, and the distillation term leaves void
    pixels out) and leave as ``teacher`` (C, H, W) float32.
    """

    def __init__(self, size: Sequence[int] | None, multiple: int, augment: dict | None = None,
                 ignore_index: int | None = None):
        self.pipeline = A.Compose([fit_transform(size, multiple, ignore_index),
                                   *augmentations(**(augment or {}), ignore_index=ignore_index,
                                                 multiple=multiple)],
                                  additional_targets={"teacher": "mask"})

    def reseed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, label: np.ndarray, teacher: np.ndarray | None = None) -> dict:
        targets = {"image": image, "mask": label}
        if teacher is not None:
            targets["teacher"] = teacher.astype(np.float32)  # OpenCV warps no float16
        out = self.pipeline(**targets)
        item = {"image": _to_chw(out["image"]), "mask": _mask(out["mask"]),
                "valid_hw": torch.tensor(out["image"].shape[:2])}
        if teacher is not None:
            item["teacher"] = torch.from_numpy(np.ascontiguousarray(out["teacher"].transpose(2, 0, 1)))
        return item


class EvalTransform:
    """Fit the image only; the label keeps its native size.

    ``valid_hw`` is the part of the network input that holds the photo (all of it when
    resized, the top-left corner when padded): logits are cropped to it, then resized to the label.
    """

    def __init__(self, size: Sequence[int] | None, multiple: int):
        self.fit = fit_transform(size, multiple)
        self.resized = size is not None

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None) -> dict:
        fitted = self.fit(image=image)["image"]
        valid = fitted.shape[:2] if self.resized else image.shape[:2]
        item = {"image": _to_chw(fitted), "valid_hw": torch.tensor(valid)}
        if label is not None:
            item["mask"] = _mask(label)
        return item


def _fill(ignore_index: int | None) -> int:
    return 0 if ignore_index is None else ignore_index


def _mask(label: np.ndarray) -> torch.Tensor:
    """Class indices as int64: (H, W), or (kinds, H, W) from a stack of label maps (H, W, kinds)."""
    return torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1) if label.ndim == 3 else label)).long()


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W) uint8


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m
