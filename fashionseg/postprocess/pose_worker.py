"""MediaPipe Pose's 33 landmarks of photos, run in MediaPipe's own environment (it imports nothing of fashionseg):

    <python with mediapipe> pose_worker.py <out.json> <photo.npy> [<photo.npy> ...]

Each .npy is an (H, W, 3) uint8 RGB photo; <out.json> gets one entry per photo: a list of 33 [x, y] in [0, 1]
of the photo (NaN where a landmark's visibility is under 0.5), or null where no person was found.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np


def main() -> int:
    import mediapipe as mp

    out, paths = sys.argv[1], sys.argv[2:]
    found = []
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as pose:
        for path in paths:
            result = pose.process(np.load(path)).pose_landmarks
            if result is None:
                found.append(None)
                continue
            found.append([[p.x, p.y] if p.visibility >= 0.5 else [math.nan, math.nan] for p in result.landmark])
    with open(out, "w") as f:
        json.dump(found, f)  # NaN as JSON's NaN, which json.loads reads back
    return 0


if __name__ == "__main__":
    sys.exit(main())
