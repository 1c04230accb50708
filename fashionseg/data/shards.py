"""Sets larger than memory: LitData shards, streamed from disk (``data.format=shards``).

``python scripts/prepare_data.py <set> ... --shards`` writes, from a set in the folder layout, one LitData
``optimize`` output per split under ``<shards>/<train|val|test>/`` and ``<shards>/manifest.json`` (the ids of
each split, the seed and fractions that drew them, and each label kind's pixel counts per file value over
the training split). A sample holds the photo's file bytes (its JPEG as stored, EXIF included) and each
kind's label PNG bytes in the set's own values: the same shards serve ``task=person`` and ``task=fashion``,
and the data config's ``label_map`` is applied when a sample is read, as for the folder layout.

Training streams them with LitData's ``StreamingDataset``: a seeded shuffle per epoch, each DDP rank and
dataloader worker its own part of the split (every sample once per epoch), and ``StreamingDataLoader``'s
state in Lightning's checkpoints, so a resumed run continues mid-epoch. Nothing is decoded ahead: memory
does not grow with the set (docs/cluster.md has the measured figures).
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from litdata import StreamingDataLoader, StreamingDataset, optimize
from PIL import Image

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.io import read_photo
from fashionseg.data.dataset import LabelMap, Sample, decode_label, load_sample, read_label, to_classes

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


def check_samples(samples: Sequence[tuple[str, Path, Mapping[str, Path]]],
                  kinds: Sequence[str]) -> dict[str, list[int]]:
    """Decode every photo and label map once, before any shard is written, and raise one ``DataError`` listing
    every bad file (unreadable, truncated, a label of another size); LitData's writer processes would otherwise
    die on the first one and leave ``optimize`` waiting for them. Returns each kind's pixel count per label value."""
    problems, counts = [], {kind: np.zeros(256, np.int64) for kind in kinds}
    for sample_id, image, labels in samples:
        shape = None
        for kind, label in labels.items():
            try:
                if shape is None:  # the photo once, with its first label (sizes compared, EXIF named)
                    photo, values = load_sample(Sample(sample_id, Path(image), Path(label)), 256)
                    shape = photo.shape[:2]
                else:
                    values = read_label(Path(label), 256)
                    if values.shape != shape:
                        raise DataError(f"Label {label} is {values.shape[1]}x{values.shape[0]} but its photo {image} "
                                        f"is {shape[1]}x{shape[0]}; a label map must have exactly its image's size.")
            except DataError as e:
                problems.append(str(e))
                continue
            counts[kind] += np.bincount(values.ravel(), minlength=256)
    if problems:
        raise DataError(f"{len(problems)} bad sample(s), no shards written: " + " | ".join(problems[:10]))
    return {kind: c.tolist() for kind, c in counts.items()}


def _encode(sample: tuple[str, str, dict[str, str]]) -> dict:
    """One sample as stored: its id, the photo's file bytes and each kind's label file bytes."""
    sample_id, image, labels = sample
    return {"id": sample_id, "image": Path(image).read_bytes(),
            **{f"label_{kind}": Path(label).read_bytes() for kind, label in labels.items()}}


def write_shards(samples: Sequence[tuple[str, Path, Mapping[str, Path]]], parts: Mapping[str, Sequence[int]],
                 out: str | Path, split: dict, chunk_bytes: str = "64MB", num_workers: int = 1) -> dict:
    """Write ``samples`` (``(id, photo, {kind: label file})``) as one LitData output per split.

    Args:
        parts: the sample indices of each split (``train``, ``val``, ``test``).
        out: the shards' folder; ``<out>/<split>/`` and ``<out>/manifest.json`` are (re)written.
        split: how the split was drawn (``{"seed": ..., "fractions": ...}``), stored for the reader's check.
    Returns the manifest.
    """
    out = Path(out)
    kinds = sorted(samples[0][2]) if samples else []
    chosen = {name: [samples[i] for i in parts.get(name, [])] for name in SPLITS}
    # Every file checked before any is written; the training labels' counts serve loss.weights=auto.
    pixels = {name: check_samples(group, kinds) for name, group in chosen.items()}
    manifest: dict = {"format": "litdata", "kinds": kinds, **split, "train_pixels": pixels["train"],
                      "ids": {name: [s[0] for s in group] for name, group in chosen.items()}}
    for name, group in chosen.items():
        if not group:
            continue
        before = multiprocessing.get_start_method(allow_none=True)  # optimize() sets it for the whole process
        try:
            # fork: the workers need not re-import the caller (a script, a test); they only read files.
            optimize(fn=_encode, inputs=[(i, str(p), {k: str(v) for k, v in ls.items()}) for i, p, ls in group],
                     output_dir=str(out / name), chunk_bytes=chunk_bytes, num_workers=num_workers, mode="overwrite",
                     reorder_files=False, keep_data_ordered=True, verbose=False, start_method="fork")
        finally:
            multiprocessing.set_start_method(before, force=True)
    (out / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def read_manifest(folder: str | Path, help: str = "") -> dict:
    if "://" in str(folder):
        raise ConfigError(f"data.shards={folder}: shards are read from a local or shared file system; copy them "
                          "there (e.g. `aws s3 sync`) and point data.shards at that folder.")
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"data.format=shards, but {path} does not exist. Write the shards once with "
                        "`python scripts/prepare_data.py <set> --src <dir> --out <dir> --shards` and point "
                        f"data.shards at <out>/shards, or train from the folder layout with data.format=memory. "
                        f"{help}".rstrip())
    return json.loads(path.read_text())


def check_split(manifest: dict, folder: str | Path, split: list | dict, seed: int) -> None:
    """The shards hold the split they were written with: refuse a config that asks for another one."""
    if isinstance(split, dict):
        wanted = {name: sorted(map(str, split.get(name, []))) for name in SPLITS}
        if wanted != {name: sorted(manifest["ids"].get(name, [])) for name in SPLITS}:
            raise ConfigError(f"data.split gives id lists that differ from those {folder} was written with. "
                              "Write the shards again with this split (prepare_data.py --shards).")
        return
    if [float(f) for f in split] != [float(f) for f in manifest.get("fractions") or []] or seed != manifest.get("seed"):
        raise ConfigError(
            f"{folder} was written with split {manifest.get('fractions')} and seed {manifest.get('seed')}; this run "
            f"asks for data.split={list(split)} and data.seed={seed}. A split is fixed when the shards are written: "
            f"use those values, or write the shards again (prepare_data.py --shards data.split=... data.seed=...).")


def class_counts(manifest: dict, kind: str, lut: np.ndarray | None, num_classes: int) -> np.ndarray:
    """Pixels of each class over the training split, from the label values' counts stored in the manifest."""
    values = np.asarray(manifest["train_pixels"][kind], np.int64)
    classes = lut if lut is not None else np.arange(256)
    counts = np.zeros(num_classes, np.int64)
    keep = classes < num_classes
    np.add.at(counts, classes[keep], values[keep])
    return counts


class Labels:
    """How a stored sample's label files become the task's classes: per kind, its class count and label map."""

    def __init__(self, kinds: Sequence[str], classes: Sequence[int], maps: Mapping[str, LabelMap],
                 ignore_index: int | None):
        self.kinds, self.classes, self.maps, self.ignore_index = list(kinds), list(classes), dict(maps), ignore_index

    def decode(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        """(photo (H, W, 3), label (H, W), or (H, W, kinds) with several kinds) of a stored sample."""
        image = read_photo(bytes(item["image"]), name=f"the photo of {item['id']}")
        labels = []
        for kind, classes in zip(self.kinds, self.classes):
            name = f"{kind} label of {item['id']} (in the shards)"
            if f"label_{kind}" not in item:
                raise ConfigError(f"The shards hold no {kind} labels (task.label={kind}); they were written from a "
                                  "data config without that kind of label. Write them again with it.")
            with Image.open(io.BytesIO(item[f"label_{kind}"])) as im:
                values = decode_label(im, name)
            labels.append(to_classes(values, name, classes, self.ignore_index, self.maps.get(kind)))
        if labels[0].shape != image.shape[:2]:
            raise DataError(f"The photo of {item['id']} is {image.shape[1]}x{image.shape[0]} but its label is "
                            f"{labels[0].shape[1]}x{labels[0].shape[0]}; write the shards again.")
        return image, labels[0] if len(labels) == 1 else np.stack(labels, -1)


class ShardDataset(StreamingDataset):
    """A LitData ``StreamingDataset`` of one split's shards whose items are those of ``SegmentationDataset``
    (``image``, ``mask``, ``id``...), passed through ``transform``; a training item's random augmentation is
    seeded from (seed, epoch, sample index), as in memory. ``arrays[i]`` decodes sample ``i`` (the
    callbacks that draw or refine single photos read them so).

    Args:
        folder: one split's LitData output.
        labels: how its label files become the task's classes.
        shuffle: a new seeded order each epoch (training).
        drop_last: LitData's: ``None`` drops the last samples only under DDP, so that ranks stay in step.
    """

    def __init__(self, folder: str | Path, labels: Labels, transform: Callable, seed: int, shuffle: bool,
                 drop_last: bool | None = None):
        if not (Path(folder) / "index.json").is_file():
            raise DataError(f"{folder} holds no LitData shards (no index.json); write them with "
                            "scripts/prepare_data.py --shards.")
        super().__init__(str(folder), shuffle=shuffle, drop_last=drop_last, seed=seed)
        self.labels, self.sample_transform, self.augment_seed = labels, transform, seed

    def __getitem__(self, index):
        item = super().__getitem__(index)
        image, label = self.labels.decode(item)
        if self.shuffle and hasattr(self.sample_transform, "reseed"):
            # LitData counts epochs from 1 (its loader's first pass), Lightning and the in-memory sampler from 0:
            # sample i of epoch e gets the augmentation it gets in memory.
            position, epoch = int(getattr(index, "index", index)), max(self.current_epoch - 1, 0)
            self.sample_transform.reseed(int(np.random.SeedSequence(
                [self.augment_seed, epoch, position]).generate_state(1)[0]))
        out = self.sample_transform(image, label)
        out["id"] = item["id"]
        return out

    @property
    def arrays(self) -> Sequence[tuple[np.ndarray, np.ndarray]]:
        return _Decoded(self)


class _Decoded(Sequence):
    """Random access to a split's decoded (photo, label) pairs, read from the shards one at a time."""

    def __init__(self, dataset: ShardDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset.labels.decode(StreamingDataset.__getitem__(self.dataset, int(i)))


def streaming_loader(dataset, batch_size: int, num_workers: int, collate_fn: Callable, pin_memory: bool):
    """LitData's ``StreamingDataLoader``: it moves the dataset to the next epoch and has a ``state_dict``, which
    Lightning stores in checkpoints (mid-epoch resume)."""
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                               pin_memory=pin_memory)
