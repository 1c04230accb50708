"""Tune the refinements' parameters on the validation split, then print the eval.py command that scores
the chosen ones on the test split.

    python scripts/tune_refinements.py --ckpt outputs/.../best.ckpt --tta
    python scripts/tune_refinements.py --ckpt ... --grid crf.bilateral_compat=3,5,10 crf.bilateral_srgb=5,13

The network runs once over the validation photos (at native 600x400, bf16 autocast as in eval.py,
optional flip TTA); every setting of every refinement is then scored on the same probabilities
(``fashionseg.evaluation.refinements.evaluate_refinements``). Each refinement's grid is the product of
its listed values (defaults below; ``--grid name.param=v1,v2`` replaces one list). The best setting
per refinement is the one with the highest validation mIoU (Boundary IoU is shown beside it); nothing here
looks at the test split. Prints one table per refinement (sorted), writes JSON with every row and the
chosen parameters.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fashionseg.core.config import default_data_dir, override_value, resolve_precision
from fashionseg.core.memory import keep_freed_memory
from fashionseg.data import checkpoint_datamodule
from fashionseg.evaluation.refinements import evaluate_refinements
from fashionseg.postprocess.registry import load_refinements
from fashionseg.training.module import load_checkpoint

# Around each refinement's defaults (conf/postprocess/): 1 + 4 + 12 + 6 + 9 + 18 settings.
GRIDS = {
    "none": {},
    "cleanup": {"min_size": [0.0005, 0.001, 0.002, 0.005]},
    "crf": {"bilateral_compat": [3, 5, 10], "bilateral_srgb": [5, 13], "bilateral_sxy": [40, 80]},
    "superpixel": {"scale": [50, 100, 200], "merge": [None, "rag"]},
    "edges": {"prob_weight": [0.25, 0.5, 0.75], "threshold": [0.01, 0.02, 0.05]},
    "guided": {"radius": [4, 6, 8], "eps": [1e-4, 1e-3, 1e-2], "guide": ["rgb", "gray"]},
}


def parse_grid(items: list[str]) -> dict:
    grids = {name: dict(grid) for name, grid in GRIDS.items()}
    for item in items:
        key, _, values = item.partition("=")
        name, _, param = key.partition(".")
        if not (param and values) or name not in grids:
            raise SystemExit(
                f"--grid {item!r}: expected <refinement>.<param>=v1,v2 with refinement in {sorted(grids)}."
            )
        grids[name][param] = [override_value(v) for v in values.split(",")]
    return grids


def settings(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def label(name: str, params: dict) -> str:
    return name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", default=None, help="data set root (default: paths.data_dir)")
    p.add_argument("--tta", action="store_true",
                   help="horizontal-flip test-time augmentation (as eval.py tta_hflip=true)")
    p.add_argument("--refinements", nargs="+", default=list(GRIDS))
    p.add_argument("--grid", nargs="*", default=[], help="replace one parameter list: <refinement>.<param>=v1,v2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="multi-scale test-time augmentation (as eval.py tta_scales=[...]), e.g. 0.75 1 1.25")
    p.add_argument("--task", default=None, help="the head to tune of a joint (task=joint) network: person or fashion")
    p.add_argument("--out", default=None,
                   help="JSON path (default: tune_refinements.json next to the checkpoint's run)")
    args = p.parse_args(argv)
    keep_freed_memory()  # a batch job: the CRF's large buffers are reused, not page-faulted in
    grids = parse_grid(args.grid)

    module = load_checkpoint(args.ckpt, tta_hflip=args.tta, tta_scales=args.scales)
    heads = {h.name: h for h in module.heads}
    if len(heads) > 1 and args.task not in heads:
        raise SystemExit(f"{args.ckpt} is a joint network with heads {list(heads)}; choose one with --task.")
    cfg = OmegaConf.create(module.hparams.config)
    dataset = checkpoint_datamodule(module.hparams.config, args.data or default_data_dir(), limit=None).datasets["val"]
    variants, chosen_from = {}, {}
    for name in args.refinements:
        if name not in grids:
            raise SystemExit(f"Unknown refinement {name!r}; valid: {sorted(grids)}.")
        for params in settings(grids[name]):
            key = label(name, params)
            variants[key] = load_refinements([name], {name: params})[name]
            chosen_from[key] = (name, params)
    print(f"{len(variants)} settings on the {len(dataset)} validation photos of {args.ckpt}", flush=True)
    bf16 = resolve_precision(cfg.trainer).startswith("bf16")
    report = evaluate_refinements(module, dataset, variants, args.batch,
                                  (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else None,
                                  heads[args.task] if len(heads) > 1 else None)

    rows, best = [], {}
    for key, (name, params) in chosen_from.items():
        s = report[key]
        rows.append({"refinement": name, "params": params, "val_miou": s["miou"], "val_boundary_iou": s["boundary_iou"],
                     "val_pixel_acc": s["pixel_acc"], "ms_per_image": s["ms_per_image"]})
        if name not in best or s["miou"] > best[name]["val_miou"]:
            best[name] = rows[-1]
    for name in args.refinements:
        print(f"\n{name} (validation split, sorted by mIoU)")
        print(f"{'params':<60} {'val mIoU':>9} {'boundary IoU':>13} {'pixel acc':>10} {'ms/image':>9}")
        for r in sorted((r for r in rows if r["refinement"] == name), key=lambda r: -r["val_miou"]):
            print(f"{label('', r['params']) or '-':<60} {100 * r['val_miou']:>9.2f} "
                  f"{100 * r['val_boundary_iou']:>13.2f} {100 * r['val_pixel_acc']:>10.2f} {r['ms_per_image']:>9.1f}")
    overrides = [f"postprocess.{name}.{k}={'null' if v is None else v}" for name, r in best.items()
                 for k, v in r["params"].items()]
    command = " ".join(["python eval.py", f"ckpt_path={args.ckpt}", f"tta_hflip={str(args.tta).lower()}",
                        *([f"tta_scales=[{','.join(map(str, args.scales))}]"] if args.scales != [1.0] else []),
                        f"postprocess=[{','.join(args.refinements)}]", *overrides])
    print("\nChosen on validation: " + ", ".join(label(n, r["params"]) for n, r in best.items()))
    print(f"Score them on the test split:\n  {command}")
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent / "tune_refinements.json"
    result = {"checkpoint": args.ckpt, "tta_hflip": args.tta, "tta_scales": args.scales, "split": "val",
              "images": len(dataset), "rows": rows,
              "best": {n: r["params"] for n, r in best.items()}, "test_command": command,
              "network_ms_per_image": report["network_ms_per_image"]}
    out.write_text(json.dumps(result, indent=1))
    print(f"Written to {out}")
    return result


if __name__ == "__main__":
    main()
