"""Training: compose -> instantiate -> fit -> test the best checkpoint -> results.json."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import hydra
import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fashionseg import ConfigError
from fashionseg.config import check_writable, validate
from fashionseg.data import FashionDataModule
from fashionseg.losses import median_frequency_weights
from fashionseg.module import SegmentationModule
from fashionseg.tracking import configure_wandb

log = logging.getLogger(__name__)


def resolve_auto_weights(loss_cfg: DictConfig, datamodule: FashionDataModule) -> DictConfig:
    """Replace every ``weights: auto`` in the loss config by median-frequency weights of the training split."""
    loss_cfg = loss_cfg.copy()
    nodes = [loss_cfg]
    while nodes:
        node = nodes.pop()
        if isinstance(node, DictConfig):
            if node.get("weights") == "auto":
                node.weights = median_frequency_weights(datamodule.class_frequencies())
                log.info("Class weights from training-split frequencies: %s", list(node.weights))
            nodes += [node[k] for k in node if OmegaConf.is_config(node[k])]
        elif OmegaConf.is_list(node):
            nodes += [x for x in node if OmegaConf.is_config(x)]
    return loss_cfg


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a group like ``callbacks`` or ``logger``; null entries are off."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def build_module(cfg: DictConfig, loss_cfg: DictConfig) -> SegmentationModule:
    """The LightningModule of a run config; ``loss_cfg`` has its weights resolved to numbers."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["loss"] = OmegaConf.to_container(loss_cfg, resolve=True)
    return SegmentationModule(
        net=hydra.utils.instantiate(cfg.model.net),
        loss=hydra.utils.instantiate(loss_cfg),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_names=list(cfg.task.class_names),
        aux_weight=cfg.model.get("aux_weight", 0.0),
        tta_hflip=cfg.get("tta_hflip", False),
        config=config,
    )


def command_line_overrides() -> list[str]:
    """The ``key=value`` overrides given on the command line (empty outside a Hydra run)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def resume_config(cfg: DictConfig) -> DictConfig:
    """For ``ckpt_path=last``: the killed run's own config, from ``<run dir>/checkpoints/last.ckpt``.

    The stored config makes the resumed run identical to the original without repeating its
    overrides; ``key=value`` overrides on the resume command line (e.g. ``trainer.max_epochs=40``)
    still apply. Changing a whole group (``model=...``) would be a different run, and is refused.
    """
    if cfg.get("ckpt_path") != "last":
        return cfg
    path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path=last, but {path} does not exist. Resume a run with "
            "`python train.py hydra.run.dir=<that run's directory> ckpt_path=last`."
        )
    # mmap: only the config is read here; Lightning loads the tensors once, in fit().
    stored = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("hyper_parameters", {}).get("config")
    if not stored:
        raise ConfigError(f"{path} holds no fashionseg config; it was not written by train.py.")
    resumed = OmegaConf.create(stored)
    for override in command_line_overrides():
        key, _, value = override.lstrip("+~").partition("=")
        value = value.strip()
        if key == "ckpt_path" or key.startswith("hydra.") or key.startswith("paths."):
            continue
        if "." not in key:  # a group choice: repeating the original command is fine, changing the run is not
            stored_name = OmegaConf.select(resumed, f"{key}.name")
            if stored_name is not None and stored_name != value:
                raise ConfigError(
                    f"Cannot resume a {key}={stored_name} run as {override}; start a new run for another {key}."
                )
            if stored_name is None:
                log.warning("Ignoring %s on resume: the run keeps the config stored in its checkpoint.", override)
            continue
        OmegaConf.update(resumed, key, yaml.safe_load(value), force_add=False)
    resumed.paths.output_dir, resumed.ckpt_path = cfg.paths.output_dir, str(path)
    # Lightning's CSVLogger deletes an existing metrics.csv: log the resumed part beside it instead.
    part = 1 + len(list(Path(cfg.paths.output_dir).glob("*/resume-*")))
    for logger_cfg in (resumed.get("logger") or {}).values():
        if logger_cfg and "version" in logger_cfg:
            logger_cfg.version = f"resume-{part}"
    log.info("Resuming %s from %s", cfg.paths.output_dir, path)
    return resumed


def assign_run_ids(cfg: DictConfig) -> None:
    """Give loggers that resume by id (W&B) a fixed id, stored in every checkpoint's config."""
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg and "id" in logger_cfg and logger_cfg.id is None:
            logger_cfg.id = uuid.uuid4().hex[:12]  # W&B run ids: lowercase letters and digits


def finish_wandb(trainer: L.Trainer) -> None:
    """Close the W&B run (flushes an offline run; the next job of a sweep starts its own)."""
    if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
        import wandb

        wandb.finish()


def train(cfg: DictConfig) -> tuple[float | None, dict]:
    """Run one training job. Returns (the metric a sweeper optimises, the results written to results.json)."""
    start = time.time()
    cfg = resume_config(cfg)
    validate(cfg)
    out_dir = check_writable(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: FashionDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")  # reads and checks every file before training starts
    datamodule.write_split(out_dir / "split.json")
    log.info("Split: %s", {k: len(v) for k, v in datamodule.ids.items()})

    assign_run_ids(cfg)
    configure_wandb(cfg)
    loss_cfg = resolve_auto_weights(cfg.loss, datamodule)
    module = build_module(cfg, loss_cfg)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_dict(cfg.get("callbacks")), logger=instantiate_dict(cfg.get("logger")) or False
    )

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_time = time.time() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test"):
        if not best:
            log.warning("No best checkpoint (fast_dev_run or no validation): testing the current weights.")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)

    results = {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "val_miou_best": metrics.get("val/miou_best"),
        "test": module.test_scores,
        "test_confusion": module.test_confusion.tolist() if module.test_confusion is not None else None,
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "fit_time_s": round(fit_time, 1),
        "wall_time_s": round(time.time() - start, 1),
        "refinements": getattr(module, "refinement_report", None),
        "split": {k: v for k, v in datamodule.ids.items()},
        "config": module.hparams.config,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    finish_wandb(trainer)
    log.info("Test scores: %s", json.dumps(module.test_scores))
    log.info("Results written to %s", out_dir / "results.json")
    return metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None, results
