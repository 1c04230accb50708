"""Score refinements side by side on a split: mIoU, Boundary IoU, pixel accuracy, per-class IoU and ms per image."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fashionseg.core.heads import Head, head_label
from fashionseg.inference.logits import crop_and_resize, lift_size
from fashionseg.postprocess.base import Refinement, lifts


@torch.no_grad()
def evaluate_refinements(module, dataset, refinements: Mapping[str, Refinement], batch_size: int = 8,
                         precision_context=None, head: Head | None = None) -> dict:
    """Run the network once per batch, then every refinement on the same probabilities.

    ``dataset`` is a SegmentationDataset with evaluation transform (photos and labels at native size
    in ``dataset.arrays``). ``precision_context``: a context manager factory for the network's forward
    pass (the trainer's, e.g. bf16 autocast) so that the "none" row equals the test score.
    Returns ``{name: {scores..., "ms_per_image": refinement time}}`` plus
    ``"network_ms_per_image"``. The first batch is a warm-up, not timed (one-off costs such as the
    CRF's torch.compile), where there is more than one batch. ``head``: one task of a joint network
    (``module.heads``), scored on its own channels and label maps.
    """
    head = head or module.heads[0]
    metrics = {name: module.split_metrics(head) for name in refinements}  # void pixels: scored by none either
    seconds, timed = dict.fromkeys(refinements, 0.0), 0
    network_s, device = 0.0, module.device
    lifting = any(lifts(refine) for refine in refinements.values())
    module.eval()
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        items = [dataset[i] for i in idx]
        photos = [dataset.arrays[i][0] for i in idx]
        labels = [head_label(dataset.arrays[i][1], module.heads, head) for i in idx]
        timing = start > 0 or len(dataset) <= batch_size  # the first batch warms up
        timed += len(idx) if timing else 0
        t = time.perf_counter()
        probs, coarse = [], []  # at the photos' size; at the network's, for refinements that lift them (lifts)
        same = len({tuple(it["image"].shape) for it in items}) == 1 and len({lab.shape for lab in labels}) == 1
        groups = [idx] if same else [[i] for i in idx]
        for group in groups:
            pos = [idx.index(i) for i in group]
            images = torch.stack([items[p]["image"] for p in pos]).to(device)
            valid_hw = items[pos[0]]["valid_hw"]
            with precision_context() if precision_context else contextlib.nullcontext():
                logits = module.predict_logits(images, valid_hw[None], valid_hw)[:, head.channels]  # cropped
                probs += list(crop_and_resize(logits, valid_hw, labels[pos[0]].shape).softmax(1).float().cpu())
            if lifting:
                size = lift_size(valid_hw, labels[pos[0]].shape)
                coarse += list(crop_and_resize(logits, valid_hw, size).softmax(1).float().cpu())
        network_s += time.perf_counter() - t
        for name, refine in refinements.items():
            t = time.perf_counter()
            given = coarse if lifts(refine) else probs
            if hasattr(refine, "refine_batch") and len({p.shape for p in photos}) == 1:
                preds = refine.refine_batch(np.stack(photos), torch.stack(given).numpy())
            else:
                preds = [refine(photo, p) for photo, p in zip(photos, given)]
            seconds[name] += time.perf_counter() - t if timing else 0.0
            for pred, true in zip(preds, labels):
                pred = torch.as_tensor(np.asarray(pred), dtype=torch.int64)
                metrics[name].update(pred, torch.from_numpy(true).long())
    n = len(dataset)
    computed = {name: metric.compute() for name, metric in metrics.items()}
    report = {name: {**computed[name][1], "ms_per_image": 1000 * seconds[name] / timed,
                     "confusion": computed[name][0].tolist()} for name in refinements}
    report["network_ms_per_image"] = 1000 * network_s / n
    return report


def refinement_table(report: Mapping, class_names: Sequence[str]) -> str:
    """Markdown table, one row per refinement: mIoU, Boundary IoU, pixel accuracy, per-class IoU, ms per image."""
    header = ["refinement", "mIoU", "boundary IoU", "pixel acc", *class_names, "ms/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in report.items():
        if not isinstance(s, Mapping):
            continue
        cells = [name, f"{100 * s['miou']:.2f}", f"{100 * s['boundary_iou']:.2f}", f"{100 * s['pixel_acc']:.2f}",
                 *[f"{100 * s[f'iou_{c}']:.1f}" for c in class_names], f"{s['ms_per_image']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def module_refinements(module, dataset, refinements: Mapping[str, Refinement], batch_size: int = 8,
                       precision_context=None) -> tuple[dict, dict[str, dict]]:
    """``evaluate_refinements`` for every head of the module. Returns the report (a joint network's:
    ``{task: report}``) and ``{task: report}`` for every head, one network pass over the split per head."""
    per_head = {h.name: evaluate_refinements(module, dataset, refinements, batch_size, precision_context, h)
                for h in module.heads}
    return (per_head if len(module.heads) > 1 else next(iter(per_head.values()))), per_head


def refinement_tables(module, per_head: Mapping[str, Mapping]) -> str:
    """The markdown table of each head's report, under the task's name when there are several."""
    if len(module.heads) == 1:
        return refinement_table(next(iter(per_head.values())), module.class_names)
    return "\n\n".join(f"{h.name}:\n\n{refinement_table(per_head[h.name], h.class_names)}" for h in module.heads)
