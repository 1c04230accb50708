"""Train the superpixel classifier (postprocess=superpixel_classifier) for a network: features of the training
split's superpixels, LightGBM, settings chosen on the validation split, features ranked by permutation
importance on the validation split.

    python scripts/train_superpixel_classifier.py --ckpt outputs/.../best.ckpt --tta
    python scripts/train_superpixel_classifier.py --ckpt ... --grid num_leaves=15,31 learning_rate=0.05,0.1

The network runs once over the training and the validation photos (native size, bf16 as in eval.py, optional
flip TTA); each photo is over-segmented (Felzenszwalb, the ``superpixel`` refinement's settings), every
superpixel described (``fashionseg.postprocess.superpixel_classifier.region_features``) and given its majority
true class. Every setting of the grid is trained on the training superpixels (weighted by their pixel count)
and scored by the validation photos' mIoU once each superpixel takes its predicted class; the best one is
written to ``<out>`` (default ``<run>/superpixel_classifier/``: ``model.txt``, LightGBM's text model, and
``meta.json``), with every row, the features' importance and the eval.py command that scores it on the test
split in ``report.json``. Nothing here looks at the test split.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fashionseg.core.config import default_data_dir, override_value
from fashionseg.data import checkpoint_datamodule
from fashionseg.metrics import SplitMetrics
from fashionseg.postprocess.superpixel import SuperpixelVote
from fashionseg.postprocess.superpixel_classifier import (
    PoseKeypoints,
    feature_names,
    region_features,
    region_labels,
)
from fashionseg.training.module import load_checkpoint

GRID = {"num_leaves": [31, 63], "learning_rate": [0.05], "n_estimators": [200, 400], "min_child_samples": [20]}
SUPERPIXELS = {"method": "felzenszwalb", "scale": 100, "sigma": 0.5, "min_size": 50}


def parse_grid(items: list[str]) -> dict:
    grid = {k: list(v) for k, v in GRID.items()}
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--grid {item!r}: expected <lightgbm parameter>=v1,v2 (e.g. num_leaves=15,31).")
        grid[key] = [override_value(v) for v in values.split(",")]
    return grid


@torch.no_grad()
def described(module, dataset, segmenter: SuperpixelVote, pose: PoseKeypoints | None, bf16: bool) -> list[dict]:
    """Per photo: its superpixels, their features, majority true class and scored pixels, and the true label."""
    k, ignore = len(module.class_names), module.hparams.ignore_index
    poses = pose([photo for photo, _ in dataset.arrays]) if pose is not None else [None] * len(dataset)
    out = []
    for i, keypoints in enumerate(poses):
        item, (photo, label) = dataset[i], dataset.arrays[i]
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            logits = module.predict_logits(item["image"][None], item["valid_hw"][None], label.shape)
        probs = logits.softmax(1)[0].float().numpy()
        segments = segmenter.segments(photo)
        target, pixels = region_labels(segments, label, k, ignore)
        out.append({"segments": segments, "features": region_features(photo, probs, segments, keypoints),
                    "target": target, "pixels": pixels, "label": label})
    return out


def val_miou(model, photos: list[dict], class_names: list[str], ignore) -> float:
    """mIoU of the validation photos with each superpixel labelled by ``model``."""
    metrics = SplitMetrics(class_names, ignore)
    for p in photos:
        pred = model.predict(p["features"])[p["segments"]]
        metrics.update(torch.from_numpy(pred[None].astype(np.int64)),
                       torch.from_numpy(p["label"][None].astype(np.int64)))
    return float(metrics.compute()[1]["miou"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="the network's checkpoint (a one-task network)")
    p.add_argument("--tta", action="store_true", help="the network's probabilities with flip TTA, as the recipe's")
    p.add_argument("--data", default=None, help="data set root (default: paths.data_dir)")
    p.add_argument("--pose", choices=["auto", "off"], default="auto",
                   help="auto: MediaPipe's pose keypoints where MediaPipe is found (else skipped, with a warning)")
    p.add_argument("--mediapipe-python", default=None, help="a Python that imports mediapipe")
    p.add_argument("--grid", nargs="*", default=[], help="LightGBM parameter lists, <param>=v1,v2")
    p.add_argument("--limit", type=int, default=None, help="at most this many photos per split (a quick try)")
    p.add_argument("--out", default=None, help="folder (default: <run>/superpixel_classifier)")
    args = p.parse_args(argv)
    import lightgbm
    from sklearn.inspection import permutation_importance

    module = load_checkpoint(args.ckpt, tta_hflip=args.tta)
    if module.joint:
        raise SystemExit(f"{args.ckpt} is a joint network: train the classifier for a one-task network.")
    cfg = OmegaConf.create(module.hparams.config)
    datamodule = checkpoint_datamodule(module.hparams.config, args.data or default_data_dir(), limit=args.limit)
    train = datamodule.datasets["train"]
    train = type(train)(train.ids, train.arrays, datamodule.eval_transform, datamodule.seed)  # no augmentation
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent / "superpixel_classifier"
    pose = PoseKeypoints(args.mediapipe_python, out / "pose_cache") if args.pose == "auto" else None
    if pose is not None and pose.python is None:
        pose = None
    segmenter = SuperpixelVote(**SUPERPIXELS)
    bf16 = str(cfg.trainer.get("precision", "")).startswith("bf16")
    names, ignore = list(module.class_names), module.hparams.ignore_index
    start = time.perf_counter()
    photos = {split: described(module, ds, segmenter, pose, bf16) for split, ds in
              (("train", train), ("val", datamodule.datasets["val"]))}
    print(f"Features of {sum(len(p['target']) for p in photos['train'])} training and "
          f"{sum(len(p['target']) for p in photos['val'])} validation superpixels in "
          f"{time.perf_counter() - start:.0f} s (pose: {'MediaPipe' if pose else 'off'})", flush=True)

    def stacked(split):
        keep = [p["pixels"] > 0 for p in photos[split]]
        return (np.concatenate([p["features"][m] for p, m in zip(photos[split], keep)]),
                np.concatenate([p["target"][m] for p, m in zip(photos[split], keep)]),
                np.concatenate([p["pixels"][m] for p, m in zip(photos[split], keep)]).astype(np.float64))

    x, y, weight = stacked("train")
    grid = parse_grid(args.grid)
    rows, best = [], None
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        model = lightgbm.LGBMClassifier(objective="multiclass", num_class=len(names), random_state=0, verbose=-1,
                                        n_jobs=2, **params)
        model.fit(x, y, sample_weight=weight)
        rows.append({"params": params, "val_miou": val_miou(model, photos["val"], names, ignore)})
        print(f"  {params}: validation mIoU {100 * rows[-1]['val_miou']:.2f}", flush=True)
        if best is None or rows[-1]["val_miou"] > best[0]["val_miou"]:
            best = (rows[-1], model)
    chosen, model = best
    vote = val_miou_vote(photos["val"], names, ignore, len(names))
    print(f"Chosen on validation: {chosen['params']} ({100 * chosen['val_miou']:.2f}%; the superpixel vote on the "
          f"same superpixels {100 * vote:.2f}%)")
    xv, yv, wv = stacked("val")
    importance = permutation_importance(model, xv, yv, sample_weight=wv, n_repeats=3, random_state=0, n_jobs=1)
    features = feature_names(names)
    ranked = sorted(zip(features, importance.importances_mean, importance.importances_std), key=lambda r: -r[1])
    print("Permutation importance on the validation superpixels (pixel-weighted accuracy drop):")
    for name, m, s in ranked[:15]:
        print(f"  {name:<28} {100 * m:6.2f} ± {100 * s:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(str(out / "model.txt"))
    meta = {"checkpoint": str(args.ckpt), "num_classes": len(names), "class_names": names, "features": features,
            "superpixels": SUPERPIXELS, "pose": pose is not None, "params": chosen["params"], "tta_hflip": args.tta}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    command = (f"python eval.py ckpt_path={args.ckpt} tta_hflip={str(args.tta).lower()} "
               f"'postprocess=[none,superpixel,superpixel_classifier]' postprocess.superpixel_classifier.model={out}")
    report = {**meta, "rows": rows, "val_miou": chosen["val_miou"], "val_miou_vote": vote,
              "importance": [{"feature": n, "mean": float(m), "std": float(s)} for n, m, s in ranked],
              "test_command": command}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"Written to {out}; score it on the test split:\n  {command}")
    return report


def val_miou_vote(photos: list[dict], class_names: list[str], ignore, k: int) -> float:
    """mIoU of the validation photos with each superpixel taking the class of its mean probability (the
    ``superpixel`` vote on these superpixels), for comparison."""
    class Vote:
        @staticmethod
        def predict(features):
            return features[:, :k].argmax(1)

    return val_miou(Vote, photos, class_names, ignore)


if __name__ == "__main__":
    main()
