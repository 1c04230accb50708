"""Architecture comparison: train each architecture at one budget on one task, then one table.

    python scripts/compare_architectures.py                                   # experiment=compare_architectures
    python scripts/compare_architectures.py --models deeplabv3plus unet manet --epochs 20
    python scripts/compare_architectures.py --sweep multirun/arch             # table of a finished sweep
    python scripts/compare_architectures.py --models fpn segformer -- task=person data.root=<dir>

Hydra overrides for every job come last, after `--` when an option with several values precedes them.

Trains with `python train.py experiment=compare_architectures model=<a>,<b>,... hydra.sweep.dir=<sweep>`
(one job per architecture: same encoder, input, loss, optimiser, schedule and epochs; the best
checkpoint by validation mIoU is scored once on the test split), unless --sweep already holds its
results. Then times each job's best checkpoint with `scripts/benchmark_speed.py --sections infer`
(ms per 600x400 photo, batch 1, one fresh process per network) and prints one row per architecture:
parameters, epochs, images seen, training minutes and images/s (from the run itself, validation
included), validation and test mIoU, Boundary IoU, the task's weakest classes and latency. Writes
<sweep>/architectures.json and architectures.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fashionseg.core.jobs import run_logged
from fashionseg.inference import VARIANTS
from fashionseg.inference.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODELS = ["deeplabv3plus", "unet", "fpn", "upernet", "segformer"]
DEFAULT_VARIANTS = ["eager fp32", "bf16+channels_last"]


def finished_jobs(sweep: Path) -> list[tuple[Path, dict]]:
    """(job dir, results.json) of every job of the sweep that finished, in job order."""
    jobs = [(p.parent, json.loads(p.read_text())) for p in sweep.glob("*/results.json")]
    return sorted(jobs, key=lambda j: int(j[0].name) if j[0].name.isdigit() else j[0].name)


def parameter_count(ckpt: str) -> int:
    state = read_checkpoint(ckpt, mmap=True)["state_dict"]
    return sum(v.numel() for k, v in state.items() if k.startswith("net."))


def latency(jobs: list[tuple[Path, dict]], variants: list[str], data: str | None, out: Path, log: Path) -> dict:
    """{job dir name: {variant: ms}} from one benchmark_speed.py run over the jobs' best checkpoints."""
    ckpts = [r["best_checkpoint"] for _, r in jobs]
    run_logged([sys.executable, "scripts/benchmark_speed.py", "--sections", "infer", "--infer-models", "--ckpt", *ckpts,
                "--variants", *variants, "--out", str(out), *(["--data", data] if data else [])], log, cwd=ROOT)
    timed: dict[str, dict[str, float]] = {}
    for row in json.loads(out.read_text())["infer"]:
        if "ms" in row:
            timed.setdefault(row["model"], {})[row["variant"]] = round(row["ms"], 1)
    return timed


def job_row(job_dir: Path, res: dict, ms: dict[str, float], weak: list[str]) -> dict:
    cfg, test = res["config"], res["test"]
    net = cfg["model"]["net"]
    return {
        "model": cfg["model"]["name"], "arch": net.get("arch", cfg["model"]["name"]),
        "encoder": net.get("encoder_name") or "-",
        "params_m": round(parameter_count(res["best_checkpoint"]) / 1e6, 2),
        "input": "x".join(map(str, cfg["data"]["image_size"])) if cfg["data"]["image_size"] else "native",
        "epochs": res["epochs"], "images_seen": res.get("images_seen"), "train_min": round(res["fit_time_s"] / 60, 1),
        "train_img_s": res.get("images_per_s"),
        "val_miou": round(100 * res["val_miou_best"], 2), "test_miou": round(100 * test["miou"], 2),
        "boundary_iou": round(100 * test["boundary_iou"], 2),
        "class_iou": {n: round(100 * test[f"iou_{n}"], 1) for n in weak},
        "ms": ms, "job": str(job_dir), "best_checkpoint": res["best_checkpoint"],
    }


def table(rows: list[dict], variants: list[str], weak: list[str]) -> str:
    header = ["model", "encoder", "params (M)", "epochs", "images seen", "train min", "train img/s", "val mIoU",
              "test mIoU", "Boundary IoU", *[f"{n} IoU" for n in weak], *[f"ms ({v})" for v in variants]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], r["encoder"], r["params_m"], r["epochs"], r["images_seen"], r["train_min"],
                 r["train_img_s"], f"{r['val_miou']:.2f}", f"**{r['test_miou']:.2f}**", f"{r['boundary_iou']:.2f}",
                 *[r["class_iou"][n] for n in weak], *[r["ms"].get(v, "-") for v in variants]]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model configs (conf/model/<name>.yaml)")
    p.add_argument("--epochs", type=int, help="trainer.max_epochs of every job (default: the experiment's)")
    p.add_argument("--sweep", default=str(ROOT / "outputs/benchmarks/architectures"),
                   help="the sweep directory: trained into unless it already holds results (then only scored)")
    p.add_argument("--retrain", action="store_true", help="train even where the sweep already holds results")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="VARIANT",
                   help=f"inference variants to time: {', '.join(map(repr, VARIANTS))}; none: --no-latency")
    p.add_argument("--no-latency", action="store_true", help="skip the inference timing")
    p.add_argument("--weak-classes", nargs="*", default=["tshirt", "shoes", "dress"],
                   help="per-class IoU columns (those of the task that exist)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every job, e.g. data.root=... task=person")
    args = p.parse_args(argv)
    sweep = Path(args.sweep)
    sweep.mkdir(parents=True, exist_ok=True)
    log = sweep / "compare.log"
    jobs = finished_jobs(sweep)
    if args.retrain or not jobs:
        run_logged([sys.executable, "train.py", "experiment=compare_architectures", f"model={','.join(args.models)}",
                    f"hydra.sweep.dir={sweep}", "trainer.enable_progress_bar=false",
                    *([f"trainer.max_epochs={args.epochs}"] if args.epochs else []), *args.overrides], log, cwd=ROOT)
        jobs = finished_jobs(sweep)
        missing = sorted(set(args.models) - {r["model"] for _, r in jobs})  # what this call trained, not a reused sweep
        if missing:
            print(f"No results for {missing} in {sweep} (failed: see the job logs there)", flush=True)
    data = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("data.root=")), None)
    timed = {} if args.no_latency else latency(jobs, args.variants, data, sweep / "speed.json", log)
    names = jobs[0][1]["config"]["task"]["class_names"] if jobs else []
    weak = [n for n in args.weak_classes if n in names]
    rows = [job_row(d, r, timed.get(d.name, {}), weak) for d, r in jobs]
    variants = [] if args.no_latency else args.variants
    text = table(rows, variants, weak)
    print(text, flush=True)
    (sweep / "architectures.json").write_text(json.dumps(rows, indent=1))
    (sweep / "architectures.md").write_text(text)
    print(f"Written to {sweep / 'architectures.json'} and {sweep / 'architectures.md'}")
    return rows


if __name__ == "__main__":
    main()
