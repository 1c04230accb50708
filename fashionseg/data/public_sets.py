"""The public fashion-parsing sets, converted once to the layout training reads.

``python scripts/prepare_data.py <set> --src <downloaded dir> --out <dir>`` checks the download's layout and
writes ``images/<id>.jpg`` and ``labels/<id>.png``: a grayscale PNG per photo whose pixel values are the
set's own class ids (0: its background, or what it leaves unannotated; 255: a crowd region, not scored).
``fashionseg/conf/data/<set>.yaml`` maps those ids onto each task's classes (``label_map`` per kind of
label), so the mapping is a config a user can read and change. Ids carry the set's split (``train_``,
``val_``): CIHP numbers its photos from 1 in each split.

- LIP and CIHP (20 ids) and ATR (18 ids) are folders of part-label PNGs: copied, their values checked.
- ModaNet is COCO JSON (polygons, and run-length ``iscrowd`` regions) over PaperDoll photos, and
  DeepFashion2 one JSON per photo (polygons per garment): rasterised with pycocotools, larger
  regions first, so that a garment drawn over another keeps its own pixels.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fashionseg.core.errors import DataError

CROWD = 255  # a crowd region (COCO iscrowd=1): neither trained nor scored

LIP_CLASSES = ["background", "hat", "hair", "glove", "sunglasses", "upperclothes", "dress", "coat", "socks", "pants",
               "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe",
               "right-shoe"]
ATR_CLASSES = ["background", "hat", "hair", "sunglass", "upper-clothes", "skirt", "pants", "dress", "belt",
               "left-shoe", "right-shoe", "face", "left-leg", "right-leg", "left-arm", "right-arm", "bag", "scarf"]
MODANET_CLASSES = ["unannotated", "bag", "belt", "boots", "footwear", "outer", "dress", "sunglasses", "pants", "top",
                   "shorts", "skirts", "headwear", "scarf&tie"]
DEEPFASHION2_CLASSES = ["unannotated", "short sleeve top", "long sleeve top", "short sleeve outwear",
                        "long sleeve outwear", "vest", "sling", "shorts", "trousers", "skirt", "short sleeve dress",
                        "long sleeve dress", "vest dress", "sling dress"]


@dataclass(frozen=True)
class PublicSet:
    """A public set: where its parts lie in the download, its classes, and its converter."""

    name: str
    classes: list[str]
    url: str
    convert: Callable[[Path, Path], Iterator[tuple[str, Path, np.ndarray | Path]]]  # (id, photo, label or label file)


def need(path: Path, what: str, set_name: str) -> Path:
    if not path.exists():
        raise DataError(f"{set_name}: {path} is missing ({what}). Point --src at the folder the official download "
                        f"unpacks to (docs/cluster.md lists each set's layout).")
    return path


def folder_pairs(splits: dict[str, tuple[str, str]], set_name: str) -> Callable:
    """A converter for sets that ship a folder of photos and one of label PNGs per split."""
    def convert(src: Path, out: Path) -> Iterator[tuple[str, Path, Path]]:
        for split, (images, labels) in splits.items():
            image_dir = need(src / images, f"the {split} photos", set_name)
            label_dir = need(src / labels, f"the {split} label PNGs", set_name)
            for label in sorted(p for p in label_dir.glob("*.png") if not p.name.startswith(".")):
                photo = image_dir / f"{label.stem}.jpg"
                if not photo.is_file():
                    raise DataError(f"{set_name}: {label} has no photo {photo}; the download is incomplete.")
                yield f"{split}_{label.stem}", photo, label
    return convert


def rasterise(size: tuple[int, int], regions: list[tuple[int, object, bool]], where: str) -> np.ndarray:
    """A (H, W) uint8 label map of COCO-style regions: ``(class id, segmentation, is crowd)``, where a segmentation
    is a list of polygons ([x1, y1, x2, y2, ...]) or a run-length encoding; crowds become ``CROWD``."""
    from pycocotools import mask as coco_mask

    h, w = size
    label = np.zeros((h, w), np.uint8)
    masks = []
    for class_id, segmentation, crowd in regions:
        try:
            if isinstance(segmentation, list):
                rles = coco_mask.frPyObjects([p for p in segmentation if len(p) >= 6], h, w)
                rle = coco_mask.merge(rles) if rles else None
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
                rle = coco_mask.frPyObjects(segmentation, h, w)
            else:
                rle = segmentation
            mask = coco_mask.decode(rle).astype(bool) if rle is not None else np.zeros((h, w), bool)
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise DataError(f"{where}: a segmentation of class {class_id} cannot be read ({type(e).__name__}: {e}); "
                            "expected polygons [[x1, y1, x2, y2, ...], ...] or a COCO run-length encoding.") from None
        if mask.shape != (h, w):
            raise DataError(f"{where}: a segmentation is {mask.shape[1]}x{mask.shape[0]}, the photo {w}x{h}.")
        masks.append((CROWD if crowd else class_id, mask))
    for value, mask in sorted(masks, key=lambda m: -int(m[1].sum())):  # larger first: smaller ones stay on top
        label[mask] = value
    return label


def modanet(src: Path, out: Path) -> Iterator[tuple[str, Path, np.ndarray]]:
    images = need(src / "images", "the PaperDoll photos that ModaNet annotates", "modanet")
    for split in ("train", "val"):
        path = src / "annotations" / f"modanet2018_instances_{split}.json"
        if not path.is_file():
            if split == "train":
                need(path, "ModaNet's COCO annotations", "modanet")
            continue
        try:
            coco = json.loads(path.read_text())
            photos = {im["id"]: im for im in coco["images"]}
            regions: dict[int, list] = {i: [] for i in photos}
            for ann in coco["annotations"]:
                regions[ann["image_id"]].append((int(ann["category_id"]), ann["segmentation"],
                                                 bool(ann.get("iscrowd"))))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not COCO instance annotations ({type(e).__name__}: {e}).") from None
        for image_id, im in sorted(photos.items()):
            photo = images / im["file_name"]
            if not photo.is_file():
                raise DataError(f"modanet: {path.name} names {im['file_name']}, which {images} does not have.")
            yield (f"{split}_{Path(im['file_name']).stem}", photo,
                   rasterise((im["height"], im["width"]), regions[image_id], f"{path} (photo {im['file_name']})"))


def deepfashion2(src: Path, out: Path) -> Iterator[tuple[str, Path, np.ndarray]]:
    for split in ("train", "validation"):
        annos = src / split / "annos"
        if not annos.is_dir():
            if split == "train":
                need(annos, "DeepFashion2's per-photo JSON files", "deepfashion2")
            continue
        images = need(src / split / "image", f"the {split} photos", "deepfashion2")
        for path in sorted(p for p in annos.glob("*.json") if not p.name.startswith(".")):
            photo = images / f"{path.stem}.jpg"
            if not photo.is_file():
                raise DataError(f"deepfashion2: {path} has no photo {photo}.")
            try:
                doc = json.loads(path.read_text())
                items = [(int(v["category_id"]), v["segmentation"], False) for k, v in doc.items()
                         if k.startswith("item")]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise DataError(f"{path} is not a DeepFashion2 annotation (item1, item2, ... with category_id and "
                                f"segmentation): {type(e).__name__}: {e}.") from None
            with Image.open(photo) as im:
                size = (im.height, im.width)
            yield f"{'val' if split == 'validation' else split}_{path.stem}", photo, rasterise(size, items, str(path))


SETS = {
    "lip": PublicSet("lip", LIP_CLASSES, "https://sysu-hcp.net/lip/overview.php", folder_pairs({
        "train": ("TrainVal_images/train_images", "TrainVal_parsing_annotations/train_segmentations"),
        "val": ("TrainVal_images/val_images", "TrainVal_parsing_annotations/val_segmentations")}, "lip")),
    "cihp": PublicSet("cihp", LIP_CLASSES, "https://sysu-hcp.net/lip/overview.php", folder_pairs({
        "train": ("instance-level_human_parsing/Training/Images", "instance-level_human_parsing/Training/Category_ids"),
        "val": ("instance-level_human_parsing/Validation/Images",
                "instance-level_human_parsing/Validation/Category_ids")}, "cihp")),
    "atr": PublicSet("atr", ATR_CLASSES, "https://github.com/lemondan/HumanParsing-Dataset", folder_pairs({
        "all": ("humanparsing/JPEGImages", "humanparsing/SegmentationClassAug")}, "atr")),
    "modanet": PublicSet("modanet", MODANET_CLASSES, "https://github.com/eBay/modanet", modanet),
    "deepfashion2": PublicSet("deepfashion2", DEEPFASHION2_CLASSES, "https://github.com/switchablenorms/DeepFashion2",
                              deepfashion2),
}


def prepare(name: str, src: str | Path, out: str | Path) -> dict:
    """Convert the download of set ``name`` in ``src`` into ``out`` (images/, labels/, classes.txt). Returns a
    summary; raises ``DataError`` naming the missing or malformed file."""
    if name not in SETS:
        raise DataError(f"Unknown set {name!r}; prepare_data.py converts {', '.join(SETS)}.")
    spec, src, out = SETS[name], Path(src), Path(out)
    need(src, "the downloaded set", name)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    count, k = 0, len(spec.classes)
    for sample_id, photo, label in spec.convert(src, out):
        if isinstance(label, Path):
            with Image.open(label) as im:
                values = np.array(im)
            if values.ndim != 2:
                raise DataError(f"{label} is not a single-channel label PNG (mode {im.mode}).")
        else:
            values = label
        bad = sorted(int(v) for v in np.unique(values) if v >= k and v != CROWD)
        if bad:
            raise DataError(f"{label if isinstance(label, Path) else photo}: values {bad} are not {name} class ids "
                            f"(0..{k - 1}).")
        shutil.copyfile(photo, out / "images" / f"{sample_id}.jpg")
        Image.fromarray(values.astype(np.uint8), "L").save(out / "labels" / f"{sample_id}.png")
        count += 1
    if not count:
        raise DataError(f"{name}: no labelled photos found under {src}.")
    (out / "classes.txt").write_text("\n".join(f"{i}: {c}" for i, c in enumerate(spec.classes)) + "\n")
    return {"set": name, "photos": count, "out": str(out)}
