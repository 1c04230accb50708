"""The benchmark scripts end to end on the synthetic set: benchmark_accuracy.py (shared networks, refinement
rows) and compare_architectures.py (one budget per architecture, one table)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script

benchmark_accuracy = load_script("benchmark_accuracy")


def test_recipes_sharing_a_network_train_once_and_refinements_add_rows(data_root, tmp_path):
    runs = tmp_path / "runs"
    # With best_person's encoder, decoder, input size, training windows, schedule and memory order and no time
    # guard, fast_person_trainval trains best_person's network: best_person differs only in test-time settings
    # (TTA, refinements), so only the first one trains.
    overrides = [f"data.root={data_root}", "data.image_size=[96,64]", "data.batch_size=2", "data.eval_batch_size=4",
                 "trainer.max_epochs=1", "trainer.precision=32-true", "model.net.encoder_weights=null",
                 "model.net.encoder_name=tu-tf_efficientnet_lite0", "trainer.max_time=null", "channels_last=true",
                 "model.net.decoder_channels=256", "data.augment.crop=null"]
    rows = benchmark_accuracy.main(["--recipes", "fast_person_trainval", "best_person", "--runs", str(runs),
                                    *overrides])

    assert [r["recipe"] for r in rows] == ["fast_person_trainval", "best_person", "best_person + guided",
                                           "best_person + crf"]
    assert not (runs / "best_person" / "results.json").exists()
    assert len({r["train_min"] for r in rows}) == 1
    ev = json.loads((runs / "best_person" / "eval_results.json").read_text())
    assert ev["refinements"]["none"]["miou"] == ev["scores"]["miou"]
    # Each refined row is that refinement's own score on the same network outputs, with its own figure.
    assert rows[3]["test_miou"] == round(100 * ev["refinements"]["crf"]["miou"], 2)
    assert rows[2]["test_miou"] == round(100 * ev["refinements"]["guided"]["miou"], 2)
    assert rows[1]["test_miou"] == round(100 * ev["scores"]["miou"], 2)
    assert rows[3]["boundary_iou"] == round(100 * ev["refinements"]["crf"]["boundary_iou"], 2)
    assert rows[1]["boundary_iou"] == round(100 * ev["scores"]["boundary_iou"], 2)
    assert (runs / "best_person" / "confusion_crf.png").stat().st_size > 0
    assert "crf" in rows[3]["note"] and "best_person" in rows[3]["command"]
    assert json.loads((runs / "accuracy.json").read_text()) == rows
    assert "best_person + crf" in (runs / "accuracy.md").read_text()


ARCH_OVERRIDES = ["data.image_size=[96,64]", "data.batch_size=2", "data.eval_batch_size=4", "trainer.precision=32-true",
                  "trainer.enable_model_summary=false", "model.net.encoder_weights=null"]


@pytest.mark.slow  # two trainings; test_architecture_comparison_times_each_checkpoint runs the script by default
def test_architecture_comparison_trains_each_model_at_one_budget_and_tables_them(data_root, tmp_path):
    compare = load_script("compare_architectures")
    sweep = tmp_path / "sweep"
    overrides = [f"data.root={data_root}", *ARCH_OVERRIDES]
    rows = compare.main(["--models", "fpn", "unet", "--epochs", "1", "--sweep", str(sweep), "--no-latency", "--",
                         *overrides])

    assert [r["model"] for r in rows] == ["fpn", "unet"]
    for row, job in zip(rows, sorted(sweep.glob("*/results.json"))):
        res = json.loads(job.read_text())
        # One budget: the same encoder, input and epochs; 10 training photos (the 10/2/8 split) per epoch.
        assert (row["encoder"], row["input"], row["epochs"], row["images_seen"]) == \
            ("tu-tf_efficientnet_lite0", "96x64", 1, 10)
        assert row["test_miou"] == round(100 * res["test"]["miou"], 2)
        assert row["boundary_iou"] == round(100 * res["test"]["boundary_iou"], 2)
        assert row["val_miou"] == round(100 * res["val_miou_best"], 2)
        assert row["train_img_s"] == res["images_per_s"] > 0
        assert row["params_m"] > 0 and row["ms"] == {}
        assert set(row["class_iou"]) == {"tshirt", "shoes", "dress"}
    assert rows[0]["params_m"] != rows[1]["params_m"]
    assert json.loads((sweep / "architectures.json").read_text()) == rows
    assert (sweep / "architectures.md").read_text().count("\n") == 4  # header, rule, two rows

    # A finished sweep is tabled again without training; summarize_runs.py reads the same sweep.
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    again = compare.main(["--sweep", str(sweep), "--no-latency", *overrides])
    assert [r["test_miou"] for r in again] == [r["test_miou"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    summary = load_script("summarize_runs").summarize(sweep)
    assert sorted(j["overrides"]["model"] for j in summary["jobs"]) == ["fpn", "unet"]


@pytest.mark.slow
def test_architecture_comparison_times_each_checkpoint(data_root, tmp_path):
    compare = load_script("compare_architectures")
    rows = compare.main(["--models", "deeplabv3plus", "--epochs", "1", "--sweep", str(tmp_path / "sweep"),
                         "--variants", "eager fp32", "--", f"data.root={data_root}", *ARCH_OVERRIDES])
    assert rows[0]["ms"]["eager fp32"] > 0
    assert "ms (eager fp32)" in (tmp_path / "sweep" / "architectures.md").read_text()
