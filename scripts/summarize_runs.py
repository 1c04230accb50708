"""One table of every job of a sweep: overrides, val/test mIoU, pixel accuracy, wall time; best first.

    python scripts/summarize_runs.py multirun/2026-11-24/19-00-00 [--sort val_miou|test_miou]

Writes summary.txt (the printed table), summary.csv and summary.png (the metric against each
swept parameter) into the sweep directory (or --out). Jobs that failed or are still running are
listed at the bottom with their state. Sorting uses the validation mIoU by default: the test
split never selects models.

An Optuna sweep's study (`hparams_search=optuna`: `<sweep>/optuna.db`, shared by every process that ran
trials of it) is read too: its trials by state, its best trial, and study.png (the optimisation history).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import yaml


def parse_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def load_jobs(sweep: Path) -> list[dict]:
    jobs = []
    for overrides_file in sorted(sweep.glob("**/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = dict(parse_override(o) for o in (yaml.safe_load(overrides_file.read_text()) or []))
        job = {"job": str(job_dir.relative_to(sweep)), "overrides": overrides}
        results = job_dir / "results.json"
        if results.exists():
            r = json.loads(results.read_text())
            test = r.get("test") or {}
            job.update(state="done", val_miou=r.get("val_miou_best"), test_miou=test.get("miou"),
                       pixel_acc=test.get("pixel_acc"), wall_min=(r.get("wall_time_s") or 0) / 60)
        else:
            logs = sorted(job_dir.glob("*.log"))
            text = logs[0].read_text(errors="replace") if logs else ""
            error = next((line for line in reversed(text.splitlines()) if "Error" in line), "")
            job.update(state="failed" if error else "no results", error=error.strip()[-200:])
        jobs.append(job)
    return jobs


def fmt(v, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.2f}" if pct else f"{v:.1f}"


def table(jobs: list[dict], swept: list[str]) -> str:
    header = ["rank", *swept, "val mIoU", "test mIoU", "pixel acc", "wall min", "state"]
    rows = [[str(i + 1) if j["state"] == "done" else "-", *[j["overrides"].get(k, "") for k in swept],
             fmt(j.get("val_miou")), fmt(j.get("test_miou")), fmt(j.get("pixel_acc")),
             fmt(j.get("wall_min"), pct=False), j["state"] + (f" ({j['error']})" if j.get("error") else "")]
            for i, j in enumerate(jobs)]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def plot(jobs: list[dict], swept: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j["state"] == "done" and j.get(metric) is not None]
    n = max(len(swept), 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.4), squeeze=False)
    for ax, key in zip(axes[0], swept or ["job"]):
        values = [j["overrides"].get(key, j["job"]) for j in done]
        ys = [100 * j[metric] for j in done]
        try:
            xs = [float(v) for v in values]
            ax.scatter(xs, ys)
            if min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
        except ValueError:  # categorical
            cats = sorted(set(values))
            ax.scatter([cats.index(v) for v in values], ys)
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_summary(sweep: Path, out: Path) -> dict | None:
    """The Optuna study in ``<sweep>/optuna.db`` (every process's trials), or None when there is none."""
    storage = sweep / "optuna.db"
    if not storage.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    url = f"sqlite:///{storage}"
    summaries = optuna.get_all_study_summaries(storage=url)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    if complete:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.scatter([t.number for t in complete], [100 * t.value for t in complete], label="trial")
        running = [max(100 * t.value for t in complete[: i + 1]) for i in range(len(complete))]
        ax.step([t.number for t in complete], running, where="post", color="C1", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("objective (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "study.png", dpi=110)
        plt.close(fig)
    return {"study": study.study_name, "storage": url, "trials": states,
            "best": {"number": best.number, "value": best.value, "params": best.params} if best else None}


def summarize(sweep: str | Path, sort: str = "val_miou", out: str | Path | None = None) -> dict:
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise SystemExit(f"{sweep} is not a directory; give a multirun sweep dir, e.g. multirun/<date>/<time>.")
    jobs = load_jobs(sweep)
    if not jobs:
        raise SystemExit(f"No Hydra jobs (*/.hydra/overrides.yaml) under {sweep}.")
    if sort not in ("val_miou", "test_miou"):
        raise SystemExit(f"--sort must be val_miou or test_miou, got {sort!r}.")
    jobs.sort(key=lambda j: (j["state"] != "done", -(j.get(sort) or 0.0)))
    keys = sorted({k for j in jobs for k in j["overrides"]})
    swept = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1] or keys
    out = Path(out) if out else sweep
    out.mkdir(parents=True, exist_ok=True)
    text = table(jobs, swept)
    (out / "summary.txt").write_text(text + "\n")
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *swept, "val_miou", "test_miou", "pixel_acc", "wall_min", "state", "error"])
        for j in jobs:
            writer.writerow([j["job"], *[j["overrides"].get(k, "") for k in swept], j.get("val_miou"),
                             j.get("test_miou"), j.get("pixel_acc"), j.get("wall_min"), j["state"], j.get("error", "")])
    plot(jobs, swept, sort, out / "summary.png")
    print(text)
    print(f"\n{len(jobs)} jobs, {sum(j['state'] == 'done' for j in jobs)} done; "
          f"written {out / 'summary.txt'}, summary.csv, summary.png")
    study = study_summary(sweep, out)
    if study:
        best = study["best"]
        print(f"Optuna study {study['study']} ({study['storage']}): trials {study['trials']}"
              + (f"; best trial {best['number']}: {100 * best['value']:.2f}% with {best['params']}" if best else "")
              + f"; history in {out / 'study.png'}")
    return {"jobs": jobs, "swept": swept, "table": text, "study": study}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", help="a multirun directory (multirun/<date>/<time>)")
    p.add_argument("--sort", default="val_miou", help="val_miou (default) or test_miou")
    p.add_argument("--out", help="where to write summary.* (default: the sweep dir)")
    args = p.parse_args(argv)
    return summarize(args.sweep, args.sort, args.out)


if __name__ == "__main__":
    main()
