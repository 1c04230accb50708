"""Store a teacher's logits of its training photos once, for distillation without the teacher in the loop.

    python scripts/teacher_logits.py --ckpt <teacher run>/checkpoints/<file>.ckpt --out <folder> --tta --scales 1 1.25
    python train.py experiment=fast_person_trainval distill=kd distill.logits=<folder>

The teacher runs once per photo of its run's training split (its ``split.json``), at the photo's own
size as eval.py and predict.py run it (optionally with flip and multi-scale test-time augmentation), and
its logits are written as float16 (H, W, C), one file per photo, with the teacher's ``split.json`` and a
``teacher.json`` naming the checkpoint, its heads and how it ran (``fashionseg.training.distill.write_teacher_logits``).
A student trained on the same data.seed and data.split then warps them with each augmented photo.
"""

from __future__ import annotations

import argparse
import time

import torch

from fashionseg.training.distill import write_teacher_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="the teacher: a train.py checkpoint in its run folder")
    parser.add_argument("--out", required=True, help="a new folder for the logits (distill.logits=<it>)")
    parser.add_argument("--subset", default="train", help="the teacher run's split whose photos to run (train)")
    parser.add_argument("--data-root", help="the photos' folder, if not where the teacher's run read them")
    parser.add_argument("--tta", action="store_true", help="average with the mirror image's logits")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale TTA factors")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (as eval.py's trainer does)")
    parser.add_argument("--batch", type=int, default=4, help="photos per forward pass")
    args = parser.parse_args()
    start = time.time()
    out = write_teacher_logits(args.ckpt, args.out, args.subset, args.data_root, args.tta, args.scales, args.device,
                               args.bf16, args.batch)
    print(f"Wrote {out} ({len(list((out / 'logits').iterdir()))} photos, {time.time() - start:.0f} s); train with "
          f"distill=kd distill.logits={out}")


if __name__ == "__main__":
    main()
