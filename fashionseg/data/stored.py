"""The data a trained network saw: its run's data module rebuilt from the config stored in its checkpoint."""

from __future__ import annotations

from collections.abc import Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from fashionseg.data.multiset import primary_data_config


def checkpoint_datamodule(config: Mapping, root: str | None, set_cfg: DictConfig | None = None, setup: bool = True,
                          **data):
    """The data settings a checkpoint was trained with (input size, split, seed; ``config`` is its stored run
    config), pointed at ``root`` and at ``data`` overrides (e.g. ``limit``), set up: ``datamodule.datasets[split]``.

    ``set_cfg``: another set's config (conf/data/<set>.yaml: its files, label map, split) to read
    instead; the input size and the task's classes stay the checkpoint's. ``setup=False``: not set up (nothing
    decoded; ``samples()`` lists the photos and their split).
    """
    train_cfg = OmegaConf.create(config)
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
    if setup:
        datamodule.setup("test")
    return datamodule
