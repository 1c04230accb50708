"""Dense CRF benchmark: our PyTorch backend against pydensecrf2 on real test photos, same unaries and parameters.

    python scripts/benchmark_crf.py --ckpt outputs/.../best.ckpt          # a fashion model: 7 classes
    python scripts/benchmark_crf.py --ckpt ... --device cuda               # + GPU rows where one is lent

Unaries are the model's softmax probabilities on the first --images photos of the test split, at
their native 600x400. Parameters: 5 iterations, Gaussian sxy=3 compat=3, bilateral sxy=80
srgb=13 compat=10 (fashionseg/conf/postprocess/crf.yaml). Timing covers the CRF alone (unaries given), as
ms per image for a batch of --batch photos: pydensecrf2 one photo after another, ours the whole
batch at once, with torch.compile (compiled during the agreement pass, before timing) and eagerly;
median of --repeats runs, the backends alternating. Agreement: the share of pixels where ours and
pydensecrf2 give the same label. The trainable CRF layer (crf_layer=..., fashionseg/models/crf_layer.py) has a
row of its own, at inference (no gradient): with its starting parameters (Potts, the same weights: the same
model as the others), or with those learned in a run, ``--layer <checkpoint of a crf_layer run>``. Rows with
``downsample`` s (``--downsample``, default 2): ours and the layer with the mean field on s x s block averages, its
pairwise term lifted back to the full-resolution unary (``postprocess.crf.downsample``, ``crf_layer.downsample``).
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fashionseg.core.config import compose_config, default_data_dir
from fashionseg.core.memory import keep_freed_memory
from fashionseg.data import checkpoint_datamodule
from fashionseg.inference.checkpoint import load_network
from fashionseg.metrics import SegmentationMetrics, labels_from_scores, scores
from fashionseg.models.crf_layer import CRFLayerNetwork, MeanFieldCRF
from fashionseg.postprocess import DenseCRF
from fashionseg.training.module import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_photos(ckpt: str, root: str, n: int):
    """Photos, labels and the model's probabilities for the first n test images."""
    module = load_checkpoint(ckpt)
    dataset = checkpoint_datamodule(module.hparams.config, root, limit=None).datasets["test"]
    photos, labels, probs = [], [], []
    with torch.no_grad():
        for i in range(min(n, len(dataset))):
            item = dataset[i]
            photo, label = dataset.arrays[i]
            logits = module.predict_logits(item["image"][None], item["valid_hw"][None], label.shape)
            photos.append(photo)
            labels.append(label)
            probs.append(logits.softmax(1)[0].numpy())
    return np.stack(photos), np.stack(labels), np.stack(probs).astype(np.float32), list(module.class_names)


class LayerCRF:
    """The trainable CRF layer as a batch refinement: photos (B, H, W, 3) uint8, probs (B, K, H, W) -> labels."""

    def __init__(self, layer: MeanFieldCRF, downsample: int = 1):
        self.layer = copy.copy(layer.eval())  # shares the parameters; its own downsample
        self.layer.downsample = downsample

    def refine_batch(self, photos: np.ndarray, probs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = torch.from_numpy(probs).clamp_min(1e-8).log()
            x = self.layer(torch.from_numpy(photos).permute(0, 3, 1, 2), logits)
        return labels_from_scores(x).numpy().astype(np.uint8)


def layer_crf(k: int, params: dict, ckpt: str | None) -> tuple[str, MeanFieldCRF]:
    """The layer with the CRF parameters (its start), or the one trained in the run of ``ckpt``."""
    if ckpt is None:
        return "trainable layer (start)", MeanFieldCRF(
            k, params["iterations"], params["gaussian_sxy"], params["gaussian_compat"], params["bilateral_sxy"],
            params["bilateral_srgb"], params["bilateral_compat"])
    net = load_network(ckpt).net
    if not isinstance(net, CRFLayerNetwork):
        raise SystemExit(f"--layer {ckpt}: this checkpoint has no trainable CRF layer (train one with crf_layer=...).")
    return "trainable layer (learned)", net.crf


def miou(preds: np.ndarray, labels: np.ndarray, k: int, ignore_index: int | None = 255) -> float:
    """Mean IoU of label maps; pixels labelled ``ignore_index`` (the tasks' void label) are not scored."""
    metric = SegmentationMetrics(k, ignore_index=ignore_index)
    metric.update(torch.from_numpy(preds).long(), torch.from_numpy(labels).long())
    return scores(metric.compute(), [str(c) for c in range(k)])["miou"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="a train.py checkpoint (fashion: 7 classes)")
    p.add_argument("--data", default=None, help="data set root (default: paths.data_dir)")
    p.add_argument("--images", type=int, default=8, help="test photos (agreement is measured on all of them)")
    p.add_argument("--batch", type=int, default=8, help="photos per timed batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", nargs="+", default=["cpu"], help="devices for our backend: cpu, cuda")
    p.add_argument("--no-eager", action="store_true", help="skip the row of our backend without torch.compile")
    p.add_argument("--layer", default=None, help="a checkpoint of a crf_layer run: its learned layer's row")
    p.add_argument("--downsample", type=int, nargs="*", default=[2],
                   help="rows of ours and of the layer at these downsample factors (none: only full resolution)")
    p.add_argument("--params", nargs="*", default=[],
                   help="CRF parameters for every row, e.g. bilateral_sxy=40 bilateral_srgb=5 (postprocess.crf.*)")
    p.add_argument("--out", default=str(ROOT / "outputs/benchmarks/crf.json"))
    args = p.parse_args(argv)
    keep_freed_memory()  # a batch job: the CRF's large buffers are reused, not page-faulted in
    photos, labels, probs, names = test_photos(args.ckpt, args.data or default_data_dir(), args.images)
    k = len(names)
    params = OmegaConf.to_container(compose_config("eval", ["postprocess=[crf]", *[f"postprocess.crf.{a}" for a in
                                                                                  args.params]]).postprocess.crf)
    params.pop("_target_")
    params.pop("backend", None)
    params.pop("compile", None)
    params.pop("downsample", None)
    theirs = DenseCRF(**params, backend="pydensecrf2")
    # Ours on each device with torch.compile (the default), and eagerly on the first device.
    ours = {f"{dev}": DenseCRF(**params, backend="torch", device=dev) for dev in args.device}
    if not args.no_eager:
        ours[f"{args.device[0]}, eager"] = DenseCRF(**params, backend="torch", device=args.device[0], compile=False)
    for s in args.downsample:
        ours[f"{args.device[0]}, downsample {s}"] = DenseCRF(**params, backend="torch", device=args.device[0],
                                                             downsample=s)
    layer_name, layer = layer_crf(k, params, args.layer)
    ours[layer_name] = LayerCRF(layer)
    for s in args.downsample:
        ours[f"{layer_name[:-1]}, downsample {s})"] = LayerCRF(layer, s)
    # Labels of every photo from each backend (agreement), then timing on one batch.
    ref = np.stack([theirs(photo, prob) for photo, prob in zip(photos, probs)])
    results = {"photos": len(photos), "shape": list(photos.shape[1:3]), "classes": k, "params": params,
               "threads": torch.get_num_threads(), "rows": []}
    base = miou(probs.argmax(1), labels, k)
    batch_p, batch_q = photos[: args.batch], probs[: args.batch]
    timings: dict[str, list[float]] = {"pydensecrf2": [], **{f"torch ({d})": [] for d in ours}}
    labels_ours = {}
    for dev, crf in ours.items():
        labels_ours[dev] = np.concatenate([crf.refine_batch(photos[i: i + args.batch], probs[i: i + args.batch])
                                           for i in range(0, len(photos), args.batch)])
    for _ in range(args.repeats):
        t = time.perf_counter()
        for photo, prob in zip(batch_p, batch_q):
            theirs(photo, prob)
        timings["pydensecrf2"].append(1000 * (time.perf_counter() - t) / len(batch_p))
        for dev, crf in ours.items():
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            crf.refine_batch(batch_p, batch_q)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            timings[f"torch ({dev})"].append(1000 * (time.perf_counter() - t) / len(batch_p))
    ref_ms = statistics.median(timings["pydensecrf2"])
    results["rows"].append({"backend": "pydensecrf2 (C++)", "ms_per_image": ref_ms, "speedup": 1.0, "agreement": 1.0,
                            "miou": miou(ref, labels, k), "timings": timings["pydensecrf2"]})
    for dev in ours:
        ms = statistics.median(timings[f"torch ({dev})"])
        name = dev if dev.startswith("trainable") else f"ours, PyTorch ({dev})"
        results["rows"].append({"backend": name, "ms_per_image": ms, "speedup": ref_ms / ms,
                                "agreement": float((labels_ours[dev] == ref).mean()),
                                "agreement_min_image":
                                    float((labels_ours[dev] == ref).reshape(len(ref), -1).mean(1).min()),
                                "miou": miou(labels_ours[dev], labels, k), "timings": timings[f"torch ({dev})"]})
    header = f"{'backend':<42} {'ms/image':>9} {'speed-up':>9} {'agreement':>10} {'test mIoU':>10}"
    print(f"Dense CRF, {len(photos)} test photos {photos.shape[1]}x{photos.shape[2]}, {k} classes, "
          f"{params['iterations']} iterations, batch {len(batch_p)}, {torch.get_num_threads()} threads")
    print(f"network alone (no CRF): test mIoU on these photos {100 * base:.2f}")
    print(header + "\n" + "-" * len(header))
    for r in results["rows"]:
        print(f"{r['backend']:<42} {r['ms_per_image']:>9.1f} {r['speedup']:>8.2f}x {100 * r['agreement']:>9.2f}% "
              f"{100 * r['miou']:>9.2f}")
    results["network_miou"] = base
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nWritten to {out}")
    return results


if __name__ == "__main__":
    main()
