"""Prediction on new photos: label map (palette PNG), overlay with legend and, for person, a cut-out.
A joint network (task=joint) writes every task's, ``<photo>_<task>_label.png`` and so on, from one forward pass."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.io import cutout, label_image, list_photos, overlay, read_photo
from fashionseg.inference.predictor import Predictor
from fashionseg.postprocess import Identity, Refinement

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device={device!r}: use cpu, cuda or auto.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA GPU is available; use device=cpu.")
    return device


def write_outputs(predictor: Predictor, photo: np.ndarray, probs: torch.Tensor, label: np.ndarray, out_dir: Path,
                  stem: str, opacity: float, boundaries: bool = False) -> list[Path]:
    """<stem>_label.png (class indices, palette colours), <stem>_overlay.png, and <stem>_cutout.png for person."""
    paths = [out_dir / f"{stem}_label.png", out_dir / f"{stem}_overlay.png"]
    label_image(label, predictor.palette).save(paths[0])
    overlay(photo, label, predictor.palette, predictor.class_names, opacity, boundaries=boundaries).save(paths[1])
    if predictor.task == "person" or predictor.class_names == ["background", "person"]:
        paths.append(out_dir / f"{stem}_cutout.png")
        # Soft edges from the probability, hard zeros where the refined label says background.
        alpha = probs[1].numpy() * (label == 1) if len(predictor.class_names) == 2 else label > 0
        cutout(photo, alpha).save(paths[-1])
    return paths


def single_refinement(node) -> Refinement:
    """The one refinement selected with postprocess=<name> (configs nest under their name)."""
    if not node:
        return Identity()
    if len(node) != 1:
        raise ConfigError(f"predict.py applies one refinement; got postprocess={list(node)}. Choose one, e.g. "
                          "postprocess=cleanup (eval.py compares several side by side).")
    return hydra.utils.instantiate(next(iter(node.values())))


def batches(paths: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(paths), size):
        yield list(paths[i: i + size])


def predict(cfg: DictConfig) -> dict:
    """Label every photo of ``cfg.input``; unreadable files are reported by name and skipped. Returns a summary."""
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}.")
    device = resolve_device(cfg.device)
    if cfg.get("onnx") and device != "cpu":
        raise ConfigError(f"onnx={cfg.onnx} runs on ONNX Runtime's CPU provider; use device=cpu with it, or "
                          f"leave onnx out to run the checkpoint's network on {device}.")
    photos = list_photos(cfg.input)
    if not photos:
        raise DataError(f"No photos in {cfg.input} (looked for .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, .gif).")
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, onnx=cfg.get("onnx"), device=device, bf16=cfg.bf16,
                                          channels_last=cfg.channels_last, tta_hflip=cfg.tta_hflip,
                                          tta_scales=list(cfg.tta_scales), compile=cfg.compile)
    heads = {h.name: predictor.view(h.name) for h in predictor.heads}
    refine: Refinement = single_refinement(cfg.get("postprocess"))
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    with tqdm(total=len(photos), desc="predict", unit="photo", disable=len(photos) == 1) as bar:
        for group in batches(photos, cfg.batch_size):
            images, names = [], []
            for path in group:
                try:
                    images.append(read_photo(path))
                    names.append(path)
                except DataError as e:
                    failed[str(path)] = str(e)
                    log.error("Skipped %s: %s", path, e)
                    bar.update(1)
            if not images:
                continue
            for path, photo, probs in zip(names, images, predictor.probabilities(images)):
                files = []
                for task, task_probs in predictor.split(probs).items():  # a joint network: every task, one pass
                    label = refine(photo, task_probs)
                    files += write_outputs(heads[task], photo, task_probs, label, out_dir,
                                           path.stem if len(heads) == 1 else f"{path.stem}_{task}", cfg.opacity,
                                           cfg.boundaries)
                written.append(files)
                bar.update(1)
    log.info("Labelled %d of %d photos into %s", len(written), len(photos), out_dir)
    return {"photos": len(photos), "written": [[str(p) for p in w] for w in written], "failed": failed,
            "output": str(out_dir)}


def predict_job(cfg: DictConfig) -> dict:
    """predict.py: label every photo, then fail (exit status 1) if any could not be read, naming them."""
    summary = predict(cfg)
    if summary["failed"]:
        raise DataError(f"{len(summary['failed'])} of {summary['photos']} photo(s) could not be read, the others "
                        f"were labelled into {summary['output']}: {', '.join(summary['failed'])}")
    return summary
