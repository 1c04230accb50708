"""Convert a public fashion-parsing set, once, into the layout training reads (fashionseg/data/public_sets.py), and
optionally write it as LitData shards for streaming (fashionseg/data/shards.py).

    python scripts/prepare_data.py <lip|cihp|atr|modanet|deepfashion2> --src <downloaded dir> --out <dir> [--shards]
    python scripts/prepare_data.py fashionista --src <the reference set> --out <dir> --shards

Checks the download's layout (a missing folder or file, or a malformed annotation, is named), then writes
<out>/images/<id>.jpg, <out>/labels/<id>.png (the set's own class ids) and <out>/classes.txt. Train or score
with the set's config, which maps its ids onto the tasks: `python train.py data=lip data.root=<out> task=fashion`.
With --shards it also writes <out>/shards/{train,val,test} and <out>/shards/manifest.json, split as the set's
data config says (data.split, data.seed: give overrides after the options, e.g. data.seed=1); train from them with
`data.format=shards`. The reference set needs no conversion: `fashionista` writes only its shards.
Where to download each set: docs/cluster.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra

from fashionseg.core.config import compose_config
from fashionseg.core.errors import FashionsegError
from fashionseg.data.public_sets import SETS, prepare


def write_set_shards(name: str, root: Path, out: Path, overrides: list[str], workers: int = 1) -> dict:
    """Shards of the set ``name`` (its data config, ``data.root=root``) in ``out``: one LitData output per split."""
    from fashionseg.data.shards import write_shards

    cfg = compose_config("train", [f"data={name}", f"data.root={root}", *overrides])
    datamodule = hydra.utils.instantiate(cfg.data)
    samples, parts = datamodule.samples()
    fixed = isinstance(datamodule.split, dict)
    how = {"seed": datamodule.seed, "fractions": None if fixed else datamodule.split, "root": str(root)}
    return write_shards(samples, dict(zip(("train", "val", "test"), parts)), out, how, num_workers=workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("set", choices=[*sorted(SETS), "fashionista"], help="which set")
    parser.add_argument("--src", required=True, help="the folder the official download unpacks to (fashionista: the "
                        "set's folder, with images/ and labels/)")
    parser.add_argument("--out", required=True, help="where to write images/, labels/ and classes.txt (and shards/)")
    parser.add_argument("--shards", action="store_true", help="also write LitData shards to <out>/shards, for "
                        "data.format=shards")
    parser.add_argument("--workers", type=int, default=1, help="processes writing the shards")
    parser.epilog = ("Data config overrides for the shards' split may follow, e.g. data.seed=1 "
                     "'data.split=[0.8,0.1,0.1]'.")
    args, overrides = parser.parse_known_args(argv)
    if unknown := [a for a in overrides if a.startswith("-") or "=" not in a]:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = overrides
    out = Path(args.out)
    if args.set == "fashionista" and not args.shards:
        parser.error("the reference set needs no conversion: give --shards to write its shards")
    try:
        root = Path(args.src)
        if args.set != "fashionista":
            summary = prepare(args.set, args.src, out)
            print(f"{summary['photos']} photos of {args.set} written to {summary['out']}; train on them with "
                  f"`python train.py data={args.set} data.root={summary['out']} task=fashion` (or task=person).")
            root = out
        if args.shards:
            manifest = write_set_shards(args.set, root.resolve(), out / "shards", args.overrides, args.workers)
            sizes = "/".join(str(len(manifest["ids"][k])) for k in ("train", "val", "test"))
            data = "" if args.set == "fashionista" else f"data={args.set} "
            print(f"Shards of {sizes} train/val/test photos written to {out / 'shards'}; train from them with "
                  f"`python train.py {data}data.root={root} data.format=shards data.shards={out / 'shards'}`.")
    except FashionsegError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
