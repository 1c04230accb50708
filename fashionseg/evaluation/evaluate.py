"""Evaluate a checkpoint on a split of the data set (the test split by default)."""

from __future__ import annotations

import json
import logging
import time

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from fashionseg.core.config import check_writable, resolve_precision
from fashionseg.core.errors import ConfigError
from fashionseg.core.memory import keep_freed_memory
from fashionseg.data.datamodule import ALL, SUBSETS
from fashionseg.data.stored import checkpoint_datamodule
from fashionseg.evaluation.refinements import module_refinements, refinement_tables
from fashionseg.inference.onnx import OnnxNetwork, OnnxRunner
from fashionseg.metrics import confusion_lists
from fashionseg.training.module import load_checkpoint

SPLITS = (ALL, *SUBSETS)

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.ckpt_path`` on ``cfg.split``; the network, task and input size come from the checkpoint."""
    out_dir = check_writable(cfg.paths.output_dir)
    module = load_checkpoint(cfg.ckpt_path, tta_hflip=cfg.tta_hflip, tta_scales=list(cfg.tta_scales),
                             boundary_dilation=cfg.boundary_dilation, revision=cfg.get("revision"))
    if cfg.get("onnx"):
        module.net = OnnxNetwork(OnnxRunner(cfg.onnx))
    train_cfg = OmegaConf.create(module.hparams.config)
    asked = cfg.get("task", {}).get("name") if cfg.get("task") else None
    if asked is not None and asked != train_cfg.task.name:
        raise ConfigError(
            f"Checkpoint {cfg.ckpt_path} was trained for task={train_cfg.task.name}, not task={asked}; "
            f"run eval.py with task={train_cfg.task.name} (or leave task out)."
        )
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is not one of {', '.join(SPLITS)} (all: every photo of the set).")
    set_cfg = cfg.data if "_target_" in cfg.data else None  # data=<set> chose a data set config
    datamodule = checkpoint_datamodule(module.hparams.config, cfg.data.root, set_cfg,
                                       eval_batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                       limit=cfg.data.limit)
    if getattr(datamodule, "format", "memory") == "shards" and cfg.split in ("train", ALL):
        raise ConfigError(f"split={cfg.split} scores photos as they are; the shards hold the training split for "
                          "streaming, augmented. Score it from the folder layout: data.format=memory.")
    if not len(datamodule.datasets[cfg.split]):
        raise ConfigError(
            f"The {cfg.split} split of {cfg.data.root} is empty ({len(datamodule.datasets[ALL])} photos split by "
            f"{list(datamodule.split)}); score the whole set with split=all."
        )
    loader = datamodule._loader(cfg.split, shuffle=False)
    if cfg.split == "train":  # score training images as they are, not augmented
        loader.dataset.transform = datamodule.eval_transform

    cfg.trainer.precision = resolve_precision(cfg.trainer)  # auto: bf16-mixed where bfloat16 is native
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    start = time.time()
    trainer.test(module, dataloaders=loader)
    seconds = time.time() - start
    results = {
        "checkpoint": str(cfg.ckpt_path), "task": train_cfg.task.name, "model": train_cfg.model.name,
        "onnx": str(cfg.onnx) if cfg.get("onnx") else None, "split": cfg.split, "images": len(loader.dataset),
        "precision": cfg.trainer.precision, "scores": module.test_scores,
        "confusion": confusion_lists(module.test_confusion),
        "ms_per_image": round(1000 * seconds / len(loader.dataset), 1),
    }
    if cfg.get("postprocess"):
        keep_freed_memory()  # a batch job: the CRF's large buffers are reused, not page-faulted in
        refinements = {name: hydra.utils.instantiate(c) for name, c in cfg.postprocess.items()}
        dataset = loader.dataset
        results["refinements"], per_head = module_refinements(module, dataset, refinements, cfg.data.batch_size,
                                                               trainer.precision_plugin.test_step_context)
        table = refinement_tables(module, per_head)
        (out_dir / "refinements.md").write_text(table + "\n")
        log.info("Refinements on the %s split (network: %.1f ms/image):\n%s", cfg.split,
                 next(iter(per_head.values()))["network_ms_per_image"], table)
        print(table)
    (out_dir / "eval_results.json").write_text(json.dumps(results, indent=1))
    log.info("%s split scores: %s", cfg.split, json.dumps(module.test_scores))
    log.info("Results written to %s%s", out_dir / "eval_results.json",
             f" and {out_dir / 'refinements.md'}" if cfg.get("postprocess") else "")
    return results
