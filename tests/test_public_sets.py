"""The public sets (issue 40, part 1): each converter on small synthetic files in the set's real format, the label
maps of its config checked pixel for pixel, a malformed file named, and eval.py scoring the converted copy."""

import json

import hydra
import numpy as np
import pytest
from conftest import compose_cfg, load_script
from PIL import Image

from fashionseg.core.errors import DataError
from fashionseg.data.public_sets import prepare as convert
from fashionseg.evaluation.evaluate import evaluate

H, W = 16, 12
RNG = np.random.default_rng(0)


def photo(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=95)


def label_png(path, values: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), "L").save(path)


def every_id(k: int) -> np.ndarray:
    """A (H, W) label map that uses each of the ids 0..k-1."""
    return (np.arange(H * W).reshape(H, W) % k).astype(np.uint8)


def config_maps(name: str) -> dict:
    cfg = compose_cfg("train", [f"data={name}"])
    return {kind: {int(k): int(v) for k, v in m.items()} for kind, m in cfg.data.label_map.items()}


def loaded(name: str, root, task: str) -> dict:
    """The converted set as training reads it: {id: label map in the task's classes}."""
    cfg = compose_cfg("train", [f"data={name}", f"task={task}", f"data.root={root}"])
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("test")
    return dict(zip(dm.datasets["all"].ids, (label for _, label in dm.datasets["all"].arrays)))


def prepare(name, src, out):
    return load_script("prepare_data").main([name, "--src", str(src), "--out", str(out)])


FOLDER_SETS = {
    "lip": (20, {"train": ("TrainVal_images/train_images", "TrainVal_parsing_annotations/train_segmentations"),
                 "val": ("TrainVal_images/val_images", "TrainVal_parsing_annotations/val_segmentations")}),
    "cihp": (20, {"train": ("instance-level_human_parsing/Training/Images",
                            "instance-level_human_parsing/Training/Category_ids"),
                  "val": ("instance-level_human_parsing/Validation/Images",
                          "instance-level_human_parsing/Validation/Category_ids")}),
    "atr": (18, {"all": ("humanparsing/JPEGImages", "humanparsing/SegmentationClassAug")}),
}


@pytest.mark.parametrize("name", list(FOLDER_SETS))
def test_a_folder_set_converts_and_maps_every_id_as_its_config_says(name, tmp_path):
    k, splits = FOLDER_SETS[name]
    src, out = tmp_path / "src", tmp_path / "out"
    written = {}
    for split, (images, labels) in splits.items():
        for stem in ("0000001", "0000002"):  # the same names in each split, as CIHP has
            values = np.roll(every_id(k), int(stem) + len(split), axis=1)
            photo(src / images / f"{stem}.jpg")
            label_png(src / labels / f"{stem}.png", values)
            written[f"{split}_{stem}"] = values
    assert prepare(name, src, out) == 0
    maps = config_maps(name)
    for task, kind in (("fashion", "clothes"), ("person", "person")):
        lut = np.array([maps[kind][i] for i in range(k)], np.uint8)
        got = loaded(name, out, task)
        assert sorted(got) == sorted(written)
        for sample_id, values in written.items():
            assert np.array_equal(got[sample_id], lut[values]), (task, sample_id)
    assert maps["clothes"][0] == 0 and maps["person"][0] == 0 and set(maps["person"].values()) <= {0, 1, 255}


def test_a_folder_set_with_a_missing_folder_or_an_unknown_id_is_named(tmp_path):
    src = tmp_path / "src"
    (src / "humanparsing" / "JPEGImages").mkdir(parents=True)
    assert prepare("atr", src, tmp_path / "out") == 1  # the command: exit status 1
    with pytest.raises(DataError, match=r"humanparsing/SegmentationClassAug is missing \(the all label PNGs\)"):
        convert("atr", src, tmp_path / "out")
    photo(src / "humanparsing" / "JPEGImages" / "a.jpg")
    label_png(src / "humanparsing" / "SegmentationClassAug" / "a.png", np.full((H, W), 30))
    with pytest.raises(DataError, match=r"a.png: values \[30\] are not atr class ids \(0..17\)"):
        convert("atr", src, tmp_path / "out")


def modanet_download(src) -> None:
    """Two photos: two overlapping polygons (a top over pants) and a crowd region as run-length counts."""
    photo(src / "images" / "100.jpg")
    photo(src / "images" / "200.jpg")
    crowd = np.zeros((H, W), np.uint8)
    crowd[2:5, 1:3] = 1
    column_major = crowd.T.ravel()
    counts, value, run = [], 0, 0
    for v in column_major:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    coco = {"images": [{"id": 1, "file_name": "100.jpg", "height": H, "width": W},
                       {"id": 2, "file_name": "200.jpg", "height": H, "width": W}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 8, "iscrowd": 0,
                 "segmentation": [[2, 2, 10, 2, 10, 14, 2, 14]]},
                {"id": 2, "image_id": 1, "category_id": 9, "iscrowd": 0, "segmentation": [[3, 4, 9, 4, 9, 8, 3, 8]]},
                {"id": 3, "image_id": 2, "category_id": 4, "iscrowd": 1,
                 "segmentation": {"counts": counts, "size": [H, W]}}],
            "categories": [{"id": i, "name": n} for i, n in enumerate(["", "bag", "belt", "boots", "footwear", "outer",
                                                                        "dress", "sunglasses", "pants", "top"])][1:]}
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "modanet2018_instances_train.json").write_text(json.dumps(coco))


def test_modanet_polygons_and_crowds_are_rasterised_and_mapped(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    modanet_download(src)
    assert prepare("modanet", src, out) == 0
    own = np.array(Image.open(out / "labels" / "train_100.png"))
    expected = np.zeros((H, W), np.uint8)
    expected[2:14, 2:10] = 8   # pants, the larger region, first
    expected[4:8, 3:9] = 9     # the top over it
    assert np.array_equal(own, expected)
    crowd = np.array(Image.open(out / "labels" / "train_200.png"))
    assert np.array_equal(crowd == 255, np.pad(np.ones((3, 2), bool), ((2, H - 5), (1, W - 3))))
    fashion = loaded("modanet", out, "fashion")
    want = np.full((H, W), 255, np.uint8)  # unannotated: background, skin or hair, unknown
    want[2:14, 2:10], want[4:8, 3:9] = 5, 3  # pants, tshirt
    assert np.array_equal(fashion["train_100"], want)
    assert set(np.unique(loaded("modanet", out, "person")["train_200"])) == {255}  # a crowd and the unannotated
    bad = json.loads((src / "annotations" / "modanet2018_instances_train.json").read_text())
    bad["annotations"][0]["segmentation"] = "not a polygon"
    (src / "annotations" / "modanet2018_instances_train.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"modanet2018_instances_train.json \(photo 100.jpg\): a segmentation of "
                                        r"class 8 cannot be read"):
        convert("modanet", src, tmp_path / "again")


def test_deepfashion2_items_are_rasterised_and_mapped(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    photo(src / "train" / "image" / "000001.jpg")
    (src / "train" / "annos").mkdir(parents=True)
    (src / "train" / "annos" / "000001.json").write_text(json.dumps({
        "source": "shop", "pair_id": 1,
        "item1": {"category_id": 11, "segmentation": [[1, 1, 11, 1, 11, 15, 1, 15]], "style": 1},
        "item2": {"category_id": 4, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]], "style": 0}}))
    assert prepare("deepfashion2", src, out) == 0
    fashion = loaded("deepfashion2", out, "fashion")["train_000001"]
    want = np.full((H, W), 255, np.uint8)
    want[1:15, 1:11], want[2:6, 2:6] = 6, 0  # a long sleeve dress; a long sleeve outwear over it: background
    assert np.array_equal(fashion, want)
    (src / "train" / "annos" / "000001.json").write_text(json.dumps({"item1": {"segmentation": []}}))
    with pytest.raises(DataError, match="000001.json is not a DeepFashion2 annotation"):
        convert("deepfashion2", src, tmp_path / "again")


def test_eval_scores_a_converted_set_with_its_config(tmp_path, fashion_ckpt, person_ckpt):
    src, out = tmp_path / "src", tmp_path / "out"
    modanet_download(src)
    prepare("modanet", src, out)
    for ckpt in (fashion_ckpt, person_ckpt):
        result = evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", "data=modanet", f"data.root={out}", "split=all",
                                               "data.batch_size=1", f"paths.output_dir={tmp_path / 'eval'}"]))
        assert result["images"] == 2 and 0 <= result["scores"]["miou"] <= 1
