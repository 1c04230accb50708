"""Train the superpixel classifier (postprocess=superpixel_classifier) for a network: features of the network's
superpixels, LightGBM, settings chosen on the validation split, features ranked by permutation importance.

    python scripts/train_superpixel_classifier.py --ckpt outputs/.../best.ckpt --tta --fit-on val
    python scripts/train_superpixel_classifier.py --ckpt ... --grid num_leaves=15,31 learning_rate=0.05,0.1

The network runs once over the photos (native size, bf16 as in eval.py, optional flip TTA); each photo is
over-segmented (Felzenszwalb, the ``superpixel`` refinement's settings), every superpixel described
(``fashionseg.postprocess.superpixel_classifier.region_features``) and given its majority true class. The
classifier's scores for a superpixel are mixed with the network's own per-pixel probabilities,
``blend * network + (1 - blend) * classifier`` (``--blend``, 0: the classifier alone), and each pixel takes the
arg-max.

Where the classifier learns (``--fit-on``):
- ``train``: on the training split's superpixels (weighted by their pixel count), every setting scored by the
  validation photos' mIoU. The network has fitted these photos, so its probabilities there are more reliable
  than on new photos, and the classifier learns to trust them;
- ``val``: on the validation split's superpixels, where the network's probabilities are those of unseen photos;
  every setting is scored by cross-validation over the validation photos (``--folds`` groups of whole photos:
  each photo's superpixels labelled by a classifier that did not see it), and the chosen one is trained on
  all of them.

The best setting is written to ``<out>`` (default ``<run>/superpixel_classifier/``: ``model.txt``, LightGBM's
text model, and ``meta.json``), with every row, the features' importance (permutation importance on photos the
classifier did not learn from) and the eval.py command that scores it on the test split in ``report.json``.
Nothing here looks at the test split.
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

from fashionseg.core.config import default_data_dir, override_value, resolve_precision
from fashionseg.data import checkpoint_datamodule
from fashionseg.metrics import SplitMetrics
from fashionseg.postprocess.superpixel import SuperpixelVote
from fashionseg.postprocess.superpixel_classifier import (
    PoseKeypoints,
    blended_labels,
    feature_names,
    region_features,
    region_labels,
    scattered,
)
from fashionseg.training.module import load_checkpoint

GRID = {"num_leaves": [31, 63], "learning_rate": [0.05], "n_estimators": [200, 400], "min_child_samples": [20]}
BLENDS = [0.0, 0.25, 0.5, 0.75]
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
def described(module, dataset, segmenter: SuperpixelVote, pose: PoseKeypoints | None, bf16: bool,
              keep_probs: bool) -> list[dict]:
    """Per photo: its superpixels, their features, majority true class and scored pixels, the true label and
    (``keep_probs``) the network's probabilities (K, H, W) float16."""
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
                    "target": target, "pixels": pixels, "label": label,
                    "probs": probs.astype(np.float16) if keep_probs else None})
    return out


def stacked(photos: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The superpixels of ``photos`` that have scored pixels: features, majority class, pixel counts."""
    keep = [p["pixels"] > 0 for p in photos]
    return (np.concatenate([p["features"][m] for p, m in zip(photos, keep)]),
            np.concatenate([p["target"][m] for p, m in zip(photos, keep)]),
            np.concatenate([p["pixels"][m] for p, m in zip(photos, keep)]).astype(np.float64))


def fitted(params: dict, photos: list[dict], k: int):
    import lightgbm

    x, y, weight = stacked(photos)
    model = lightgbm.LGBMClassifier(objective="multiclass", num_class=k, random_state=0, verbose=-1, n_jobs=2,
                                    **params)
    return model.fit(x, y, sample_weight=weight)


def class_scores(model, photos: list[dict], k: int) -> list[np.ndarray]:
    """Per photo, the classifier's class probabilities (R, K) of its superpixels (0 for a class it never saw)."""
    return [scattered(model.predict_proba(p["features"]), model.classes_, k) for p in photos]


def out_of_fold(params: dict, photos: list[dict], k: int, folds: int) -> tuple[list[np.ndarray], tuple]:
    """Each photo's superpixel scores from a classifier trained on the other folds' photos (photo i is in fold
    i mod folds); and the last fold's (model, held-out photos), for the permutation importance."""
    scores: list = [None] * len(photos)
    for fold in range(folds):
        held = [i for i in range(len(photos)) if i % folds == fold]
        model = fitted(params, [p for i, p in enumerate(photos) if i % folds != fold], k)
        for i, s in zip(held, class_scores(model, [photos[i] for i in held], k)):
            scores[i] = s
    return scores, (model, [photos[i] for i in held])


def photo_miou(scores: list[np.ndarray], photos: list[dict], class_names: list[str], ignore, blend: float) -> float:
    """mIoU of the photos with each pixel labelled by blend * the network's probability + (1 - blend) * its
    superpixel's classifier score (``SuperpixelClassifier.refine``)."""
    metrics = SplitMetrics(class_names, ignore)
    for s, p in zip(scores, photos):
        pred = blended_labels(s, p["segments"], p["probs"], blend)
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
    p.add_argument("--blend", type=float, nargs="+", default=BLENDS,
                   help="weights of the network's own probabilities beside the classifier's (0: the classifier alone)")
    p.add_argument("--fit-on", choices=["train", "val"], default="train",
                   help="the split the classifier learns from (val: settings by cross-validation over its photos)")
    p.add_argument("--folds", type=int, default=5, help="--fit-on val: cross-validation folds of whole photos")
    p.add_argument("--limit", type=int, default=None, help="at most this many photos per split (a quick try)")
    p.add_argument("--out", default=None, help="folder (default: <run>/superpixel_classifier)")
    args = p.parse_args(argv)
    if any(not 0 <= b < 1 for b in args.blend):
        raise SystemExit(f"--blend {args.blend}: each weight must be in [0, 1) (1 would be the network alone).")
    from sklearn.inspection import permutation_importance

    module = load_checkpoint(args.ckpt, tta_hflip=args.tta)
    if module.joint:
        raise SystemExit(f"{args.ckpt} is a joint network: train the classifier for a one-task network.")
    cfg = OmegaConf.create(module.hparams.config)
    datamodule = checkpoint_datamodule(module.hparams.config, args.data or default_data_dir(), limit=args.limit)
    n_val = len(datamodule.datasets["val"])
    if args.fit_on == "val" and (args.folds < 2 or n_val < args.folds):
        raise SystemExit(f"--fit-on val with --folds {args.folds} needs 2 folds or more and at least as many "
                         f"validation photos; this data set has {n_val}. Use --fit-on train or other --folds.")
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent / "superpixel_classifier"
    pose = PoseKeypoints(args.mediapipe_python, out / "pose_cache") if args.pose == "auto" else None
    if pose is not None and pose.python is None:
        pose = None
    segmenter = SuperpixelVote(**SUPERPIXELS)
    bf16 = resolve_precision(cfg.trainer).startswith("bf16")
    names, ignore, k = list(module.class_names), module.hparams.ignore_index, len(module.class_names)
    start = time.perf_counter()
    photos = {"val": described(module, datamodule.datasets["val"], segmenter, pose, bf16, keep_probs=True)}
    if args.fit_on == "train":
        train = datamodule.datasets["train"]
        train = type(train)(train.ids, train.arrays, datamodule.eval_transform, datamodule.seed)  # no augmentation
        photos["train"] = described(module, train, segmenter, pose, bf16, keep_probs=False)
    counts = ", ".join(f"{sum(len(p['target']) for p in v)} {split}" for split, v in photos.items())
    print(f"Features of {counts} "
          f"superpixels in {time.perf_counter() - start:.0f} s (pose: {'MediaPipe' if pose else 'off'}); "
          f"the classifier learns on {args.fit_on}", flush=True)
    val = photos["val"]
    network = photo_miou([np.zeros((len(p["target"]), k)) for p in val], val, names, ignore, 1.0)  # alone
    vote = photo_miou([p["features"][:, :k] for p in val], val, names, ignore, 0.0)
    grid = parse_grid(args.grid)
    rows, best = [], None
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        if args.fit_on == "train":
            model = fitted(params, photos["train"], k)
            scores, held_out = class_scores(model, val, k), (model, val)
        else:
            scores, held_out = out_of_fold(params, val, k, args.folds)
        for blend in args.blend:
            rows.append({"params": params, "blend": blend, "val_miou": photo_miou(scores, val, names, ignore, blend)})
            print(f"  {params} blend {blend}: validation mIoU {100 * rows[-1]['val_miou']:.2f}", flush=True)
            if best is None or rows[-1]["val_miou"] > best[0]["val_miou"]:
                best = (rows[-1], held_out)
    chosen, (held_model, held_photos) = best
    print(f"Chosen on validation: {chosen['params']}, blend {chosen['blend']} ({100 * chosen['val_miou']:.2f}%; "
          f"the network alone {100 * network:.2f}%, the superpixel vote on the same superpixels {100 * vote:.2f}%)")
    # --fit-on train: the chosen row's model is the final one; --fit-on val: trained again on every photo
    model = held_model if args.fit_on == "train" else fitted(chosen["params"], photos["val"], k)
    xv, yv, wv = stacked(held_photos)
    importance = permutation_importance(held_model, xv, yv, sample_weight=wv, n_repeats=3, random_state=0, n_jobs=1)
    features = feature_names(names)
    ranked = sorted(zip(features, importance.importances_mean, importance.importances_std), key=lambda r: -r[1])
    print("Permutation importance on validation superpixels the classifier did not learn from "
          "(pixel-weighted accuracy drop):")
    for name, m, s in ranked[:15]:
        print(f"  {name:<28} {100 * m:6.2f} ± {100 * s:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(str(out / "model.txt"))
    meta = {"checkpoint": str(args.ckpt), "num_classes": k, "class_names": names, "features": features,
            "superpixels": SUPERPIXELS, "pose": pose is not None, "params": chosen["params"],
            "blend": chosen["blend"], "fit_on": args.fit_on, "classes": model.classes_.tolist(),
            "tta_hflip": args.tta}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    command = (f"python eval.py ckpt_path={args.ckpt} tta_hflip={str(args.tta).lower()} "
               f"'postprocess=[none,superpixel,superpixel_classifier]' postprocess.superpixel_classifier.model={out}")
    report = {**meta, "rows": rows, "val_miou": chosen["val_miou"], "val_miou_vote": vote,
              "val_miou_network": network,
              "importance": [{"feature": n, "mean": float(m), "std": float(s)} for n, m, s in ranked],
              "test_command": command}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"Written to {out}; score it on the test split:\n  {command}")
    return report


if __name__ == "__main__":
    main()
