"""Training on several labelled sets at once: their training splits concatenated, each validated and
tested on its own (fashionseg/conf/data/<sets>.yaml, e.g. fashionista_plus.yaml)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fashionseg.core.errors import ConfigError
from fashionseg.data.datamodule import FashionDataModule, collate
from fashionseg.data.sampler import EpochShuffleSampler


def primary_data_config(data_cfg):
    """The data config that fixes a run's input (size, multiple, patterns): a single set's own, or the
    selection set's of a multi-set run."""
    if "sets" not in data_cfg:
        return data_cfg
    return data_cfg.sets[data_cfg.get("select_on") or next(iter(data_cfg.sets))]


class ConcatSets(Dataset):
    """Several sets' datasets as one, indexed like each of them: ``i`` or ``(i, epoch)``."""

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0, *(len(d) for d in self.datasets)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        inner = int(i - self.offsets[s])
        return self.datasets[s][(inner, epoch) if epoch is not None else inner]


class MultiSetDataModule(L.LightningDataModule):
    """Several sets (each a ``FashionDataModule`` with its own files, label map and seeded split).

    Training draws on every set's training split, shuffled together by (seed, epoch). Validation
    and test run one loader per set (``eval_sets``, the selection set first): the module logs
    ``val/<set>/miou`` etc. for each, and the selection set's scores also as ``val/miou``, which
    picks the best checkpoint and drives the scheduler.

    Args:
        sets: ``{name: FashionDataModule}``; they must share the task, input size and batch size.
        select_on: the set whose validation mIoU selects models (default: the first).
        seed: seeds the shuffling of the concatenated training photos.
    """

    def __init__(self, sets: Mapping[str, FashionDataModule], select_on: str | None = None, seed: int = 42):
        super().__init__()
        if not sets:
            raise ConfigError("data.sets is empty; give at least one set, e.g. {fashionista: ...}.")
        self.sets = dict(sets)
        self.select_on = select_on or next(iter(self.sets))
        if self.select_on not in self.sets:
            raise ConfigError(f"data.select_on={self.select_on!r} is not one of data.sets {list(self.sets)}.")
        first = self.sets[self.select_on]
        shared = (first.image_size, first.num_classes, first.batch_size)
        for name, dm in self.sets.items():
            if (dm.image_size, dm.num_classes, dm.batch_size) != shared:
                raise ConfigError(f"data.sets.{name} differs from data.sets.{self.select_on} in input size, classes "
                                  "or batch size; the sets of one run must share them.")
        if streamed := [name for name, dm in self.sets.items() if getattr(dm, "format", "memory") == "shards"]:
            raise ConfigError(f"data.sets.{streamed[0]}.format=shards: several sets are read from memory together. "
                              "Write one set of shards holding all of them (a data config over their photos), or "
                              "train each from memory.")
        self.eval_sets = [self.select_on, *(n for n in self.sets if n != self.select_on)]
        self.seed, self.batch_size = seed, first.batch_size
        self.datasets: dict = {}

    def setup(self, stage: str | None = None) -> None:
        for dm in self.sets.values():
            dm.setup(stage)
        self.datasets = {"train": ConcatSets([dm.datasets["train"] for dm in self.sets.values()]),
                         **{name: self.sets[self.select_on].datasets[name] for name in ("val", "test", "all")}}
        # The sets scored in validation and test, in loader order (a set without photos there has no loader).
        self.eval_names = {subset: [n for n in self.eval_sets if len(self.sets[n].datasets[subset])]
                           for subset in ("val", "test")}

    @property
    def ids(self) -> dict[str, dict[str, list[str]]]:
        return {name: dm.ids for name, dm in self.sets.items()}

    def class_frequencies(self) -> np.ndarray:
        """Pixel share of each class over every set's training split; ignored pixels left out."""
        self.setup("fit")
        counts = sum(dm.class_counts() for dm in self.sets.values())
        return counts / counts.sum()

    def set_teacher_logits(self, stored) -> None:
        raise ConfigError(f"distill.logits={stored.folder} (a teacher's stored logits) works with one data set; this "
                          f"run trains on {list(self.sets)}. Give distill.teacher=<checkpoint> instead (the teacher "
                          "runs in every step).")

    def write_split(self, path: str | Path) -> None:
        """Each set's split manifest, under its name."""
        Path(path).write_text(json.dumps({name: dm.split_manifest() for name, dm in self.sets.items()}, indent=1))

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        world = self.trainer.world_size if self.trainer is not None else 1
        share = -(-len(dataset) // world)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(dataset), self.seed),
                          drop_last=share % self.batch_size == 1, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.seed))

    def _eval_loaders(self, subset: str) -> list[DataLoader]:
        return [self.sets[name]._loader(subset, shuffle=False) for name in self.eval_names[subset]]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")
