"""Print the Hydra overrides that train a refinement on photos the network has not seen: a run's validation photos
split in two (the first part to learn on, the rest to choose on), its test photos unchanged.

    python scripts/held_out_split.py outputs/<run>/split.json
    python train.py experiment=best_fashion crf_layer=frozen crf_layer.network=<run's checkpoint> \\
        $(python scripts/held_out_split.py outputs/<run>/split.json)

A network's probabilities on its own training photos are more confident and more often right than on new
photos, so a refinement that learns from them (the trainable CRF layer's stage 1) learns to trust them too
much. On the run's validation photos they are those of unseen photos. ``--train-fraction`` of them (in the
split's order) become the training split of the new run, the rest its validation split; the test split is
the network's, so test scores compare with the network's own. ``--swap`` learns on the rest and chooses on
the first part: the other fold of a two-fold cross-validation over the validation photos.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path


def held_out_split(split: dict, train_fraction: float = 0.5, swap: bool = False) -> dict:
    """{train, val, test} id lists: the first ``train_fraction`` of ``split["val"]``, the rest, ``split["test"]``
    (``swap``: the rest, then the first part)."""
    val = list(split["val"])
    cut = round(train_fraction * len(val))
    if not 0 < cut < len(val):
        raise SystemExit(f"--train-fraction {train_fraction} of {len(val)} validation photos leaves one part "
                         "empty: give a fraction that keeps at least one photo on each side.")
    first, rest = val[:cut], val[cut:]
    if swap:
        first, rest = rest, first
    return {"train": first, "val": rest, "test": list(split["test"])}


def overrides(split: dict) -> list[str]:
    """``data.split`` replaced by fixed id lists (ids quoted: they stay strings)."""
    lists = ",".join(f"{name}:[{','.join(repr(str(i)) for i in split[name])}]" for name in ("train", "val", "test"))
    return ["~data.split", f"+data.split={{{lists}}}"]


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split", help="a run's split.json (its train, val and test ids)")
    p.add_argument("--train-fraction", type=float, default=0.5, help="the share of validation photos to learn on")
    p.add_argument("--swap", action="store_true",
                   help="learn on the rest and choose on the first part (the other fold of a two-fold split)")
    args = p.parse_args(argv)
    path = Path(args.split)
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give the split.json in a train.py run folder.")
    split = json.loads(path.read_text())
    if not {"val", "test"} <= set(split):
        raise SystemExit(f"{path} has no val and test id lists (keys: {sorted(split)}): give a run's split.json.")
    result = overrides(held_out_split(split, args.train_fraction, args.swap))
    print(" ".join(shlex.quote(o) for o in result))
    return result


if __name__ == "__main__":
    main()
