"""scripts/benchmark_accuracy.py end to end on the synthetic set: shared networks and refinement rows."""

from __future__ import annotations

import json

from tests.conftest import load_script

benchmark_accuracy = load_script("benchmark_accuracy")


def test_recipes_sharing_a_network_train_once_and_refinements_add_rows(data_root, tmp_path):
    runs = tmp_path / "runs"
    overrides = [f"data.root={data_root}", "data.image_size=[96,64]", "data.batch_size=2", "data.eval_batch_size=4",
                 "trainer.max_epochs=1", "trainer.precision=32-true", "model.net.encoder_weights=null"]
    # best_person is fast_person_trainval's network + flip TTA + the CRF: only fast_person trains.
    rows = benchmark_accuracy.main(["--recipes", "fast_person_trainval", "best_person", "--runs", str(runs),
                                    *overrides])

    assert [r["recipe"] for r in rows] == ["fast_person_trainval", "best_person", "best_person + crf"]
    assert not (runs / "best_person" / "results.json").exists()
    assert len({r["train_min"] for r in rows}) == 1
    ev = json.loads((runs / "best_person" / "eval_results.json").read_text())
    assert ev["refinements"]["none"]["miou"] == ev["scores"]["miou"]
    # The refined row is the CRF's own score on the same network outputs, with its own figure.
    assert rows[2]["test_miou"] == round(100 * ev["refinements"]["crf"]["miou"], 2)
    assert rows[1]["test_miou"] == round(100 * ev["scores"]["miou"], 2)
    assert rows[2]["boundary_iou"] == round(100 * ev["refinements"]["crf"]["boundary_iou"], 2)
    assert rows[1]["boundary_iou"] == round(100 * ev["scores"]["boundary_iou"], 2)
    assert (runs / "best_person" / "confusion_crf.png").stat().st_size > 0
    assert "crf" in rows[2]["note"] and "best_person" in rows[2]["command"]
    assert json.loads((runs / "accuracy.json").read_text()) == rows
    assert "best_person + crf" in (runs / "accuracy.md").read_text()
