"""Convert a checkpoint that fashionseg refuses to load (it holds pickled objects) into one it loads safely.

    python scripts/convert_checkpoint.py --trust <old.ckpt> --out <new.ckpt>

fashionseg reads checkpoints with ``torch.load(weights_only=True)``: tensors and plain values only, so
that opening a file never runs code. A checkpoint that holds other objects (an OmegaConf config, numpy
values, a class instance) is refused. This script loads it the unsafe way, which RUNS whatever code the
file carries: do it only for a file you trust, and only once. It writes the same checkpoint with every
object turned into plain values (configs into dicts and lists, numpy into tensors or numbers, paths into
strings), checks that the result loads with ``weights_only=True``, and leaves the original untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fashionseg.core.errors import ConfigError
from fashionseg.inference.checkpoint import read_checkpoint

PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def plain(value, where: str = "checkpoint"):
    """``value`` with every container and scalar turned into what ``weights_only=True`` reads back."""
    if OmegaConf.is_config(value):
        return plain(OmegaConf.to_container(value, resolve=True), where)
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        converted = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return converted if isinstance(value, list) else tuple(converted)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, PLAIN):
        return value
    raise ConfigError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which has no plain "
                      "equivalent; this checkpoint cannot be converted.")


def convert(src: Path, out: Path) -> Path:
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the input file; write the converted checkpoint beside it.")
    ckpt = torch.load(src, map_location="cpu", weights_only=False)  # the unsafe load: --trust was given
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(plain(ckpt), out)
    read_checkpoint(out)  # loads with weights_only=True, or says why not
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", type=Path, help="the checkpoint to convert")
    parser.add_argument("--out", type=Path, required=True, help="where to write the converted checkpoint")
    parser.add_argument("--trust", action="store_true",
                        help="required: loading the input runs any code it carries; give it only for a file you trust")
    args = parser.parse_args(argv)
    if not args.trust:
        print(f"Loading {args.ckpt} to convert it runs any code it carries. If you trust where it comes from, run "
              "again with --trust.", file=sys.stderr)
        return 2
    try:
        convert(args.ckpt, args.out)
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 1
    print(f"Converted {args.ckpt} -> {args.out} (loads with weights_only=True).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
