"""Peak memory of one training epoch's data, in memory (data.format=memory) against streamed shards
(data.format=shards), as the set grows.

    python scripts/benchmark_data_memory.py [--sizes 600 20000] [--photo 300x200] [--data <reference set>]
                                            [--work <dir>] [--out outputs/benchmarks/data_memory.json]

Writes a synthetic set of max(--sizes) photos of --photo pixels (a person and a clothes map each, in the
reference set's layout) under --work, once; each size N reads its first N photos (data.limit=N). For each
size: the shards are written (scripts/prepare_data.py's code), then each format runs in a fresh process of
its own that sets the data up and draws every batch of one training epoch (augmentation and batching
included; no network, so that the figures are the data's alone). Its peak resident memory (ru_maxrss), the
set-up time and the epoch's photos per second are reported. With --data, the reference set's 600 photos
(600x400) are measured the same way. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
INPUT = "[192,128]"  # the network input the epoch's photos are fitted to (the cost per photo, not the memory)


def synthesise(root: Path, count: int, width: int, height: int) -> Path:
    """``count`` photos with person and clothes maps under ``root`` (kept: a later run reuses them)."""
    done = root / f".done-{count}-{width}x{height}"
    if done.is_file():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    for i in range(1, count + 1):
        cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, rng.uniform(0.2, 0.4) * height
        person = ((xx - cx) ** 2 / (0.4 * r) ** 2 + (yy - cy) ** 2 / r ** 2) < 1
        clothes = np.where(person, 1 + (yy * 6 // height), 0).astype(np.uint8)  # bands of the 6 classes
        photo = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, rng.integers(0, 255))], -1)
        photo[person] = rng.integers(0, 255, 3)
        Image.fromarray(photo.astype(np.uint8)).save(root / "images" / f"{i:05d}.jpg", quality=90)
        Image.fromarray(person.astype(np.uint8), "L").save(root / "labels" / f"{i:05d}_person.png")
        Image.fromarray(clothes, "L").save(root / "labels" / f"{i:05d}_clothes.png")
    done.touch()
    return root


def write_shards(root: Path, out: Path, count: int) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "scripts/prepare_data.py", "fashionista", "--src", str(root), "--out", str(out), "--shards",
           "--workers", str(min(4, os.cpu_count() or 1)), f"data.limit={count}"]
    print("  $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def one_epoch(root: str, fmt: str, shards: str, count: int) -> dict:
    """In this process: set the data up, draw one training epoch; figures of this process alone."""
    import hydra

    from fashionseg.core.config import compose_config

    cfg = compose_config("train", [f"data.root={root}", f"data.limit={count}", f"data.format={fmt}",
                                   f"data.shards={shards}", f"data.image_size={INPUT}", "task=fashion"])
    start = time.perf_counter()
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    setup_s = time.perf_counter() - start
    after_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, photos = time.perf_counter(), 0
    for batch in datamodule.train_dataloader():
        photos += len(batch["id"])
    epoch_s = time.perf_counter() - start
    return {"setup_s": round(setup_s, 1), "rss_after_setup_mb": round(after_setup),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "train_photos": photos, "epoch_s": round(epoch_s, 1), "photos_per_s": round(photos / epoch_s, 1)}


def measure(root: Path, fmt: str, shards: Path, count: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(root), fmt, str(shards), str(count)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{fmt} at {count} photos failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        root, fmt, shards, count = sys.argv[2:6]
        print(json.dumps(one_epoch(root, fmt, shards, int(count))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 20000], help="set sizes (synthetic photos)")
    parser.add_argument("--photo", default="300x200", help="synthetic photos' WxH")
    parser.add_argument("--data", help="the reference set's folder: also measure its 600 photos")
    parser.add_argument("--work", default="outputs/benchmarks/data_memory", help="synthetic set and shards")
    parser.add_argument("--out", default="outputs/benchmarks/data_memory.json")
    args = parser.parse_args(argv)
    width, height = map(int, args.photo.split("x"))
    work = Path(args.work).resolve()
    print(f"Synthesising {max(args.sizes)} photos of {width}x{height} under {work / 'synthetic'} (once)", flush=True)
    start = time.perf_counter()
    synthetic = synthesise(work / "synthetic", max(args.sizes), width, height)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    sets = [(f"synthetic {width}x{height}", synthetic, n) for n in args.sizes]
    if args.data:
        sets.insert(0, ("reference 600x400", Path(args.data).resolve(), 600))
    rows = []
    for name, root, count in sets:
        shards = work / f"shards-{name.split()[0]}-{count}"
        write_s = write_shards(root, shards, count)
        size_mb = sum(p.stat().st_size for p in (shards / "shards").rglob("*") if p.is_file()) / 2**20
        for fmt in ("memory", "shards"):
            row = {"set": name, "photos": count, "format": fmt, **measure(root, fmt, shards / "shards", count)}
            if fmt == "shards":
                row.update(shards_write_s=round(write_s, 1), shards_mb=round(size_mb, 1))
            rows.append(row)
            print(f"  {name}, {count} photos, {fmt}: peak {row['peak_rss_mb']} MB", flush=True)

    print("\n| set | photos | format | peak RSS (MB) | RSS after set-up (MB) | set-up (s) | epoch photos/s | "
          "shards written in (s) | shards (MB) |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['photos']} | {r['format']} | {r['peak_rss_mb']} | {r['rss_after_setup_mb']} | "
              f"{r['setup_s']} | {r['photos_per_s']} | {r.get('shards_write_s', '')} | {r.get('shards_mb', '')} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"input": INPUT, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(f"\nWritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
