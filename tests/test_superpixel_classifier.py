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
             "n_estimators=5,10", "--blend", "0", "0.5"])
    assert [(r["params"]["n_estimators"], r["blend"]) for r in report["rows"]] == [(5, 0), (5, 0.5), (10, 0),
                                                                                   (10, 0.5)]
    assert not report["pose"] and report["fit_on"] == "train" and 0 <= report["val_miou_network"] <= 1
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


def test_blend_mixes_the_networks_probabilities_with_the_superpixels_scores():
    segments = np.array([[0, 0, 1, 1]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])  # superpixel 0: class 0, superpixel 1: class 1
    probs = np.array([[[0.2, 0.2, 0.3, 0.9]], [[0.8, 0.8, 0.7, 0.1]]])  # the network: 1, 1, 1, 0
    assert sc.blended_labels(scores, segments, probs, 0.0).tolist() == [[0, 0, 1, 1]]
    assert sc.blended_labels(scores, segments, probs, 0.9).tolist() == [[1, 1, 1, 0]]
    # 0.5: pixels 0 and 1 go to their superpixel's class 0 (0.45 + 0.1 against 0.05 + 0.4); pixel 3 keeps the
    # network's class 0 (0.1 + 0.45 against 0.4 + 0.05)
    assert sc.blended_labels(scores, segments, probs, 0.5).tolist() == [[0, 0, 1, 0]]


def test_fit_on_validation_chooses_by_cross_validation_over_its_photos(fashion_ckpt, data_root, tmp_path,
                                                                       monkeypatch):
    """--fit-on val: every setting scored on photos its classifier did not learn from (folds of whole photos);
    the chosen blend is stored and used by the refinement."""
    monkeypatch.setattr(sc, "find_mediapipe_python", lambda given=None: None)
    out = tmp_path / "classifier"
    script = load_script("train_superpixel_classifier").main
    common = ["--ckpt", str(fashion_ckpt), "--data", str(data_root), "--out", str(out), "--pose", "off",
              "--grid", "num_leaves=4", "n_estimators=5"]
    report = script([*common, "--fit-on", "val", "--folds", "2", "--blend", "0", "0.75"])
    assert report["fit_on"] == "val" and [r["blend"] for r in report["rows"]] == [0, 0.75]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["blend"] == max(report["rows"], key=lambda r: r["val_miou"])["blend"]
    refine = sc.SuperpixelClassifier(str(out))
    assert refine.meta["blend"] == meta["blend"]
    with pytest.raises(SystemExit, match="--folds 3 needs 2 folds or more .* this data set has 2"):
        script([*common, "--fit-on", "val", "--folds", "3"])
    with pytest.raises(SystemExit, match="must be in \\[0, 1\\)"):
        script([*common, "--blend", "1"])
