"""LightningDataModule for the Fashionista/CSC420 format, with the reference study's seeded split."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.data.dataset import LabelMap, Sample, SegmentationDataset, load_all, scan_dataset
from fashionseg.data.sampler import EpochShuffleSampler
from fashionseg.data.split import split_indices
from fashionseg.data.transforms import EvalTransform, TrainTransform

SUBSETS = ("train", "val", "test")
ALL = "all"  # every photo of the set, split or not: for scoring a set as a whole (eval.py split=all)


class FashionDataModule(L.LightningDataModule):
    """A labelled photo set (fashionseg/conf/data/<set>.yaml), decoded once into memory and split.

    Args:
        root: the set's folder.
        label: which kind of label map the task reads (``task.label``, e.g. ``person`` or ``clothes``); a list
            (task=joint: ``[person, clothes]``) reads one map of each kind per photo, and items' masks are then
            (kinds, H, W), warped together.
        images: the photos' file pattern under ``root``; ``{id}`` stands for the photo's id.
        labels: the label maps' file pattern per kind of label (``{kind: pattern}``), or one pattern.
        label_map: ``{value in the files: class index}`` when the set numbers its labels its own way.
        unmapped: what values missing from ``label_map`` become: ``error`` or ``ignore``.
        help: what to tell a user whose copy of the set is missing (how to get it).
        name: the set's name.
        num_classes: classes of the task; label values must lie below it, or be ``ignore_index``. With a list
            of labels, one count per kind of label.
        ignore_index: the label value of pixels that are neither learned nor scored ("void"), also
            given to padding and to pixels that augmentation brings in; None: no such value.
        image_size: network input (H, W), or None to pad the native size to ``size_multiple``.
        size_multiple: what the network's input sides must be divisible by.
        split: train/val/test fractions (``seed`` fixes the permutation), or fixed id lists
            ``{"train": [...], "val": [...], "test": [...]}``.
        augment: switches for ``transforms.augmentations`` (training split only).
        limit: use only the first ``limit`` images (sorted order) — for smoke tests.
        format: ``memory`` decodes every photo once into memory; ``shards`` streams LitData shards written by
            ``scripts/prepare_data.py --shards`` (``fashionseg.data.shards``), for sets larger than memory.
        shards: the shards' folder, for ``format=shards``.
    """

    def __init__(self, root: str, label: str | Sequence[str], num_classes: int | Sequence[int],
                 image_size: Sequence[int] | None = (384, 256), size_multiple: int = 32,
                 split: Sequence[float] | Mapping[str, Sequence] = (0.5, 0.1, 0.4),
                 seed: int = 42, batch_size: int = 8, eval_batch_size: int | None = None, num_workers: int = 0,
                 augment: dict | None = None, limit: int | None = None, pin_memory: bool = False,
                 ignore_index: int | None = 255, images: str = "images/{id}.jpg",
                 labels: Mapping[str, str] | str = "labels/{id}_{label}.png", label_map: Mapping | None = None,
                 unmapped: str = "error", help: str = "", name: str = "data", format: str = "memory",
                 shards: str | None = None):
        super().__init__()
        if format not in ("memory", "shards"):
            raise ConfigError(f"data.format={format!r} must be memory (decode the folder once) or shards "
                              "(stream LitData shards written by scripts/prepare_data.py --shards).")
        if format == "shards" and not shards:
            raise ConfigError("data.format=shards needs data.shards=<folder the shards were written to>.")
        self.format, self.shards = format, shards
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}.")
        self.root, self.name, self.help = Path(root), name, help
        self.kinds = [label] if isinstance(label, str) else list(label)
        self.classes = [num_classes] * len(self.kinds) if isinstance(num_classes, int) else list(num_classes)
        if len(self.classes) != len(self.kinds):
            raise ConfigError(f"data.num_classes={num_classes} needs one class count per label kind {self.kinds}.")
        self.label, self.num_classes = label, num_classes
        self.labels_patterns = []
        for kind in self.kinds:
            if isinstance(labels, str):
                self.labels_patterns.append(labels.replace("{label}", kind))
            elif kind in labels:
                self.labels_patterns.append(labels[kind])
            else:
                raise ConfigError(f"data.labels has no pattern for task.label={kind!r}; it has {sorted(labels)}.")
        # Every kind the set has (the shards keep them all, so that they serve each task).
        self.labels_patterns_all = dict(labels) if isinstance(labels, Mapping) else dict(zip(self.kinds,
                                                                                            self.labels_patterns))
        self.labels_pattern = self.labels_patterns[0]  # the first kind's (the only one of a single task)
        self.images_pattern = images
        # One mapping ({value: class}), or one per kind of label ({person: {...}, clothes: {...}}): a set whose
        # single label file per photo serves every task (the public sets, conf/data/lip.yaml).
        per_kind = bool(label_map) and all(isinstance(k, str) and not k.isdigit() for k in label_map)
        if label_map and not per_kind and len(self.kinds) > 1:
            raise ConfigError(f"data.label_map translates one kind of label map; task.label={self.kinds} reads "
                              f"{len(self.kinds)}. Give one mapping per kind ({{{self.kinds[0]}: {{...}}, ...}}), or "
                              "label files in the tasks' own numbering.")
        if per_kind and (missing := [k for k in self.kinds if k not in label_map]):
            raise ConfigError(f"data.label_map has mappings for {sorted(label_map)}, none for task.label={missing}.")
        maps = {k: label_map[k] for k in self.kinds} if per_kind else {self.kinds[0]: label_map} if label_map else {}
        self.label_maps = {k: LabelMap(dict(m), unmapped, ignore_index) for k, m in maps.items()}
        self.label_map = self.label_maps.get(self.kinds[0])
        self.image_size = list(image_size) if image_size is not None else None
        self.split = {k: [str(i) for i in v] for k, v in split.items()} if isinstance(split, Mapping) else list(split)
        self.size_multiple, self.seed = size_multiple, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.limit = num_workers, pin_memory, limit
        self.augment = dict(augment or {})
        # Build the transforms now so that a bad size or augmentation fails before any file is read.
        self.ignore_index = ignore_index
        self.train_transform = TrainTransform(self.image_size, size_multiple, self.augment, ignore_index)
        self.eval_transform = EvalTransform(self.image_size, size_multiple)
        self.ids: dict[str, list[str]] = {}
        self.datasets: dict[str, SegmentationDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Decode every photo once and split them; ``datasets`` then holds train, val, test and ``all``.

        Training (stage ``fit``) needs every split with a positive fraction to hold photos; scoring
        (stage ``test``/``validate``) does not, so that a small set can be scored whole.
        """
        if self.datasets:  # decoded once, whatever the stage
            return
        if self.format == "shards":
            return self._setup_shards()
        samples, *more = [scan_dataset(self.root, self.images_pattern, p, self.help) for p in self.labels_patterns]
        if self.limit:
            samples, more = samples[: self.limit], [m[: self.limit] for m in more]
        parts = self._split(samples)
        for name, idx in zip(SUBSETS, parts):
            if not idx and isinstance(self.split, list) and self.split[SUBSETS.index(name)] > 0 \
                    and stage in (None, "fit"):
                raise ConfigError(
                    f"The {name} split is empty: {len(samples)} images split by {self.split}. "
                    "Use more images (data.limit) or larger fractions (data.split)."
                )
        # Raises once, listing every bad file.
        arrays = load_all(samples, self.classes[0], self.ignore_index, self.label_map)
        if more:  # one map of each kind per photo, stacked as (H, W, kinds)
            others = [load_all(m, k, self.ignore_index, self.label_maps.get(kind))
                      for m, k, kind in zip(more, self.classes[1:], self.kinds[1:])]
            arrays = [(image, np.stack([label, *(o[i][1] for o in others)], -1))
                      for i, (image, label) in enumerate(arrays)]
        for name, idx in zip(SUBSETS, parts):
            transform = self.train_transform if name == "train" else self.eval_transform
            self.ids[name] = [samples[i].id for i in idx]
            self.datasets[name] = SegmentationDataset(self.ids[name], [arrays[i] for i in idx], transform, self.seed)
        self.datasets[ALL] = SegmentationDataset([s.id for s in samples], arrays, self.eval_transform, self.seed)

    def samples(self) -> tuple[list[tuple[str, Path, dict[str, Path]]], list[list[int]]]:
        """Every photo of the folder layout with its label file of each kind the config names (``labels``), and
        the indices of each split: what ``scripts/prepare_data.py --shards`` writes."""
        patterns = self.labels_patterns_all
        scans = {kind: scan_dataset(self.root, self.images_pattern, p, self.help) for kind, p in patterns.items()}
        first = next(iter(scans.values()))
        if self.limit:
            first = first[: self.limit]
        samples = [(s.id, s.image, {kind: scan[i].label for kind, scan in scans.items()}) for i, s in enumerate(first)]
        return samples, self._split(first)

    def _setup_shards(self) -> None:
        try:
            from fashionseg.data import shards
        except ImportError as e:
            raise ConfigError(f"data.format=shards needs LitData ({e}): pip install 'fashionseg[data]'.") from None
        self.manifest = shards.read_manifest(self.shards, self.help)
        shards.check_split(self.manifest, self.shards, self.split, self.seed)
        for name in SUBSETS:
            self.ids[name] = list(self.manifest["ids"].get(name, []))
            self.datasets[name] = self._shard_dataset(name) if self.ids[name] else \
                SegmentationDataset([], [], self.eval_transform, self.seed)

    def _shard_dataset(self, name: str):
        """One split's shards. LitData reads the DDP rank and world size when the dataset is made: the loaders
        make their own once Lightning has started the processes (``_loader``)."""
        from fashionseg.data.shards import Labels, ShardDataset

        labels = Labels(self.kinds, self.classes, self.label_maps, self.ignore_index)
        train = name == "train"
        return ShardDataset(f"{self.shards}/{name}", labels, self.train_transform if train else self.eval_transform,
                            self.seed, shuffle=train, drop_last=None if train else False)

    def _split(self, samples: Sequence[Sample]) -> list[list[int]]:
        """Indices of the train, val and test photos: fixed id lists, or the seeded fractions."""
        if isinstance(self.split, list):
            return split_indices(len(samples), self.split, self.seed)
        unknown_keys = sorted(set(self.split) - set(SUBSETS))
        if unknown_keys:
            raise ConfigError(f"data.split has {unknown_keys}; give id lists for {list(SUBSETS)}.")
        index = {s.id: i for i, s in enumerate(samples)}
        unknown = [i for ids in self.split.values() for i in ids if i not in index]
        if unknown:
            raise DataError(f"data.split names {len(unknown)} id(s) that {self.root} does not have: "
                            f"{', '.join(unknown[:10])}. Each id must match {self.images_pattern}.")
        return [sorted(index[i] for i in self.split.get(name, [])) for name in SUBSETS]

    def class_counts(self) -> np.ndarray:
        """Pixels of each class over the training split's label maps, shape (K,); ignored pixels left out."""
        if len(self.kinds) > 1:
            raise ConfigError(f"Class weights (loss.weights=auto) need one kind of label map; task.label={self.kinds}. "
                              "Train task=joint without class weights.")
        self.setup("fit")
        if self.format == "shards":
            from fashionseg.data.shards import class_counts

            label_map = self.label_maps.get(self.kinds[0])
            return class_counts(self.manifest, self.kinds[0], label_map.lut if label_map else None, self.num_classes)
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for _, label in self.datasets["train"].arrays:
            counts += np.bincount(label.ravel(), minlength=self.num_classes)[: self.num_classes]
        return counts

    def class_frequencies(self) -> np.ndarray:
        """Pixel share of each class over the training split's label maps, shape (K,); ignored pixels left out."""
        counts = self.class_counts()
        return counts / counts.sum()

    def set_teacher_logits(self, stored) -> None:
        """Hand each training photo a teacher's stored logits (``fashionseg.training.distill.StoredLogits``), which
        the training transform warps with it and batches carry as ``teacher``."""
        self.setup("fit")
        if self.format == "shards":
            raise ConfigError("Distillation from stored logits (distill=kd) reads the training photos from memory: "
                              "train with data.format=memory.")
        train = self.datasets["train"]
        train.teacher = stored.load(train.ids, [image.shape[:2] for image, _ in train.arrays])

    def split_manifest(self) -> dict:
        """The image ids of each subset, with the root, seed and fractions that drew them."""
        fractions = self.split if isinstance(self.split, list) else None  # else fixed id lists
        return {"root": str(self.root), "seed": self.seed, "fractions": fractions,
                **{name: self.ids.get(name, []) for name in SUBSETS}}

    def write_split(self, path: str | Path) -> None:
        """Write the image ids of each subset, so that runs compare image for image."""
        Path(path).write_text(json.dumps(self.split_manifest(), indent=1))

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset, train = self.datasets[name], name == "train"
        if self.format == "shards" and len(self.ids[name]):
            from fashionseg.data.shards import streaming_loader

            # LitData orders, shuffles (seed, epoch) and splits the split over DDP ranks and workers itself.
            batch = self.batch_size if train else self.eval_batch_size
            loader = streaming_loader(self._shard_dataset(name), batch, self.num_workers, collate, self.pin_memory)
            if not len(loader):
                raise ConfigError(
                    f"This process gets no {name} photos from the shards: LitData hands the split's "
                    f"{len(self.ids[name])} photos to the DDP processes and their data.num_workers={self.num_workers} "
                    f"loader workers a batch ({batch}) at a time. Lower data.{'' if train else 'eval_'}batch_size or "
                    "data.num_workers, or give the split more photos.")
            return loader
        # Under DDP every process sees its share of the split (Lightning's distributed sampler).
        world = self.trainer.world_size if self.trainer is not None else 1
        share = -(-len(dataset) // world)
        # Training order and augmentation follow (seed, epoch) alone: a resumed run repeats the original.
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else None
        # Each DataLoader iterator draws a base seed from its generator, by default the global torch RNG
        # that dropout uses. Lightning makes the first epoch's iterator before `on_train_epoch_start`
        # (where EpochSeed reseeds) and later ones after it, so a resumed run would see another dropout
        # stream than an uninterrupted one. A generator of the loader's own keeps the global RNG untouched.
        return DataLoader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
            # A trailing training batch of one breaks BatchNorm (ASPP pooling): drop only that one.
            drop_last=train and share % self.batch_size == 1,
            num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0, collate_fn=collate,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def collate(items: list[dict]) -> dict:
    """Stack items; ids stay a list. Evaluation labels must share one native size per batch."""
    batch = {"id": [it["id"] for it in items]}
    for key in ("image", "mask", "valid_hw", "teacher"):
        if key in items[0]:
            shapes = {tuple(it[key].shape) for it in items}
            if len(shapes) > 1:
                raise ValueError(
                    f"Cannot batch {key} tensors of different shapes {sorted(shapes)} (ids {batch['id']}); "
                    "evaluate with data.eval_batch_size=1 when photos differ in size."
                )
            batch[key] = torch.stack([it[key] for it in items])
    return batch
