"""Convert a public fashion-parsing set, once, into the layout training reads (fashionseg/data/public_sets.py).

    python scripts/prepare_data.py <lip|cihp|atr|modanet|deepfashion2> --src <downloaded dir> --out <dir>

Checks the download's layout (a missing folder or file, or a malformed annotation, is named), then writes
<out>/images/<id>.jpg, <out>/labels/<id>.png (the set's own class ids) and <out>/classes.txt. Train or score
with the set's config, which maps its ids onto the tasks: `python train.py data=lip data.root=<out> task=fashion`.
Where to download each set: docs/cluster.md.
"""

from __future__ import annotations

import argparse
import sys

from fashionseg.core.errors import DataError
from fashionseg.data.public_sets import SETS, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("set", choices=sorted(SETS), help="which public set")
    parser.add_argument("--src", required=True, help="the folder the official download unpacks to")
    parser.add_argument("--out", required=True, help="where to write images/, labels/ and classes.txt")
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.set, args.src, args.out)
    except DataError as e:
        print(f"DataError: {e}", file=sys.stderr)
        return 1
    print(f"{summary['photos']} photos of {args.set} written to {summary['out']}; train on them with "
          f"`python train.py data={args.set} data.root={summary['out']} task=fashion` (or task=person).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
