"""task=joint: one network, a person head and a fashion head; one loss per head, metrics per task, and
eval.py, predict.py and the demo serving both tasks from one checkpoint, one forward pass per photo."""

from __future__ import annotations

import io
import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from conftest import compose_cfg, paint_void_bands, small_overrides, write_dataset
from fastapi.testclient import TestClient
from PIL import Image

from fashionseg.core.errors import ConfigError
from fashionseg.evaluation.evaluate import evaluate
from fashionseg.inference import Predictor
from fashionseg.serving.app import create_app
from fashionseg.serving.predict import predict
from fashionseg.training.module import load_checkpoint
from fashionseg.training.train import train

PERSON, FASHION = ["background", "person"], ["background", "skin", "hair", "tshirt", "shoes", "pants", "dress"]


@pytest.fixture(scope="module")
def joint_root(tmp_path_factory) -> tuple[Path, dict]:
    """20 synthetic photos with void bands in the clothes maps only (the person maps have none)."""
    root = write_dataset(tmp_path_factory.mktemp("joint"), 20)
    return root, paint_void_bands(root)


@pytest.fixture(scope="module")
def joint_run(joint_root, tmp_path_factory) -> tuple[dict, Path]:
    root, _ = joint_root
    out = tmp_path_factory.mktemp("joint_run")
    cfg = compose_cfg("train", ["task=joint", "model=deeplabv3plus", "model.net.encoder_weights=null",
                                *small_overrides(root, out), "trainer.max_epochs=2"])
    _, results = train(cfg)
    return results, root


def test_joint_network_has_a_head_per_task_and_scores_each(joint_run, joint_root):
    results, _ = joint_run
    _, void = joint_root
    test = results["test"]
    assert results["task"] == "joint"
    for task, names in (("person", PERSON), ("fashion", FASHION)):
        assert {f"{task}/miou", f"{task}/boundary_iou", *(f"{task}/iou_{c}" for c in names)} <= set(test)
    # The run's own mIoU (which selects the checkpoint) is the mean of the two tasks'.
    assert test["miou"] == pytest.approx((test["person/miou"] + test["fashion/miou"]) / 2)
    # One confusion matrix per task; each counts every test pixel once, less that task's void pixels.
    person, fashion = (np.array(results["test_confusion"][t]) for t in ("person", "fashion"))
    assert person.shape == (2, 2) and fashion.shape == (7, 7)
    ids = results["split"]["test"]
    assert person.sum() == len(ids) * 96 * 64
    assert fashion.sum() == len(ids) * 96 * 64 - sum(void[i] for i in ids)
    union = fashion.sum(0) + fashion.sum(1) - np.diag(fashion)
    assert test["fashion/miou"] == pytest.approx(np.mean(np.diag(fashion)[union > 0] / union[union > 0]))
    logged = (Path(results["best_checkpoint"]).parents[1] / "csv" / "metrics.csv").read_text()
    assert "val/person/miou" in logged and "val/fashion/miou" in logged and "val/miou" in logged
    module = load_checkpoint(results["best_checkpoint"])
    assert module(torch.zeros(1, 3, 96, 64, dtype=torch.uint8))["out"].shape == (1, 9, 96, 64)


def test_joint_loss_is_the_sum_of_each_heads_loss(joint_run):
    results, _ = joint_run
    module = load_checkpoint(results["best_checkpoint"])
    logits = torch.randn(2, 9, 8, 6)
    person = torch.randint(0, 2, (2, 8, 6))
    clothes = torch.randint(0, 7, (2, 8, 6))
    clothes[:, 0] = 255  # void in one map only
    ce = torch.nn.functional.cross_entropy
    expected = ce(logits[:, :2], person) + ce(logits[:, 2:], clothes, ignore_index=255)
    assert module.compute_loss({"out": logits}, torch.stack([person, clothes], 1)) == pytest.approx(expected.item())


def test_augmentation_warps_both_label_maps_together(joint_root, tmp_path):
    root, _ = joint_root
    cfg = compose_cfg("train", ["task=joint", *small_overrides(root, tmp_path), "data.augment.rotate=15",
                                "data.augment.translate=0.2", "data.augment.scale=[0.6,1.4]"])
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    for i in range(len(dm.datasets["train"])):
        mask = dm.datasets["train"][(i, 3)]["mask"]
        assert mask.shape == (2, 96, 64)
        person, clothes = mask
        brought_in = person == 255  # outside the photo after the warp: void in both maps
        assert brought_in.any() or i > 0
        assert (clothes[brought_in] == 255).all()
        # The synthetic person is exactly the clothed pixels: true after the warp only if both moved alike.
        known = ~brought_in & (clothes != 255)
        assert torch.equal(person[known], (clothes[known] > 0).long())


def test_eval_and_refinements_score_each_task_from_one_checkpoint(joint_run, tmp_path):
    results, root = joint_run
    out = evaluate(compose_cfg("eval", [f"ckpt_path={results['best_checkpoint']}", f"data.root={root}",
                                        f"paths.output_dir={tmp_path}", "trainer.precision=32-true",
                                        "postprocess=[none,cleanup]"]))
    assert out["scores"]["person/miou"] == pytest.approx(results["test"]["person/miou"], abs=1e-6)
    assert out["scores"]["fashion/miou"] == pytest.approx(results["test"]["fashion/miou"], abs=1e-6)
    assert out["confusion"] == results["test_confusion"]
    for task in ("person", "fashion"):
        assert out["refinements"][task]["none"]["miou"] == pytest.approx(out["scores"][f"{task}/miou"], abs=1e-6)
        assert set(out["refinements"][task]) >= {"none", "cleanup", "network_ms_per_image"}
    table = (tmp_path / "refinements.md").read_text()
    assert "person:" in table and "fashion:" in table and "| dress |" not in table.split("fashion:")[0]


def test_predict_writes_both_tasks_from_one_forward_pass(joint_run, tmp_path, monkeypatch):
    results, root = joint_run
    calls = []
    original = Predictor._logits
    monkeypatch.setattr(Predictor, "_logits", lambda self, batch: calls.append(len(batch)) or original(self, batch))
    photos = sorted((root / "images").glob("*.jpg"))[:3]
    summary = predict(compose_cfg("predict", [f"ckpt_path={results['best_checkpoint']}", f"input={root / 'images'}",
                                              f"output={tmp_path}", f"paths.output_dir={tmp_path}", "batch_size=20"]))
    assert calls == [20]  # every photo, both tasks: one batch through the network
    assert len(summary["written"]) == 20
    for photo in photos:
        person = np.array(Image.open(tmp_path / f"{photo.stem}_person_label.png"))
        fashion = np.array(Image.open(tmp_path / f"{photo.stem}_fashion_label.png"))
        assert person.max() <= 1 and fashion.max() <= 6 and person.shape == fashion.shape == (96, 64)
        assert (tmp_path / f"{photo.stem}_person_cutout.png").is_file()
        assert not (tmp_path / f"{photo.stem}_fashion_cutout.png").exists()
    # The per-task label maps are each head's arg-max of that one pass.
    full = Predictor.from_checkpoint(results["best_checkpoint"])
    image = np.array(Image.open(photos[0]).convert("RGB"))
    heads = full.split(full.scores([image])[0])
    assert list(heads) == ["person", "fashion"] and heads["fashion"].shape == (7, 96, 64)
    fashion = np.array(Image.open(tmp_path / f"{photos[0].stem}_fashion_label.png"))
    assert np.array_equal(heads["fashion"].argmax(0).numpy(), fashion)
    assert np.array_equal(full.view("fashion")([image])[0], fashion)


def test_demo_serves_both_tasks_from_a_joint_checkpoint(joint_run, person_ckpt):
    results, _ = joint_run
    client = TestClient(create_app({"joint": results["best_checkpoint"]}))
    assert client.get("/api/config").json()["tasks"] == ["person", "fashion"]
    photo = np.random.default_rng(0).integers(0, 255, (90, 60, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG")
    for task, names in (("person", PERSON), ("fashion", FASHION)):
        r = client.post("/api/segment", files={"file": ("p.png", buffer.getvalue(), "image/png")},
                        data={"task": task, "refinement": "none"})
        assert r.status_code == 200, r.text
        assert [c["name"] for c in r.json()["legend"]] == names and ("cutout" in r.json()) == (task == "person")
    with pytest.raises(ConfigError, match="Two checkpoints for task person"):
        create_app({"person": str(person_ckpt), "joint": results["best_checkpoint"]})
    with pytest.raises(ConfigError, match="trained for task=person"):
        create_app({"joint": str(person_ckpt)})


def test_dashboards_show_each_tasks_photos_and_confusion_matrix(joint_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = joint_root
    cfg = compose_cfg("train", ["task=joint", "model=deeplabv3plus", "model.net.encoder_weights=null",
                                *small_overrides(root, tmp_path), "logger=tensorboard",
                                "+trainer.limit_train_batches=1", "+trainer.limit_test_batches=1",
                                "callbacks.prediction_images.every_n_epochs=1",
                                "callbacks.prediction_images.num_images=1"])
    train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    for stage in ("val", "test"):
        for task in ("person", "fashion"):
            assert f"{stage}/{task}/confusion_matrix" in tags
            assert any(t.startswith(f"{stage}/{task}/predictions/") for t in tags)


@pytest.mark.parametrize("override, message", [
    ("loss=wce", "takes no class weights"),
    ("data=fashionista_plus", "trains on one set"),
    ("task.label=[person,person]", r"task.label=\['person', 'person'\] must list the heads' own"),
])
def test_joint_refuses_what_it_cannot_do_before_reading_data(override, message, tmp_path):
    from fashionseg.core.config import validate

    cfg = compose_cfg("train", ["task=joint", f"paths.output_dir={tmp_path}", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_results_json_is_plain_json(joint_run):
    results, _ = joint_run
    path = Path(results["best_checkpoint"]).parents[1] / "results.json"
    assert json.loads(path.read_text())["test_confusion"].keys() == {"person", "fashion"}
