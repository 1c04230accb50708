import json
import os
import shutil
import subprocess
import sys

import hydra
import numpy as np
import pytest
import torch
from conftest import compose_cfg, paint_void_bands, write_dataset, write_palette_png
from PIL import Image

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.data import FashionDataModule


def datamodule(root, label="clothes", k=7, **kw):
    kw = {"image_size": [96, 64], "batch_size": 2, **kw}
    return FashionDataModule(root=str(root), label=label, num_classes=k, **kw)


@pytest.fixture
def copy_root(data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    return root


def test_split_and_items(data_root, tmp_path):
    dm = datamodule(data_root)
    dm.setup("fit")
    assert [len(dm.ids[s]) for s in ("train", "val", "test")] == [10, 2, 8]
    assert not set(dm.ids["train"]) & set(dm.ids["test"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 96, 64) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (2, 96, 64) and batch["mask"].max() < 7
    dm.write_split(tmp_path / "split.json")
    assert json.loads((tmp_path / "split.json").read_text())["test"] == dm.ids["test"]


def test_eval_items_keep_native_label_size(data_root):
    dm = datamodule(data_root, image_size=[64, 32])
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[-2:] == (64, 32)
    assert batch["mask"].shape[-2:] == (96, 64)  # metrics at the label's own resolution
    assert batch["valid_hw"][0].tolist() == [64, 32]


def test_padding_mode_pads_to_multiple_and_reports_valid_area(tmp_path):
    root = write_dataset(tmp_path / "odd", 4)
    for p in (root / "images").iterdir():  # 90x60 photos: not multiples of 32
        Image.open(p).crop((0, 0, 60, 90)).save(p)
    for p in (root / "labels").iterdir():
        im = Image.open(p)
        im.crop((0, 0, 60, 90)).save(p)
    dm = datamodule(root, image_size=None, split=[0.5, 0.0, 0.5])
    dm.setup("test")
    item = dm.datasets["test"][0]
    assert tuple(item["image"].shape[-2:]) == (96, 64)
    assert item["valid_hw"].tolist() == [90, 60] and tuple(item["mask"].shape) == (90, 60)


def test_augmentation_only_on_training_split(data_root):
    dm = datamodule(data_root, augment={"hflip": 1.0})
    dm.setup("fit")
    train_item, raw = dm.datasets["train"][0], dm.datasets["train"].arrays[0]
    assert torch.equal(train_item["mask"], torch.from_numpy(raw[1][:, ::-1].copy()).long())
    val_item, raw_val = dm.datasets["val"][0], dm.datasets["val"].arrays[0]
    assert torch.equal(val_item["mask"], torch.from_numpy(raw_val[1]).long())


def test_class_frequencies_from_training_split(data_root):
    dm = datamodule(data_root)
    f = dm.class_frequencies()
    counts = sum(np.bincount(lab.ravel(), minlength=7) for _, lab in dm.datasets["train"].arrays)
    assert f == pytest.approx(counts / counts.sum()) and f.sum() == pytest.approx(1.0)


def test_missing_data_dir_says_how_to_get_it(tmp_path):
    # The help comes from the set's config (conf/data/fashionista.yaml), not from shared code.
    cfg = compose_cfg("train", [f"data.root={tmp_path / 'nowhere'}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(DataError, match=r"(?s)Data set not found.*download_data.py.*FASHIONSEG_DATA"):
        hydra.utils.instantiate(cfg.data).setup()


def test_missing_label(copy_root):
    (copy_root / "labels" / "0003_clothes.png").unlink()
    with pytest.raises(DataError, match="0003_clothes.png"):
        datamodule(copy_root).setup()


def test_missing_image(copy_root):
    (copy_root / "images" / "0004.jpg").unlink()
    with pytest.raises(DataError, match="image.*missing.*0004"):
        datamodule(copy_root).setup()


def test_corrupt_image(copy_root):
    (copy_root / "images" / "0005.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"Cannot read .*0005.jpg as an image"):
        datamodule(copy_root).setup()


def test_size_mismatch(copy_root):
    write_palette_png(copy_root / "labels" / "0006_clothes.png", np.zeros((50, 40), np.uint8))
    with pytest.raises(DataError, match=r"0006.jpg is 64x96 \(WxH\) but its label .*0006_clothes.png is 40x50"):
        datamodule(copy_root).setup()


def test_label_values_outside_task(copy_root):
    # The 7-class clothes map read as a 2-class person task: values 2..6 are out of range.
    shutil.copy(copy_root / "labels" / "0007_clothes.png", copy_root / "labels" / "0007_person.png")
    with pytest.raises(DataError, match=r"0007_person.png has values \[2, .*outside the task.s 2 classes"):
        datamodule(copy_root, label="person", k=2).setup()


def test_bad_files_are_all_listed_at_once(copy_root):
    (copy_root / "images" / "0002.jpg").write_bytes(b"")
    (copy_root / "images" / "0009.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"2 bad sample\(s\).*0002.jpg.*0009.jpg"):
        datamodule(copy_root).setup()


def test_empty_split(data_root):
    with pytest.raises(ConfigError, match="The val split is empty: 2 images"):
        datamodule(data_root, limit=2).setup()


def test_image_size_not_multiple_of_32(data_root):
    with pytest.raises(ConfigError, match=r"image_size=\[100, 64\] is not divisible by 32.*\[128,64\]"):
        datamodule(data_root, image_size=[100, 64])


# ------------------------------------------------------------------------------ the ignore label

def test_void_label_is_allowed_and_other_values_still_name_the_file(copy_root):
    paint_void_bands(copy_root)
    dm = datamodule(copy_root, ignore_index=255)
    dm.setup()
    assert any((lab == 255).any() for _, lab in dm.datasets["train"].arrays)
    label = np.array(Image.open(copy_root / "labels" / "0004_clothes.png"))
    label[0, 0] = 254
    write_palette_png(copy_root / "labels" / "0004_clothes.png", label)
    with pytest.raises(DataError, match=r"0004_clothes.png has values \[254\] outside the task.s 7 classes "
                                        r"\(0..6\) or 255 \(ignored\)"):
        datamodule(copy_root, ignore_index=255).setup()
    with pytest.raises(DataError, match=r"has values \[255\]"):  # without an ignore label, 255 is an error
        datamodule(copy_root, ignore_index=None).setup()


def test_padding_and_augmentation_label_new_pixels_void():
    from fashionseg.data.transforms import TrainTransform

    image, label = np.full((90, 60, 3), 100, np.uint8), np.ones((90, 60), np.uint8)
    padded = TrainTransform(None, 32, {"hflip": 0}, ignore_index=255)(image, label)["mask"]
    assert padded.shape == (96, 64) and (padded[90:] == 255).all() and (padded[:, 60:] == 255).all()
    assert (padded[:90, :60] == 1).all()
    shifted = TrainTransform([96, 64], 32, {"hflip": 0, "scale": [0.5, 0.5]}, ignore_index=255)
    shifted.pipeline.transforms[1].p = 1.0  # always zoom out: the border comes from outside the photo
    mask = shifted(image, label)["mask"]
    assert set(mask.unique().tolist()) == {1, 255}
    # Without an ignore label the new pixels are background, as before.
    assert set(TrainTransform(None, 32, {"hflip": 0})(image, label)["mask"].unique().tolist()) == {0, 1}


def test_crop_trains_on_a_window_with_its_label():
    """data.augment.crop: a random window of the fitted photo, the label cut from the same place."""
    from fashionseg.data.transforms import TrainTransform

    rows = np.arange(90)[:, None].repeat(60, 1)
    label = ((rows // 7) % 5).astype(np.uint8) + 1
    image = np.repeat((label * 40)[..., None], 3, axis=2).astype(np.uint8)
    crop = TrainTransform(None, 32, {"hflip": 0, "crop": [64, 32]}, ignore_index=255)
    windows = set()
    for seed in range(6):
        crop.reseed(seed)
        item = crop(image, label)
        mask, img = item["mask"], item["image"]
        assert mask.shape == (64, 32) and tuple(item["valid_hw"].tolist()) == (64, 32)
        inside = mask != 255  # the padded photo (96x64) may reach past the photo's 90 rows
        assert (img[0][inside] == mask[inside] * 40).all()
        windows.add(tuple(mask[:, 0].tolist()))
    assert len(windows) > 1  # windows from different places
    small = TrainTransform(None, 32, {"hflip": 0, "crop": [128, 96]}, ignore_index=255)(image, label)["mask"]
    assert small.shape == (128, 96) and (small[90:] == 255).all() and (small[:, 60:] == 255).all()
    with pytest.raises(ConfigError, match=r"data.augment.crop=\[100, 32\] is not divisible by 32"):
        TrainTransform(None, 32, {"crop": [100, 32]})


def test_class_frequencies_leave_void_pixels_out(copy_root):
    paint_void_bands(copy_root)
    dm = datamodule(copy_root, ignore_index=255)
    freq = dm.class_frequencies()
    counts = sum(np.bincount(lab[lab != 255].ravel(), minlength=7) for _, lab in dm.datasets["train"].arrays)
    assert freq == pytest.approx(counts / counts.sum())


def test_importing_the_data_pipeline_makes_no_network_request():
    """albumentations asks PyPI for a newer release when it is imported, unless NO_ALBUMENTATIONS_UPDATE
    is set: offline, every run and DataLoader process would wait for its timeout and print a warning."""
    code = (
        "import urllib.request\n"
        "asked = []\n"
        "def refuse(self, url, *args, **kwargs):\n"
        "    asked.append(getattr(url, 'full_url', url))\n"
        "    raise OSError('offline')\n"
        "urllib.request.OpenerDirector.open = refuse\n"
        "import fashionseg\n"
        "import albumentations  # as fashionseg.data.transforms does, after the package\n"
        "print(asked)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", f"network requests at import: {done.stdout.strip()}"


# Photos read upright (EXIF), 0/255 masks, hidden files: a test each, failing before the fixes of issue 41.

def save_with_orientation(path, upright: np.ndarray, orientation: int) -> None:
    """Store ``upright`` as a camera would: pixels turned, with the EXIF tag that turns them back."""
    stored = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored(upright))).save(path, quality=95, exif=exif)


def test_training_photos_are_read_upright_as_their_exif_orientation_says(copy_root, data_root):
    path = copy_root / "images" / "0003.jpg"
    upright = np.array(Image.open(path))
    save_with_orientation(path, upright, 3)
    dm = datamodule(copy_root)
    dm.setup("fit")
    image, label = dm.datasets["all"].arrays[dm.datasets["all"].ids.index("0003")]
    # JPEG re-encoding changes pixels a little; upside down, they would differ by the whole picture.
    assert np.abs(image.astype(int) - upright.astype(int)).mean() < 3
    assert label.shape == image.shape[:2]


def test_a_label_that_matches_only_the_unrotated_photo_names_exif(copy_root):
    path = copy_root / "images" / "0004.jpg"
    upright = np.array(Image.open(path))[:, :48]  # 96x48: not square, so a quarter turn shows
    save_with_orientation(path, upright, 6)
    write_palette_png(copy_root / "labels" / "0004_clothes.png", np.zeros((48, 96), np.uint8))  # the stored size
    with pytest.raises(DataError, match=r"0004.jpg is 48x96 \(WxH\) as displayed, after its EXIF Orientation=6"):
        datamodule(copy_root).setup()


def as_0_255_masks(root, suffix="person"):
    for path in sorted((root / "labels").glob(f"*_{suffix}.png")):
        mask = np.array(Image.open(path))
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), "L").save(path)


def test_0_255_person_masks_are_an_error_that_says_how_255_is_read(copy_root):
    as_0_255_masks(copy_root)
    with pytest.raises(DataError, match=r"label maps hold only 0 and 255.*0001_person.png.*ignore label.*"
                                        r"data.label_map={0:0,255:1}"):
        datamodule(copy_root, label="person", k=2).setup()
    dm = datamodule(copy_root, label="person", k=2, label_map={0: 0, 255: 1})
    dm.setup()
    assert all(set(np.unique(label)) == {0, 1} for _, label in dm.datasets["all"].arrays)


def test_one_label_map_with_mostly_ignored_pixels_is_named_in_a_warning(copy_root, caplog):
    path = copy_root / "labels" / "0002_clothes.png"
    label = np.array(Image.open(path))
    label[: label.shape[0] // 2] = 255
    write_palette_png(path, label)
    datamodule(copy_root).setup()
    assert "0002_clothes.png" in caplog.text and "ignored (255) pixels" in caplog.text


def test_hidden_files_beside_the_photos_are_not_samples(copy_root, tmp_path):
    (copy_root / "images" / "._0001.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (copy_root / "images" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (copy_root / "labels" / "._0001_clothes.png").write_bytes(b"\x00\x05\x16\x07")
    dm = datamodule(copy_root)
    dm.setup()
    assert len(dm.datasets["all"]) == 20
    from fashionseg.core.io import list_photos

    assert [p.name for p in list_photos(copy_root / "images")][:1] == ["0001.jpg"]
