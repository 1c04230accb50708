"""The superpixel classifier (postprocess=superpixel_classifier): features, the pose step (MediaPipe in its own
Python, cached; skipped with a message when missing), training on synthetic photos and scoring through eval.py."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fashionseg.core.errors import ConfigError
from fashionseg.postprocess import superpixel_classifier as sc
from tests.conftest import compose_cfg, load_script

# A stand-in for mediapipe's pose solution: every landmark at the photo's centre, plus one call counter.
FAKE_MEDIAPIPE = '''
import os, types
class _Landmark:
    def __init__(self, x, y): self.x, self.y, self.visibility = x, y, 0.9
class _Pose:
    def __init__(self, **kw): pass
    def __enter__(self): return self
    def __exit__(self, *a): return False
    def process(self, photo):
        with open(os.environ["FAKE_POSE_CALLS"], "a") as f: f.write("1")
        marks = [_Landmark(0.5, 0.25 + i / 66) for i in range(33)]
        return types.SimpleNamespace(pose_landmarks=types.SimpleNamespace(landmark=marks))
solutions = types.SimpleNamespace(pose=types.SimpleNamespace(Pose=_Pose))
'''


def test_features_of_two_regions_are_their_means_shapes_and_positions():
    image = np.zeros((20, 10, 3), np.uint8)
    image[:, 5:] = 255
    segments = np.zeros((20, 10), np.int64)
    segments[:, 5:] = 1
    probs = np.zeros((3, 20, 10), np.float32)
    probs[0, :, :5], probs[2, :, 5:] = 1.0, 1.0
    keypoints = np.full((len(sc.KEYPOINTS), 2), np.nan)
    keypoints[0] = [0.2, 0.475]  # the head at the left region's centre
    f = sc.region_features(image, probs, segments, keypoints)
    names = sc.feature_names(["a", "b", "c"])
    assert f.shape == (2, len(names))
    col = {n: f[:, i] for i, n in enumerate(names)}
    assert np.allclose(col["prob_a"], [1, 0]) and np.allclose(col["prob_c"], [0, 1])
    assert np.allclose(col["area"], [0.5, 0.5]) and np.allclose(col["centre_x"], [0.2, 0.7])
    assert col["lab_L_mean"][1] > 99 and col["lab_L_mean"][0] < 1 and np.allclose(col["entropy_of_mean"], 0, atol=1e-6)
    assert col["pose_head_distance"][0] == pytest.approx(0.0, abs=0.05) and col["pose_head_distance"][1] > 0.5
    assert np.isnan(col["pose_left_knee_distance"]).all() and (col["pose_found"] == 1).all()
    nopose = sc.region_features(image, probs, segments, None)
    assert np.isnan(nopose[:, names.index("pose_head_angle")]).all() and (nopose[:, -1] == 0).all()


def test_pose_keypoints_run_in_the_given_python_once_per_photo(tmp_path, monkeypatch):
    site = tmp_path / "site" / "mediapipe"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(FAKE_MEDIAPIPE)
    calls = tmp_path / "calls"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("FAKE_POSE_CALLS", str(calls))
    pose = sc.PoseKeypoints(sys.executable, tmp_path / "cache")
    photos = [np.full((8, 6, 3), v, np.uint8) for v in (10, 20)]
    first = pose(photos)
    assert len(first) == 2 and first[0].shape == (13, 2) and np.allclose(first[0][:, 0], 0.5)
    again = sc.PoseKeypoints(sys.executable, tmp_path / "cache")(photos)  # a new process: from the cache folder
    assert calls.read_text() == "11" and all(np.array_equal(a, b) for a, b in zip(first, again))


def test_without_mediapipe_the_pose_step_is_skipped_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr(sc, "find_mediapipe_python", lambda given=None: None)
    with pytest.warns(UserWarning, match="Pose features skipped: MediaPipe was not found .*make mediapipe"):
        pose = sc.PoseKeypoints()
    assert pose([np.zeros((4, 4, 3), np.uint8)]) == [None]


def test_a_missing_or_empty_model_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match="train_superpixel_classifier.py"):
        sc.SuperpixelClassifier(None)
    with pytest.raises(ConfigError, match=f"{tmp_path} holds no superpixel classifier"):
        sc.SuperpixelClassifier(str(tmp_path))


def test_train_then_score_beside_the_other_refinements(fashion_ckpt, data_root, tmp_path, monkeypatch):
    """The script trains on the synthetic training photos (no MediaPipe: skipped with its warning), chooses on
    validation, writes a text model; eval.py scores it beside the network and the superpixel vote."""
    from fashionseg.evaluation.evaluate import evaluate

    monkeypatch.setattr(sc, "find_mediapipe_python", lambda given=None: None)
    out = tmp_path / "classifier"
    with pytest.warns(UserWarning, match="Pose features skipped"):
        report = load_script("train_superpixel_classifier").main(
            ["--ckpt", str(fashion_ckpt), "--data", str(data_root), "--out", str(out), "--grid", "num_leaves=4",
             "n_estimators=5,10"])
    assert [r["params"]["n_estimators"] for r in report["rows"]] == [5, 10] and not report["pose"]
    assert (out / "model.txt").read_text().startswith("tree") and json.loads((out / "report.json").read_text())
    assert len(report["importance"]) == len(sc.feature_names(report["class_names"]))
    assert "postprocess.superpixel_classifier.model=" in report["test_command"]
    result = evaluate(compose_cfg("eval", [f"ckpt_path={fashion_ckpt}", f"data.root={data_root}",
                                           f"paths.output_dir={tmp_path / 'eval'}",
                                           "postprocess=[none,superpixel,superpixel_classifier]",
                                           f"postprocess.superpixel_classifier.model={out}"]))
    rows = result["refinements"]
    assert set(rows) >= {"none", "superpixel", "superpixel_classifier"}
    assert 0 <= rows["superpixel_classifier"]["miou"] <= 1 and rows["superpixel_classifier"]["ms_per_image"] > 0
