"""Prediction on new photos: label map (palette PNG), overlay with legend and, for person, a cut-out.
A joint network (task=joint) writes every task's, ``<photo>_<task>_label.png`` and so on, from one forward pass."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.io import (
    cutout,
    label_image,
    list_photos,
    overlay,
    read_photo,
    remove_stale_temporaries,
    save_atomic,
)
from fashionseg.inference.logits import crop_and_resize
from fashionseg.inference.predictor import Predictor
from fashionseg.postprocess import Identity, Refinement
from fashionseg.postprocess.base import lifts

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device={device!r}: use cpu, cuda or auto.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA GPU is available; use device=cpu.")
    return device


def has_cutout(predictor: Predictor) -> bool:
    return predictor.task == "person" or predictor.class_names == ["background", "person"]


def output_paths(predictor: Predictor, out_dir: Path, stem: str) -> list[Path]:
    """What ``write_outputs`` writes for one photo (and one task)."""
    kinds = ["label", "overlay", *(["cutout"] if has_cutout(predictor) else [])]
    return [out_dir / f"{stem}_{kind}.png" for kind in kinds]


def write_outputs(predictor: Predictor, photo: np.ndarray, probs: torch.Tensor, label: np.ndarray, out_dir: Path,
                  stem: str, opacity: float, boundaries: bool = False) -> list[Path]:
    """<stem>_label.png (class indices, palette colours), <stem>_overlay.png, and <stem>_cutout.png for person,
    each written whole or not at all (``save_atomic``): a killed run never leaves a truncated picture."""
    paths = output_paths(predictor, out_dir, stem)
    save_atomic(label_image(label, predictor.palette), paths[0])
    save_atomic(overlay(photo, label, predictor.palette, predictor.class_names, opacity, boundaries=boundaries),
                paths[1])
    if has_cutout(predictor):
        # Soft edges from the probability, hard zeros where the refined label says background.
        alpha = probs[1].numpy() * (label == 1) if len(predictor.class_names) == 2 else label > 0
        save_atomic(cutout(photo, alpha), paths[2])
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
    tta = {k: (list(v) if k == "tta_scales" else v) for k in ("tta_hflip", "tta_scales")
           if (v := cfg.get(k)) is not None}  # null: the model's own (a package's choice, else none)
    predictor = Predictor.from_pretrained(cfg.ckpt_path, revision=cfg.get("revision"), onnx=cfg.get("onnx"),
                                          device=device, bf16=cfg.bf16, channels_last=cfg.channels_last,
                                          compile=cfg.compile, **tta)
    heads = {h.name: predictor.view(h.name) for h in predictor.heads}
    chosen = cfg.get("postprocess")
    if predictor.refinement and (not chosen or list(chosen) == ["none"]):
        log.info("Refinement %s, as the model package chose it on validation (postprocess=<another> to change it).",
                 next(iter(predictor.refinement)))
        chosen = OmegaConf.create(predictor.refinement)
    refine: Refinement = single_refinement(chosen)
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_temporaries(out_dir):
        log.info("Removed %d temporary file(s) that a killed run left in %s.", len(stale), out_dir)
    stems = {path: [path.stem] if len(heads) == 1 else [f"{path.stem}_{task}" for task in heads] for path in photos}
    done = [path for path in photos if cfg.get("skip_existing") and all(
        p.is_file() for head, stem in zip(heads.values(), stems[path]) for p in output_paths(head, out_dir, stem))]
    if done:
        log.info("skip_existing: %d of %d photo(s) already have every output in %s; labelling the other %d.",
                 len(done), len(photos), out_dir, len(photos) - len(done))
    skipped = set(done)
    todo = [path for path in photos if path not in skipped]
    written, failed = [], {}
    with tqdm(total=len(todo), desc="predict", unit="photo", disable=len(todo) <= 1) as bar:
        for group in batches(todo, cfg.batch_size):
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
            lifted = not lifts(refine)  # else the network's resolution, which it lifts itself
            for path, photo, probs in zip(names, images, predictor.probabilities(images, lifted)):
                files = []
                for (task, task_probs), stem in zip(predictor.split(probs).items(), stems[path]):
                    label = refine(photo, task_probs)  # a joint network: every task, one pass
                    task_probs = crop_and_resize(task_probs[None], task_probs.shape[1:], photo.shape[:2])[0]
                    files += write_outputs(heads[task], photo, task_probs, label, out_dir, stem, cfg.opacity,
                                           cfg.boundaries)
                written.append(files)
                bar.update(1)
    log.info("Labelled %d of %d photos; outputs written to %s", len(written), len(photos), out_dir)
    return {"photos": len(photos), "written": [[str(p) for p in w] for w in written], "failed": failed,
            "skipped": [str(p) for p in done], "output": str(out_dir)}


def predict_job(cfg: DictConfig) -> dict:
    """predict.py: label every photo, then fail (exit status 1) if any could not be read, naming them."""
    summary = predict(cfg)
    if summary["failed"]:
        raise DataError(f"{len(summary['failed'])} of {summary['photos']} photo(s) could not be read, the others "
                        f"were labelled into {summary['output']}: {', '.join(summary['failed'])}")
    return summary
