"""Reading the on-disk format: images/NNNN.jpg with labels/NNNN_{person,clothes}.png."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from fashionseg import DataError

# Which label file each task reads: labels/<id>_<suffix>.png (palette PNG, pixel = class index).
LABEL_FILES = {"person": "person", "clothes": "clothes"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

DATA_HELP = (
    "Get the 600-image Fashionista/CSC420 set with `python scripts/download_data.py --out <dir>` "
    "(or copy a folder holding images/, labels/ and labels.txt), then point the framework at it "
    "with `data.root=<dir>` or the environment variable FASHIONSEG_DATA=<dir>."
)
MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One photo and its label map on disk."""

    id: str
    image: Path
    label: Path


def scan_dataset(root: str | Path, label: str) -> list[Sample]:
    """List the samples under ``root`` in sorted id order, checking that every label file exists.

    Args:
        root: folder holding ``images/`` and ``labels/``.
        label: which label file to read, a key of ``LABEL_FILES``.
    """
    root = Path(root)
    if label not in LABEL_FILES:
        raise DataError(f"Unknown label kind {label!r}; valid: {sorted(LABEL_FILES)}.")
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise DataError(f"Data set not found: {root} has no images/ and labels/ folders. {DATA_HELP}")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"No images (*.jpg, *.png) in {images_dir}. {DATA_HELP}")
    suffix = f"_{LABEL_FILES[label]}.png"
    samples, missing = [], []
    for image in images:
        label_path = labels_dir / f"{image.stem}{suffix}"
        if not label_path.is_file():
            missing.append(str(label_path))
        samples.append(Sample(image.stem, image, label_path))
    stems = {p.stem for p in images}
    orphans = sorted(str(images_dir / p.name.removesuffix(suffix)) + ".jpg" for p in labels_dir.glob(f"*{suffix}")
                     if p.name.removesuffix(suffix) not in stems)
    if orphans:
        raise DataError(
            f"{len(orphans)} image(s) missing for label maps in {labels_dir}: {_listing(orphans)}. "
            "Restore the photos, or remove their label files."
        )
    if missing:
        raise DataError(
            f"{len(missing)} label file(s) missing for images in {images_dir}: "
            f"{_listing(missing)}. Each images/<id>.jpg needs labels/<id>{suffix}; "
            "restore the files or remove the images without labels."
        )
    return samples


def read_image(path: Path) -> np.ndarray:
    """Decode a photo to an RGB uint8 array (H, W, 3), whatever its mode."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"Cannot read image {path}: {e}. Replace or delete the file.") from e


def read_label(path: Path, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Decode a label PNG as class indices (H, W) uint8 and check every value is a class or ``ignore_index``."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(
                    f"Label {path} has mode {im.mode!r}; expected a palette ('P') or grayscale ('L') PNG "
                    "whose pixel values are class indices."
                )
            label = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"Cannot read label {path}: {e}. Replace or delete the file.") from e
    if label.max(initial=0) >= num_classes:
        bad = sorted(int(v) for v in np.unique(label) if v >= num_classes and v != ignore_index)
        if bad:
            void = f" or {ignore_index} (ignored)" if ignore_index is not None else ""
            raise DataError(
                f"Label {path} has values {bad} outside the task's {num_classes} classes (0..{num_classes - 1})"
                f"{void}. Check that the task matches the label file (task=person reads *_person.png, "
                "task=fashion reads *_clothes.png) or fix the label map."
            )
    return label


def load_sample(sample: Sample, num_classes: int, ignore_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and cross-check one sample: image (H, W, 3) and label (H, W) of the same size."""
    image = read_image(sample.image)
    label = read_label(sample.label, num_classes, ignore_index)
    if image.shape[:2] != label.shape:
        raise DataError(
            f"Image {sample.image} is {image.shape[1]}x{image.shape[0]} (WxH) but its label {sample.label} is "
            f"{label.shape[1]}x{label.shape[0]}; a label map must have exactly its image's size."
        )
    return image, label


def load_all(samples: Sequence[Sample], num_classes: int,
             ignore_index: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode every sample once, collecting all problems into a single error."""
    decoded, problems = [], []
    for sample in samples:
        try:
            decoded.append(load_sample(sample, num_classes, ignore_index))
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError(f"{len(problems)} bad sample(s): " + " | ".join(problems[:MAX_LISTED]))
    return decoded


def _listing(items: Sequence[str]) -> str:
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


class SegmentationDataset(Dataset):
    """Decoded (image, label) pairs held in memory, passed through a transform.

    Args:
        ids: sample ids, in order.
        arrays: decoded ``(image (H, W, 3) uint8, label (H, W) uint8)`` per id.
        transform: ``f(image, label) -> dict`` giving the tensors of one item.
    """

    def __init__(self, ids: Sequence[str], arrays: Sequence[tuple[np.ndarray, np.ndarray]], transform: Callable,
                 seed: int = 0):
        assert len(ids) == len(arrays), "one decoded pair per id"
        self.ids, self.arrays, self.transform, self.seed = list(ids), arrays, transform, seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key`` is an index, or ``(index, epoch)`` from ``EpochShuffleSampler``: then the item's random
        augmentation is seeded from (seed, epoch, index), reproducible in any worker and after a resume."""
        i, epoch = key if isinstance(key, tuple) else (key, None)
        if epoch is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]))
        image, label = self.arrays[i]
        item = self.transform(image, label)
        item["id"] = self.ids[i]
        return item
