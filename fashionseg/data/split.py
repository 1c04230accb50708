"""The seeded train/val/test split of the reference study."""

import warnings
from collections.abc import Sequence

import torch
from torch.utils.data import random_split

from fashionseg.core.errors import ConfigError


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Split ``range(n)`` exactly as ``torch.manual_seed(seed); random_split(ds, fractions)``.

    The reference study seeded the global generator with 42 and called
    ``random_split(ds, (0.5, 0.1, 0.4))`` on the 600 images in sorted order; a
    private generator seeded the same way draws the same permutation, without
    touching the global RNG state.

    A positive fraction that rounds to no photo (8 photos split 0.5/0.1/0.4: 5/0/3) gets one photo from the
    largest subset instead (4/1/3), as long as there are enough photos: a smoke test on a few photos still
    validates. Splits whose every subset rounds to at least one photo, as the reference 600, are untouched.

    Returns:
        One sorted list of indices per fraction.
    """
    if n <= 0:
        raise ConfigError("Cannot split an empty data set: no images were found.")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split must be three non-negative fractions (train, val, test) summing to 1, "
            f"got {list(fractions)}; e.g. data.split=[0.5,0.1,0.4]."
        )
    generator = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():  # an empty subset is asked for (e.g. no validation split): no warning
        warnings.filterwarnings("ignore", "Length of split at index", UserWarning)
        subsets = random_split(range(n), list(fractions), generator=generator)
    parts = [sorted(s.indices) for s in subsets]
    if n >= sum(f > 0 for f in fractions):
        for empty in [i for i, f in enumerate(fractions) if f > 0 and not parts[i]]:
            largest = max(range(len(parts)), key=lambda i: len(parts[i]))
            parts[empty] = [parts[largest].pop()]
    return parts
