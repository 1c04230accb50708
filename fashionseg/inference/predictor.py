"""Label new photos with a trained network: any size in, label maps at the photo's own size out.

The network runs at the input size it was trained with (read from the checkpoint); its logits
are cropped to the photo, resized back to the photo's size and turned into class probabilities,
by the one inference path of ``fashionseg.inference.logits``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from fashionseg.core.errors import ConfigError
from fashionseg.core.heads import Head, all_class_names, task_heads
from fashionseg.core.io import default_palette
from fashionseg.data.multiset import primary_data_config
from fashionseg.data.transforms import EvalTransform
from fashionseg.inference.checkpoint import TrainedNetwork, load_network
from fashionseg.inference.logits import Runner, check_scales, crop_and_resize, lift_size, network_logits
from fashionseg.inference.onnx import OnnxRunner
from fashionseg.metrics import labels_from_scores

# Predictor options by name, as the speed benchmarks time them (scripts/benchmark_speed.py --variants).
VARIANTS = {
    "eager fp32": dict(channels_last=False, bf16=False),
    "channels_last": dict(channels_last=True, bf16=False),
    "bf16": dict(channels_last=False, bf16=True),
    "bf16+channels_last": dict(channels_last=True, bf16=True),
    "bf16+cl+compile": dict(channels_last=True, bf16=True, compile=True),  # torch.compile, weights frozen
}


def head_labels(logits: torch.Tensor, valid_hw: Sequence[int] | torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """One head's label map (H, W) uint8 of its logits (1, K, h, w) at the network's input size: the arg-max of
    the logits cropped and resized to the photo's ``size``. With two classes it resizes their difference
    instead (the resize is linear: the same labels, up to float rounding on ties), half the work."""
    if logits.shape[1] == 2:
        margin = crop_and_resize(logits[:, 1:] - logits[:, :1], valid_hw, size)[0, 0]
        return (margin > 0).to(torch.uint8).cpu().numpy()
    return labels_from_scores(crop_and_resize(logits, valid_hw, size)[0], 0).to(torch.uint8).cpu().numpy()


class Predictor:
    """Photos (H, W, 3) uint8 RGB -> class probabilities / label maps of the same H, W.

    A joint network (task=joint) has one head per task: ``from_checkpoint`` gives a Predictor of all its
    output channels with ``heads``, whose ``split`` cuts one forward pass's logits per task, and
    ``view(task)`` a Predictor of that task's channels alone (sharing the network).

    Args:
        net: network returning ``{"out": logits}`` (or a ``Runner`` returning logits).
        class_names: K names; ``palette``: K RGB colours for overlays.
        heads: the network's heads (``fashionseg.core.heads.Head``), for a joint network; default: one head,
            ``class_names``.
        image_size: network input (H, W), or None to pad each photo to ``size_multiple``.
        channels_last: run the network in channels-last memory format (faster on CPU).
        bf16: bfloat16 autocast (CPU with AVX512_BF16, or CUDA).
        tta_hflip: average the logits of each photo and its mirror image.
        tta_scales: multi-scale test-time augmentation: also run each photo resized by these factors of the
            input size and average the logits (``network_logits``); ``(1.0,)``: none.
        compile: ``torch.compile`` the network with inductor's weight freezing (conv + batch-norm
            folding, fused kernels), after a one-off compile per input shape (timings: README, from
            scripts/benchmark_speed.py).
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, net: nn.Module | Runner, class_names: Sequence[str], image_size: Sequence[int] | None,
                 size_multiple: int = 32, palette: Sequence[Sequence[int]] | None = None, task: str = "",
                 channels_last: bool = False, bf16: bool = False, tta_hflip: bool = False, compile: bool = False,
                 device: str = "cpu", heads: Sequence[Head] | None = None, tta_scales: Sequence[float] = (1.0,)):
        self.class_names, self.task = list(class_names), task
        self.heads = list(heads) if heads else [Head(task, tuple(self.class_names), 0, None)]
        self.channels: slice | None = None  # a view's head: the network's output channels kept
        self.refinement: dict | None = None  # a model package's refinement config (from_pretrained)
        self.palette = np.asarray(palette if palette is not None else default_palette(len(self.class_names)), np.uint8)
        self.image_size = list(image_size) if image_size is not None else None
        self.transform = EvalTransform(self.image_size, size_multiple)
        self.device = torch.device(device)
        self.bf16, self.tta_hflip, self.channels_last = bf16, tta_hflip, channels_last
        self.tta_scales, self.size_multiple = check_scales(tta_scales), size_multiple
        if isinstance(net, nn.Module):
            net = net.eval().to(self.device)
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            if compile:
                net = torch.compile(net, options={"freezing": True})
        self.net = net

    @classmethod
    def from_checkpoint(cls, path: str | Path, onnx: str | Path | None = None, **kwargs) -> Predictor:
        """Network, classes, palette and input size all come from a train.py checkpoint (or a model package
        folder or Hub id, see ``from_pretrained``). ``onnx``: an exported file of its network (export.py, e.g.
        its int8 file), run by ONNX Runtime in its place."""
        return cls.from_pretrained(path, onnx=onnx, **kwargs)

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None, onnx: str | Path | None = None,
                        **kwargs) -> Predictor:
        """A Predictor of a model package folder, a Hugging Face Hub id (``user/repo``, at ``revision``;
        downloaded into huggingface_hub's cache) or a train.py checkpoint. A package's test-time options
        (``tta_hflip``, ``tta_scales``) apply unless given here; its refinement is ``refinement``::

            predictor = Predictor.from_pretrained("outputs/person-package")
            label = predictor([read_photo("photo.jpg")])[0]
        """
        return cls.from_trained(load_network(source, revision), onnx, **kwargs)

    @classmethod
    def from_trained(cls, trained: TrainedNetwork, onnx: str | Path | None = None, **kwargs) -> Predictor:
        """A Predictor of a loaded ``TrainedNetwork`` (``inference.checkpoint.load_network``), as
        ``from_pretrained`` makes it."""
        options = {k: trained.inference[k] for k in ("tta_hflip", "tta_scales") if trained.inference.get(k) is not None}
        predictor = cls.from_network(trained.net, trained.config, onnx, **{**options, **kwargs})
        predictor.refinement = trained.inference.get("postprocess")
        return predictor

    @classmethod
    def from_network(cls, net: nn.Module, config: Mapping, onnx: str | Path | None = None, **kwargs) -> Predictor:
        """A Predictor of a network and the run config it was trained with (a checkpoint's stored config:
        task, classes, palette, input size). ``onnx``: run this exported file of it instead."""
        cfg = OmegaConf.create(config)
        data = primary_data_config(cfg.data)
        heads = task_heads(cfg.task)
        names = all_class_names(heads)
        palette = [c for h in heads for c in h.palette] if all(h.palette for h in heads) else None
        runner = OnnxRunner(onnx) if onnx is not None else net
        return cls(runner, names, data.image_size, data.get("size_multiple", 32), palette=palette,
                   task=cfg.task.name, heads=heads, **kwargs)

    def view(self, task: str) -> Predictor:
        """A Predictor of one head of a joint network (its classes, palette and channels), sharing the network."""
        head = next((h for h in self.heads if h.name == task), None)
        if head is None:
            raise ConfigError(f"This network has no {task!r} head; its heads are {[h.name for h in self.heads]}.")
        if len(self.heads) == 1:
            return self
        view = copy.copy(self)
        view.class_names, view.task, view.channels = list(head.class_names), head.name, head.channels
        view.heads = [dataclasses.replace(head, start=0)]  # of the view's own, cut output
        view.palette = np.asarray(head.palette or default_palette(head.num_classes), np.uint8)
        return view

    def split(self, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """One photo's logits (C, H, W) of every head, ``{task: (K_task, H, W)}``, in head order."""
        return {h.name: scores[h.channels] for h in self.heads}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return network_logits(self.net, batch, self.tta_hflip, self.tta_scales, self.size_multiple)

    def scores(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Logits (K, H, W) float32 on the CPU, one per photo, at each photo's size."""
        return [crop_and_resize(logits, valid_hw, size)[0].cpu() for logits, valid_hw, size in self._outputs(images)]

    def _outputs(self, images: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
        """Per photo: the network's logits (1, K, h, w) at its input size, the photo's area in them (valid_hw)
        and the photo's own size, to be cropped and resized (``crop_and_resize``)."""
        for i, image in enumerate(images):
            rgb = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            if not (rgb and image.dtype == np.uint8):
                got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
                raise ValueError(f"Photo {i}: expected an (H, W, 3) uint8 RGB array, got {got}. "
                                 "Read files with fashionseg.core.io.read_photo, which converts any mode to RGB.")
        items = [self.transform(image) for image in images]
        shapes = {tuple(it["image"].shape) for it in items}
        groups = [list(range(len(items)))] if len(shapes) == 1 else [[i] for i in range(len(items))]
        result: list = [None] * len(items)
        for group in groups:
            batch = torch.stack([items[i]["image"] for i in group]).to(self.device)
            logits = self._logits(batch)
            if self.channels is not None:
                logits = logits[:, self.channels]
            logits = logits.contiguous()  # channels-last logits make the resize slower
            for j, i in enumerate(group):
                result[i] = (logits[j: j + 1], items[i]["valid_hw"], images[i].shape[:2])
        return result

    def probabilities(self, images: Sequence[np.ndarray], lifted: bool = True) -> list[torch.Tensor]:
        """Softmax probabilities (K, H, W) float32 on the CPU, one per photo, at each photo's size; a joint
        network's heads each sum to one. ``lifted=False``: at the network's resolution instead (the photo's
        area of its input, not resized; ``lift_size``), for a refinement that lifts them itself
        (``Refinement.lifts``)."""
        if lifted:
            scores = self.scores(images)
        else:
            scores = [crop_and_resize(logits, valid_hw, lift_size(valid_hw, size))[0].cpu()
                      for logits, valid_hw, size in self._outputs(images)]
        return [torch.cat([p.softmax(0) for p in self.split(s).values()]) for s in scores]

    def label_maps(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every head's label map (H, W) uint8 per photo, ``{task: label}``, from one pass of the network."""
        return [{task: head_labels(s[None], valid_hw, size) for task, s in self.split(logits[0]).items()}
                for logits, valid_hw, size in self._outputs(images)]

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label maps (H, W) uint8, one per photo (the arg-max of the logits: no softmax needed). A joint
        network has one per head: ``label_maps``, or ``view(task)``."""
        if len(self.heads) > 1:
            raise ConfigError(f"This network has heads {[h.name for h in self.heads]}: label maps come per head, "
                              "predictor.label_maps(photos) or predictor.view(<task>)(photos).")
        return [next(iter(maps.values())) for maps in self.label_maps(images)]
