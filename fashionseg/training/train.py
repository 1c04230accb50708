"""Training: compose -> instantiate -> fit -> test the best checkpoint -> results.json."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from fashionseg.core.config import check_writable, resolve_precision, validate
from fashionseg.core.errors import ConfigError, Interrupted
from fashionseg.core.tracking import closes_trackers, configure_wandb
from fashionseg.data import FashionDataModule, MultiSetDataModule
from fashionseg.inference.checkpoint import read_checkpoint
from fashionseg.metrics import confusion_lists
from fashionseg.training.callbacks.checkpoint import reroot
from fashionseg.training.distill import attach_distiller, teacher_path
from fashionseg.training.losses import median_frequency_weights
from fashionseg.training.module import SegmentationModule
from fashionseg.training.rundir import keep_previous_results, last_checkpoint, relaunch, stored_metric

log = logging.getLogger(__name__)


def resolve_auto_weights(loss_cfg: DictConfig, datamodule: FashionDataModule | MultiSetDataModule) -> DictConfig:
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


def split_sizes(ids: dict) -> dict:
    """Photos per subset, ``{"train": 300, ...}``, per set with several sets."""
    return {k: split_sizes(v) if isinstance(v, dict) else len(v) for k, v in ids.items()}


def instantiate_dict(cfg: DictConfig | None, group: str = "callbacks") -> list:
    """Instantiate every entry of a group like ``callbacks`` or ``logger``; null entries are off.

    A non-null entry without ``_target_`` is an error: it is what a value override of a callback that
    was never selected leaves (e.g. ``callbacks.refinements.methods`` without ``callbacks=refine``), and
    skipping it would drop that callback from the run without a word.
    """
    if not cfg:
        return []
    for name, node in cfg.items():
        if node is not None and not (OmegaConf.is_dict(node) and "_target_" in node):
            raise ConfigError(
                f"{group}.{name}={node} has no _target_, so it would build nothing. Select the "
                f"config that defines it (conf/{group}/), e.g. {group}=[default,{name}], or set {group}.{name}=null."
            )
    return [hydra.utils.instantiate(node) for node in cfg.values() if node is not None]


def command_line_overrides() -> list[Override]:
    """The command line's overrides, parsed by Hydra's own grammar (empty outside a Hydra run)."""
    if not HydraConfig.initialized():
        return []
    return OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))


def group_choices() -> dict:
    """The config group options this run composed, e.g. {"model": "u2netp", ...} (empty outside Hydra)."""
    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def reroot_config(node, old: str, new: str):
    """A copy of a plain config (dicts, lists, scalars) with every path under ``old`` moved under ``new``."""
    if isinstance(node, dict):
        return {k: reroot_config(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [reroot_config(v, old, new) for v in node]
    return reroot(node, old, new) if isinstance(node, str) and node.startswith(old) else node


def read_stored_config(path: Path) -> dict:
    """The fashionseg config inside a train.py checkpoint (its module paths upgraded), without loading its
    tensors: mmap, Lightning loads them once, in fit()."""
    try:
        return read_checkpoint(path, mmap=True)["hyper_parameters"]["config"]
    except ConfigError as e:
        raise ConfigError(f"{e} Resume from another checkpoint of the run with ckpt_path=<file> (see "
                          f"{path.parent}), or start a new run.") from e


def resume_config(cfg: DictConfig) -> DictConfig:
    """For ``ckpt_path=last``: the killed run's own config, from ``<run dir>/checkpoints/last.ckpt`` (or the
    run's newest complete checkpoint, where the first save of last.ckpt was killed).

    The stored config makes the resumed run identical to the original without repeating its
    overrides; ``key=value`` overrides on the resume command line (e.g. ``trainer.max_epochs=40``)
    still apply. Changing a whole group (``model=...``) would be a different run, and is refused.
    Every path under the stored run directory is re-rooted at the directory given, so a copied or
    moved run folder resumes into itself and never touches the original.
    """
    if cfg.get("ckpt_path") != "last":
        if cfg.get("ckpt_path"):  # another run's file: read safely (never runs code) before anything, as fit() will
            read_stored_config(Path(cfg.ckpt_path))
        return cfg
    out_dir = str(cfg.paths.output_dir)
    path = last_checkpoint(out_dir)
    if path is None:
        raise ConfigError(
            f"ckpt_path=last, but {Path(out_dir) / 'checkpoints'} holds no checkpoint. Resume a run with "
            "`python train.py hydra.run.dir=<that run's directory> ckpt_path=last`."
        )
    stored = read_stored_config(path)
    old_dir = stored.get("paths", {}).get("output_dir")
    if old_dir and old_dir != out_dir:
        log.info("Run directory moved from %s: its paths are re-rooted at %s", old_dir, out_dir)
        stored = reroot_config(stored, old_dir, out_dir)
    resumed = OmegaConf.create(stored)
    choices = group_choices()
    for override in command_line_overrides():
        key = override.key_or_group
        if key == "ckpt_path" or key.startswith("hydra") or key.startswith("paths."):
            continue
        if key in choices:  # a group choice: repeating the original command is fine, changing the run is not
            stored_name, value = OmegaConf.select(resumed, f"{key}.name"), override.value()
            if stored_name is not None and stored_name != value:
                raise ConfigError(
                    f"Cannot resume a {key}={stored_name} run as {override.input_line}; start a new run for "
                    f"another {key}."
                )
            if stored_name is None:
                log.warning("Ignoring %s on resume: the run keeps the config stored in its checkpoint.",
                            override.input_line)
        elif override.is_delete():
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(resumed, parent_key) if parent_key else resumed
            if parent is not None and leaf in parent:
                with open_dict(parent):
                    del parent[leaf]
        else:
            OmegaConf.update(resumed, key, override.value(), merge=True,
                             force_add=override.is_add() or override.is_force_add())
    resumed.paths.output_dir, resumed.ckpt_path = out_dir, str(path)
    # Lightning's CSVLogger deletes an existing metrics.csv: log the resumed part beside it instead.
    part = 1 + len(list(Path(out_dir).glob("*/resume-*")))
    for logger_cfg in (resumed.get("logger") or {}).values():
        if logger_cfg and "version" in logger_cfg:
            logger_cfg.version = f"resume-{part}"
    log.info("Resuming %s from %s", out_dir, path)
    return resumed


def run_summary(cfg: DictConfig, module: SegmentationModule, datamodule) -> str:
    """The run in three lines (extras.print_config); the whole config is in <run dir>/.hydra/config.yaml."""
    net, data = cfg.model.net, cfg.data
    encoder = f"{net.encoder_name}, " if net.get("encoder_name") else ""
    params = sum(p.numel() for p in module.net.parameters()) / 1e6
    size = "x".join(map(str, data.image_size)) if data.get("image_size") else "native size"
    sizes = "/".join(str(v) for v in split_sizes(datamodule.ids).values()) if "sets" not in data else "several sets"
    loss = str(cfg.loss.get("_target_", "?")).rsplit(".", 1)[-1]
    log_file = f"{HydraConfig.get().job.name}.log" if HydraConfig.initialized() else "none"
    return "\n".join([
        f"Run: model={cfg.model.name} ({encoder}{params:.1f} M parameters), task={cfg.task.name} "
        f"({cfg.task.num_classes} classes), loss={loss}",
        f"  data {data.get('name', 'data')}: {sizes} train/val/test photos at {size}, batch {data.get('batch_size')}; "
        f"{cfg.trainer.max_epochs} epoch{'' if cfg.trainer.max_epochs == 1 else 's'}, "
        f"lr {OmegaConf.select(cfg, 'optimizer.lr')}, {cfg.trainer.precision}",
        f"  run folder {cfg.paths.output_dir} (config: .hydra/config.yaml, log: {log_file})",
    ])


def assign_run_ids(cfg: DictConfig) -> None:
    """Give loggers that resume by id (W&B) a fixed id, stored in every checkpoint's config."""
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg and "id" in logger_cfg and logger_cfg.id is None:
            logger_cfg.id = uuid.uuid4().hex[:12]  # W&B run ids: lowercase letters and digits


@closes_trackers
def train(cfg: DictConfig) -> tuple[float | None, dict]:
    """Run one training job. Returns (the metric a sweeper optimises, the results written to results.json)."""
    start = time.time()
    if (finished := relaunch(cfg)) is not None:  # a finished run in this folder: kept, and skipped
        return stored_metric(finished, cfg.get("optimized_metric")), finished
    cfg = resume_config(cfg)
    validate(cfg)
    cfg.trainer.precision = resolve_precision(cfg.trainer)  # auto: bf16-mixed where bfloat16 is native
    if cfg.get("distill"):
        teacher_path(cfg.distill)  # the teacher exists, before any data is read
    out_dir = check_writable(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = hydra.utils.instantiate(cfg.data)  # one set, or several (data.sets)
    datamodule.setup("fit")  # reads and checks every file before training starts
    datamodule.write_split(out_dir / "split.json")
    log.info("Split: %s", split_sizes(datamodule.ids))

    assign_run_ids(cfg)
    configure_wandb(cfg)
    loss_cfg = resolve_auto_weights(cfg.loss, datamodule)
    module = SegmentationModule.from_config(cfg, loss_cfg)
    attach_distiller(cfg, module, datamodule)
    if (cfg.get("extras") or {}).get("print_config"):
        log.info(run_summary(cfg, module, datamodule))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_dict(cfg.get("callbacks")),
        logger=instantiate_dict(cfg.get("logger"), "logger") or False,
    )

    try:
        # Lightning reads the resumed checkpoint again, as read_checkpoint does: tensors and plain values only.
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except SIGTERMException:  # Lightning's, a SystemExit with status 0: a scheduler would take the run as done
        raise Interrupted(
            f"Received SIGTERM at epoch {trainer.current_epoch}, step {trainer.global_step}: stopped, "
            f"{out_dir / 'checkpoints' / 'last.ckpt'} saved. Resume with: python train.py hydra.run.dir={out_dir} "
            "ckpt_path=last (a sweep: relaunch it; finished jobs are skipped, this one resumes)."
        ) from None
    fit_time = time.time() - start
    # Before testing: loading the best checkpoint for the test restores that epoch's count.
    images_seen, images_this_fit = module.images_seen, module.images_seen - module.images_seen_at_start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test"):
        if not best:
            log.warning("No best checkpoint (fast_dev_run or no validation): testing the current weights.")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)

    results = {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "val_miou_best": metrics.get("val/miou_best"),
        "test": module.test_scores,
        "test_confusion": confusion_lists(module.test_confusion) if module.test_confusion is not None else None,
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "images_seen": images_seen,
        "fit_time_s": round(fit_time, 1),
        # Training photos per second of this fit (a resumed run: since resuming), validation and
        # checkpoint writing included.
        "images_per_s": round(images_this_fit / fit_time, 2),
        "wall_time_s": round(time.time() - start, 1),
        "refinements": getattr(module, "refinement_report", None),
        "split": {k: v for k, v in datamodule.ids.items()},
        # Several sets (data.sets): each one's last validation and its test scores; "test" is select_on's.
        **({"val_sets": {n: {k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith(f"val/{n}/")}
                         for n in module.eval_names.get("val", [])},
            "test_sets": module.test_scores_per_set} if module.eval_names else {}),
        "optimized_metric": {"name": cfg.get("optimized_metric"), "value": metrics.get(cfg.get("optimized_metric"))},
        "config": module.hparams.config,
    }
    if trainer.is_global_zero:  # under DDP every process has the same results: one writes them
        keep_previous_results(out_dir)  # a finished run continued with ckpt_path=last
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
        log.info("Test scores: %s", json.dumps(module.test_scores))
        log.info("Results written to %s", out_dir / "results.json")
    return metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None, results
