"""Reading the on-disk format: images/NNNN.jpg with labels/NNNN_{person,clothes}.png."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.io import exif_orientation, read_photo

log = logging.getLogger(__name__)

MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One photo and its label map on disk."""

    id: str
    image: Path
    label: Path


def scan_dataset(root: str | Path, images: str = "images/{id}.jpg", labels: str = "labels/{id}_clothes.png",
                 help: str = "") -> list[Sample]:
    """List the samples under ``root`` in sorted id order, checking that every label file exists.

    Args:
        root: the data set's folder.
        images, labels: file patterns relative to ``root``; ``{id}`` stands for the sample id, the same
            in both (e.g. ``images/{id}.jpg`` and ``labels/{id}_clothes.png``).
        help: what to tell a user whose data set is missing (how to get it, where to point).
    """
    root = Path(root)
    for pattern in (images, labels):
        if pattern.count("{id}") != 1:
            raise ConfigError(f"File pattern {pattern!r} must contain {{id}} exactly once, e.g. images/{{id}}.jpg.")
    images_dir, labels_dir = root / Path(images).parent, root / Path(labels).parent
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise DataError(f"Data set not found: {root} has no {Path(images).parent}/ and {Path(labels).parent}/ "
                        f"folders. {help}".rstrip())
    image_ids = _ids(root, images)
    if not image_ids:
        raise DataError(f"No images matching {images} in {root}. {help}".rstrip())
    samples = [Sample(i, root / images.format(id=i), root / labels.format(id=i)) for i in image_ids]
    missing = [str(s.label) for s in samples if not s.label.is_file()]
    known = set(image_ids)
    orphans = [str(root / images.format(id=i)) for i in _ids(root, labels) if i not in known]
    if orphans:
        raise DataError(
            f"{len(orphans)} image(s) missing for label maps in {labels_dir}: {_listing(orphans)}. "
            "Restore the photos, or remove their label files."
        )
    if missing:
        raise DataError(
            f"{len(missing)} label file(s) missing for images in {images_dir}: "
            f"{_listing(missing)}. Each {images} needs {labels}; "
            "restore the files or remove the images without labels."
        )
    return samples


def _ids(root: Path, pattern: str) -> list[str]:
    """The sorted ids of the files under ``root`` that match ``pattern`` (with ``{id}``). Hidden files (a name
    starting with a dot: macOS's ``._0001.jpg`` and ``.DS_Store``, editors' temporaries) are not samples."""
    head, tail = pattern.split("{id}")
    regex = re.compile(re.escape(head) + "(.+)" + re.escape(tail) + "$")
    matches = (regex.match(p.relative_to(root).as_posix()) for p in root.glob(pattern.replace("{id}", "*"))
               if not p.name.startswith("."))
    return sorted(m.group(1) for m in matches if m)


def read_label(path: Path, num_classes: int, ignore_index: int | None = None,
               label_map: LabelMap | None = None) -> np.ndarray:
    """Decode a label PNG as class indices (H, W) uint8 and check every value is a class or ``ignore_index``.
    With ``label_map``, the file's own values are translated to the task's classes first."""
    try:
        with Image.open(path) as im:
            label = decode_label(im, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"Cannot read label {path}: {e}. Replace or delete the file.") from e
    return to_classes(label, path, num_classes, ignore_index, label_map)


def decode_label(im: Image.Image, name: str | Path) -> np.ndarray:
    """The pixel values of an opened label image, which must be a palette ('P') or grayscale ('L') one."""
    if im.mode not in ("P", "L"):
        raise DataError(
            f"Label {name} has mode {im.mode!r}; expected a palette ('P') or grayscale ('L') PNG "
            "whose pixel values are class indices."
        )
    return np.array(im)


def to_classes(label: np.ndarray, name: str | Path, num_classes: int, ignore_index: int | None = None,
               label_map: LabelMap | None = None) -> np.ndarray:
    """A label file's values as the task's class indices: translated by ``label_map``, then checked to be a class
    below ``num_classes`` or ``ignore_index``; ``name`` names the file in the error."""
    if label_map is not None:
        label = label_map(label, name)
    if label.max(initial=0) >= num_classes:
        bad = sorted(int(v) for v in np.unique(label) if v >= num_classes and v != ignore_index)
        if bad:
            void = f" or {ignore_index} (ignored)" if ignore_index is not None else ""
            raise DataError(
                f"Label {name} has values {bad} outside the task's {num_classes} classes (0..{num_classes - 1})"
                f"{void}. Check that the task matches the label file (task=person reads *_person.png, "
                "task=fashion reads *_clothes.png), fix the label map, or translate a set's own values with "
                "data.label_map."
            )
    return label


def load_sample(sample: Sample, num_classes: int, ignore_index: int | None = None,
                label_map: LabelMap | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and cross-check one sample: image (H, W, 3) and label (H, W) of the same size."""
    image = read_photo(sample.image)  # upright, as its EXIF orientation says: the one rule everywhere
    label = read_label(sample.label, num_classes, ignore_index, label_map)
    if image.shape[:2] != label.shape:
        size = f"{image.shape[1]}x{image.shape[0]} (WxH)"
        orientation = exif_orientation(sample.image)
        if orientation not in (None, 1):
            stored = f"{image.shape[0]}x{image.shape[1]}" if orientation >= 5 else size.split(" ")[0]
            raise DataError(
                f"Image {sample.image} is {size} as displayed, after its EXIF Orientation={orientation} is applied "
                f"(stored as {stored}), but its label {sample.label} is {label.shape[1]}x{label.shape[0]}. Photos "
                "are read upright, as every viewer, predict.py and the demo show them; a label map must match the "
                "photo as displayed. Rotate the label the same way, or save the photo upright without the EXIF tag "
                "(PIL: ImageOps.exif_transpose)."
            )
        raise DataError(
            f"Image {sample.image} is {size} but its label {sample.label} is "
            f"{label.shape[1]}x{label.shape[0]}; a label map must have exactly its image's size."
        )
    return image, label


def load_all(samples: Sequence[Sample], num_classes: int, ignore_index: int | None = None,
             label_map: LabelMap | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode every sample once, collecting all problems into a single error."""
    decoded, problems = [], []
    for sample in samples:
        try:
            decoded.append(load_sample(sample, num_classes, ignore_index, label_map))
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError(f"{len(problems)} bad sample(s): " + " | ".join(problems[:MAX_LISTED]))
    if ignore_index is not None and decoded:
        check_void([s.label for s in samples], [label for _, label in decoded], ignore_index)
    return decoded


def check_void(paths: Sequence[Path], labels: Sequence[np.ndarray], ignore_index: int) -> None:
    """Catch label maps whose ``ignore_index`` (255) pixels are meant as a class: a 0/255 mask.

    A 0/255 mask (the common way to save a binary mask) holds only background and 255. Read as class
    indices, 255 is the ignore label: its pixels are neither trained nor scored, and the foreground
    class never appears, so a run "works" and scores 0 on it. A map with only 0 and ``ignore_index``
    is reported by name; so is one whose share of ignored pixels is far above the set's usual. When
    most of the set looks like that, it is an error; otherwise a warning.
    """
    shares = np.array([float((label == ignore_index).mean()) for label in labels])
    only_void = [str(p) for p, label, share in zip(paths, labels, shares)
                 if share > 0 and not np.isin(label, (0, ignore_index), invert=True).any()]
    usual = float(np.median(shares))
    heavy = [f"{p} ({100 * share:.0f}%)" for p, share in zip(paths, shares)
             if share > max(0.25, 4 * usual) and str(p) not in only_void]
    how = (f"Label value {ignore_index} is the ignore label (task.ignore_index): its pixels are neither trained nor "
           f"scored. If {ignore_index} marks a class in these files (a 0/{ignore_index} mask), translate it with "
           f"data.label_map, e.g. 'data.label_map={{0:0,{ignore_index}:1}}'.")
    if only_void and len(only_void) > len(labels) / 2:
        raise DataError(f"{len(only_void)} of {len(labels)} label maps hold only 0 and {ignore_index}, no other class: "
                        f"{_listing(only_void)}. {how}")
    if only_void:
        log.warning("%d label map(s) hold only 0 and %d, no other class: %s. %s", len(only_void), ignore_index,
                    _listing(only_void), how)
    if heavy:
        log.warning("%d label map(s) have far more ignored (%d) pixels than the set's usual %.1f%%: %s. %s",
                    len(heavy), ignore_index, 100 * usual, _listing(heavy), how)


class LabelMap:
    """A set's own label values -> the task's class indices (a 256-entry lookup table).

    Args:
        mapping: ``{value in the files: class index}``; the ignore label may be a target too.
        unmapped: what a value missing from ``mapping`` becomes: ``ignore`` (the ignore label) or
            ``error`` (the file is reported).
        ignore_index: the task's ignore label (needed for ``unmapped: ignore``).
    """

    def __init__(self, mapping: Mapping[int, int], unmapped: str = "error", ignore_index: int | None = None):
        if unmapped not in ("error", "ignore"):
            raise ConfigError(f"data.unmapped={unmapped!r} must be error or ignore.")
        if unmapped == "ignore" and ignore_index is None:
            raise ConfigError("data.unmapped=ignore needs an ignore label: set task.ignore_index (e.g. 255).")
        bad = {k: v for k, v in mapping.items() if not (0 <= int(k) <= 255 and 0 <= int(v) <= 255)}
        if bad:
            raise ConfigError(f"data.label_map entries must map 0..255 to 0..255, got {bad}.")
        self.mapped = np.zeros(256, bool)
        self.lut = np.full(256, ignore_index if unmapped == "ignore" else 0, np.uint8)
        for value, target in mapping.items():
            self.lut[int(value)], self.mapped[int(value)] = int(target), True
        self.unmapped = unmapped

    def __call__(self, label: np.ndarray, path: Path) -> np.ndarray:
        if self.unmapped == "error" and not self.mapped[label].all():
            bad = sorted(int(v) for v in np.unique(label) if not self.mapped[v])
            raise DataError(f"Label {path} has values {bad} that data.label_map does not map; map them, or set "
                            "data.unmapped=ignore to leave them unscored.")
        return self.lut[label]


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
        self.teacher: list[np.ndarray] | None = None  # a teacher's stored logits per id (distill.logits)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key`` is an index, or ``(index, epoch)`` from ``EpochShuffleSampler``: then the item's random
        augmentation is seeded from (seed, epoch, index), reproducible in any worker and after a resume."""
        i, epoch = key if isinstance(key, tuple) else (key, None)
        if epoch is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]))
        image, label = self.arrays[i]
        item = self.transform(image, label) if self.teacher is None else self.transform(image, label, self.teacher[i])
        item["id"] = self.ids[i]
        return item
