"""Evaluate a checkpoint on a split of the data set (the test split by default)."""

from __future__ import annotations

import json
import logging
import time

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from fashionseg import ConfigError
from fashionseg.checkpoint import load_checkpoint
from fashionseg.config import check_writable
from fashionseg.data import primary_data_config
from fashionseg.data.datamodule import ALL, SUBSETS
from fashionseg.memory import keep_freed_memory
from fashionseg.metrics import confusion_lists
from fashionseg.postprocess.evaluate import module_refinements, refinement_tables

SPLITS = (ALL, *SUBSETS)

log = logging.getLogger(__name__)


def checkpoint_datamodule(module, root: str | None, set_cfg: DictConfig | None = None, **data):
    """The data settings a checkpoint was trained with (input size, split, seed), pointed at ``root``
    and at ``data`` overrides (e.g. ``limit``), set up: ``datamodule.datasets[split]``.

    ``set_cfg``: another set's config (conf/data/<set>.yaml: its files, label map, split) to read
    instead; the input size and the task's classes stay the checkpoint's.
    """
    train_cfg = OmegaConf.create(module.hparams.config)
    data_cfg = primary_data_config(train_cfg.data)
    if set_cfg is not None:
        fitted = {k: data_cfg.get(k) for k in ("image_size", "size_multiple")}
        data_cfg = OmegaConf.create(OmegaConf.to_container(set_cfg, resolve=False))
        data_cfg.update(fitted, label=train_cfg.task.label, num_classes=train_cfg.task.num_classes,
                        ignore_index=train_cfg.task.get("ignore_index"))
    if root is not None:
        data_cfg.root = root
    for key, value in data.items():
        data_cfg[key] = value
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.setup("test")
    return datamodule


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.ckpt_path`` on ``cfg.split``; the network, task and input size come from the checkpoint."""
    out_dir = check_writable(cfg.paths.output_dir)
    module = load_checkpoint(cfg.ckpt_path, tta_hflip=cfg.tta_hflip, tta_scales=list(cfg.tta_scales),
                             boundary_dilation=cfg.boundary_dilation)
    if cfg.get("onnx"):
        from fashionseg.export import OnnxNetwork, OnnxRunner

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
    datamodule = checkpoint_datamodule(module, cfg.data.root, set_cfg, eval_batch_size=cfg.data.batch_size,
                                       num_workers=cfg.data.num_workers, limit=cfg.data.limit)
    if not len(datamodule.datasets[cfg.split]):
        raise ConfigError(
            f"The {cfg.split} split of {cfg.data.root} is empty ({len(datamodule.datasets[ALL])} photos split by "
            f"{list(datamodule.split)}); score the whole set with split=all."
        )
    loader = datamodule._loader(cfg.split, shuffle=False)
    if cfg.split == "train":  # score training images as they are, not augmented
        loader.dataset.transform = datamodule.eval_transform

    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    start = time.time()
    trainer.test(module, dataloaders=loader)
    seconds = time.time() - start
    results = {
        "checkpoint": str(cfg.ckpt_path), "task": train_cfg.task.name, "model": train_cfg.model.name,
        "onnx": str(cfg.onnx) if cfg.get("onnx") else None, "split": cfg.split, "images": len(loader.dataset),
        "scores": module.test_scores,
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
    return results
