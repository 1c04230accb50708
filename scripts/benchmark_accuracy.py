"""Accuracy benchmark: train (or reuse) the listed experiment recipes and score them on the test split.

    python scripts/benchmark_accuracy.py                                  # every recipe in DEFAULT_RECIPES
    python scripts/benchmark_accuracy.py --recipes best_fashion --retrain
    make bench-accuracy

Each recipe trains with `python train.py experiment=<recipe> hydra.run.dir=<runs>/<recipe>` in a
fresh process (model selection on the validation split only; the test split is scored once, on
the best checkpoint, or on the last epoch of a recipe without a validation split). A run
directory that already holds results.json is reused unless --retrain. Recipes that differ only
in evaluation settings (tta_hflip, refinements) share one trained network: the second is scored
with eval.py on the first one's checkpoint. A recipe's test-time refinements
(`callbacks.refinements`: methods and their parameters, chosen on the validation split) add one
row each, scored on the same network outputs.

Prints one table (task, recipe, device, train minutes, test mIoU, Boundary IoU, pixel accuracy, per-class IoU)
and writes it as JSON and Markdown, plus <run dir>/confusion.png for every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fashionseg.core.config import compose_config
from fashionseg.core.jobs import run_logged
from fashionseg.metrics import scores
from fashionseg.metrics.figures import confusion_figure

ROOT = Path(__file__).resolve().parents[1]

# Keys that do not change training.
EVAL_ONLY = {"tta_hflip", "tta_scales", "task_name", "tags", "test", "optimized_metric"}
DEFAULT_RECIPES = ["fast_person", "fast_person_trainval", "best_person", "best_fashion"]


def recipe_config(recipe: str, overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose_config("train", [f"experiment={recipe}", *overrides]), resolve=False)


def training_key(cfg: dict) -> str:
    key = {k: v for k, v in cfg.items() if k not in EVAL_ONLY}
    key["callbacks"] = {k: v for k, v in (cfg.get("callbacks") or {}).items() if k != "refinements"}
    return json.dumps(key, sort_keys=True, default=str)


def refinement_overrides(cfg: dict) -> list[str]:
    """eval.py overrides that score the recipe's ``callbacks.refinements`` (none when it has none)."""
    spec = (cfg.get("callbacks") or {}).get("refinements")
    if not spec:
        return []
    params = spec.get("params") or {}
    return [f"postprocess=[{','.join(spec['methods'])}]",
            *[f"postprocess.{m}.{k}={v}" for m, ps in params.items() for k, v in ps.items()]]


def device_name(cfg: dict) -> str:
    accelerator = cfg["trainer"].get("accelerator", "cpu")
    if accelerator in ("gpu", "cuda"):
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "gpu"
    return f"CPU, {os.cpu_count()} cores ({platform.machine()})"


def run(cmd: list[str], log_path: Path) -> None:
    run_logged(cmd, log_path, cwd=ROOT)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, help="conf/experiment/<name>.yaml")
    p.add_argument("--runs", default=str(ROOT / "outputs/benchmarks/accuracy"), help="one run dir per recipe here")
    p.add_argument("--retrain", action="store_true", help="train again even where results.json exists")
    p.add_argument("--reuse", nargs="*", default=[], metavar="RECIPE=RUN_DIR",
                   help="score the network of an existing run (its best checkpoint) with RECIPE's evaluation "
                        "settings instead of training; the row says so")
    p.add_argument("--out", default=None, help="JSON path (default: <runs>/accuracy.json)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides added to every recipe, e.g. data.root=...")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    trained: dict[str, Path] = {}  # training key -> run dir holding that network
    reuse = dict(r.split("=", 1) for r in args.reuse)
    rows = []
    for recipe in args.recipes:
        cfg = recipe_config(recipe, args.overrides)
        run_dir, key = runs / recipe, training_key(cfg)
        command = " ".join(["python train.py", f"experiment={recipe}", *args.overrides])
        results_path = run_dir / "results.json"
        if recipe in reuse and key not in trained:
            trained[key] = Path(reuse[recipe])
        if key in trained and trained[key] != run_dir:
            source = trained[key]
            src = json.loads((source / "results.json").read_text())
            if args.retrain or not (run_dir / "eval_results.json").exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                run([python, "eval.py", f"ckpt_path={src['best_checkpoint']}", f"tta_hflip={cfg.get('tta_hflip')}",
                     f"tta_scales=[{','.join(map(str, cfg.get('tta_scales') or [1.0]))}]",
                     f"hydra.run.dir={run_dir}", *refinement_overrides(cfg),
                     *[o for o in args.overrides if o.startswith("data.root=")]], run_dir / "benchmark.log")
            ev = json.loads((run_dir / "eval_results.json").read_text())
            test, confusion, refined = ev["scores"], ev["confusion"], ev.get("refinements")
            fit_s, note = src["fit_time_s"], f"network of {source}, evaluated with tta_hflip={cfg.get('tta_hflip')}"
            command = f"{command}  # scored: network of {source.name} + eval.py tta_hflip={cfg.get('tta_hflip')}"
        else:
            if args.retrain or not results_path.exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                run([python, "train.py", f"experiment={recipe}", f"hydra.run.dir={run_dir}",
                     "trainer.enable_progress_bar=false", *args.overrides], run_dir / "benchmark.log")
            res = json.loads(results_path.read_text())
            test, confusion, refined = res["test"], res["test_confusion"], res.get("refinements")
            fit_s, note = res["fit_time_s"], ""
            trained[key] = run_dir
        common = {"task": cfg["task"]["name"], "device": device_name(cfg), "train_min": round(fit_s / 60, 1),
                  "run_dir": str(run_dir)}
        names = list(cfg["task"]["class_names"])
        rows.append(table_row(recipe, test, confusion, names, run_dir / "confusion.png",
                              command=command, note=note, **common))
        for method, report in (refined or {}).items():
            if method == "none" or not isinstance(report, dict):  # "none" is the row above
                continue
            rows.append(table_row(f"{recipe} + {method}", report, report["confusion"], names,
                                  run_dir / f"confusion_{method}.png", command=f"{command}  # its {method} row",
                                  note="; ".join(filter(None, [note,
                                                              f"{method}: {report['ms_per_image']:.1f} ms/image"])),
                                  **common))
    print_table(rows)
    out = Path(args.out) if args.out else runs / "accuracy.json"
    out.write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(markdown(rows))
    print(f"\nWritten to {out} and {out.with_suffix('.md')}")
    return rows


def table_row(recipe: str, test: dict, confusion: list, names: list[str], figure_path: Path, **fields) -> dict:
    """One table row, its scores recomputed from the confusion matrix that its figure shows."""
    recomputed = scores(torch.tensor(confusion), names)  # table and figure from one source
    assert abs(recomputed["miou"] - test["miou"]) < 1e-6, (recomputed, test)
    figure = confusion_figure(confusion, names, figure_path, title=f"{recipe}: test mIoU {100 * test['miou']:.1f}%")
    boundary = test.get("boundary_iou")  # absent from runs scored before Boundary IoU existed
    return {"recipe": recipe, **fields, "test_miou": round(100 * test["miou"], 2),
            "boundary_iou": None if boundary is None else round(100 * boundary, 2),
            "pixel_acc": round(100 * test["pixel_acc"], 2),
            "per_class_iou": {n: round(100 * test[f"iou_{n}"], 1) for n in names}, "figure": str(figure)}


def markdown(rows: list[dict]) -> str:
    header = ["task", "recipe", "device", "train (min)", "test mIoU", "boundary IoU", "pixel acc", "per-class IoU",
              "command"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        per_class = ", ".join(f"{n} {v}" for n, v in r["per_class_iou"].items())
        lines.append(f"| {r['task']} | {r['recipe']} | {r['device']} | {r['train_min']} | **{r['test_miou']:.2f}%** "
                     f"| {percent(r['boundary_iou'])} | {r['pixel_acc']:.2f}% | {per_class} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def print_table(rows: list[dict]) -> None:
    header = ["task", "recipe", "device", "train min", "test mIoU", "boundary IoU", "pixel acc", "per-class IoU"]
    body = [[r["task"], r["recipe"], r["device"], f"{r['train_min']:.1f}", f"{r['test_miou']:.2f}",
             percent(r["boundary_iou"]), f"{r['pixel_acc']:.2f}",
             " ".join(f"{n}={v}" for n, v in r["per_class_iou"].items())] for r in rows]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *body]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
