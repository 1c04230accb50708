import torch
from torch.utils.data import random_split

from fashionseg.data import split_indices


def test_reference_split_sizes_and_determinism():
    train, val, test = split_indices(600, (0.5, 0.1, 0.4), seed=42)
    assert (len(train), len(val), len(test)) == (300, 60, 240)
    assert sorted(train + val + test) == list(range(600)), "subsets must partition the set"
    assert split_indices(600, (0.5, 0.1, 0.4), seed=42) == [train, val, test]
    assert split_indices(600, (0.5, 0.1, 0.4), seed=43)[2] != test


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
