import hashlib
import os
from pathlib import Path

import hydra
import pytest
import torch
from conftest import ROOT, compose_cfg
from torch.utils.data import random_split

from fashionseg.data import scan_dataset, split_indices


def test_reference_split_sizes_and_determinism():
    train, val, test = split_indices(600, (0.5, 0.1, 0.4), seed=42)
    assert (len(train), len(val), len(test)) == (300, 60, 240)
    assert sorted(train + val + test) == list(range(600)), "subsets must partition the set"
    assert split_indices(600, (0.5, 0.1, 0.4), seed=42) == [train, val, test]
    assert split_indices(600, (0.5, 0.1, 0.4), seed=43)[2] != test


def test_a_few_photos_give_every_positive_fraction_a_photo():
    """8 photos at 0.5/0.1/0.4 round to 5/0/3: the smoke test of a first run would have no validation."""
    parts = split_indices(8, (0.5, 0.1, 0.4), seed=42)
    assert [len(p) for p in parts] == [4, 1, 3] and sorted(sum(parts, [])) == list(range(8))
    assert [len(p) for p in split_indices(8, (0.9, 0.1, 0.0), seed=42)] == [7, 1, 0]


def test_train_plus_val_split_keeps_the_reference_test_split():
    """data.split=[0.6,0,0.4] (experiment=fast_person_trainval) trains on the reference train + val photos."""
    train, val, test = split_indices(600, (0.5, 0.1, 0.4), seed=42)
    merged, empty, same_test = split_indices(600, (0.6, 0.0, 0.4), seed=42)
    assert merged == sorted(train + val) and empty == [] and same_test == test


def test_split_matches_global_manual_seed_semantics():
    """The reference study called torch.manual_seed(42) and then random_split on the global RNG."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(42)
        expected = [sorted(s.indices) for s in random_split(range(600), (0.5, 0.1, 0.4))]
    finally:
        torch.random.set_rng_state(state)
    assert split_indices(600, (0.5, 0.1, 0.4), seed=42) == expected


def test_split_leaves_global_rng_untouched():
    torch.manual_seed(0)
    a = torch.rand(1)
    torch.manual_seed(0)
    split_indices(600, (0.5, 0.1, 0.4), seed=42)
    assert torch.equal(torch.rand(1), a)


REAL = Path(os.environ.get("FASHIONSEG_DATA") or ROOT.parent / "shared" / "data" / "fashionista-csc420")


@pytest.mark.skipif(not (REAL / "images").is_dir(), reason=f"the Fashionista set is not at {REAL}")
def test_the_fashionista_config_draws_the_reference_split():
    """conf/data/fashionista.yaml (file patterns, fractions, seed) gives the same 300/60/240 photos as
    before data sets became config: the test ids are pinned by their digest."""
    dm = hydra.utils.instantiate(compose_cfg("train", [f"data.root={REAL}", "paths.output_dir=/tmp/x"]).data)
    samples = scan_dataset(REAL, dm.images_pattern, dm.labels_pattern)
    train, val, test = ([samples[i].id for i in part] for part in dm._split(samples))
    assert (len(train), len(val), len(test)) == (300, 60, 240)
    assert test[:5] == ["0003", "0004", "0008", "0010", "0018"]
    assert hashlib.sha256(",".join(test).encode()).hexdigest()[:16] == "9f8f00fca67f3d9d"
    assert hashlib.sha256(",".join(val).encode()).hexdigest()[:16] == "7896e14568ab874c"
