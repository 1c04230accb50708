"""Refinements: shapes, dtypes and input checks; CRF edge recovery and agreement with pydensecrf2; superpixel voting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashionseg.postprocess import DenseCRF, Identity, SmallRegionCleanup, SuperpixelVote
from fashionseg.postprocess.superpixel import vote


def two_region_case(h: int = 48, w: int = 64, noise: float = 0.35, seed: int = 0):
    """A photo split into a dark left and a bright right half; class probabilities that know it only noisily."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (40, 60, 50)
    image[:, w // 2:] = (210, 190, 170)
    truth = np.zeros((h, w), np.uint8)
    truth[:, w // 2:] = 1
    p1 = np.clip(np.where(truth == 1, 0.7, 0.3) + rng.normal(0, noise, (h, w)), 0.02, 0.98)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    return image, probs, truth


REFINEMENTS = [Identity(), SmallRegionCleanup(min_size=20), SuperpixelVote(), SuperpixelVote(method="slic", n_segments=50),
               SuperpixelVote(merge="rag"), SuperpixelVote(merge="kmeans", clusters=10), DenseCRF(backend="torch")]


@pytest.mark.parametrize("refine", REFINEMENTS, ids=lambda r: f"{r.name}-{getattr(r, 'merge', '')}")
def test_shape_dtype_and_bad_inputs(refine):
    image, probs, _ = two_region_case()
    label = refine(image, probs)
    assert label.shape == image.shape[:2] and label.dtype == np.uint8 and label.max() <= 1
    assert refine(image, torch.from_numpy(probs)).shape == image.shape[:2]
    with pytest.raises(ValueError, match="resize the probabilities"):
        refine(image, probs[:, :-1])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        refine(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        refine(image, probs[0])


def test_crf_recovers_a_sharp_edge_from_noise():
    image, probs, truth = two_region_case(noise=0.35)
    before = (probs.argmax(0) == truth).mean()
    after = (DenseCRF(backend="torch", bilateral_sxy=20, bilateral_srgb=20)(image, probs) == truth).mean()
    assert before < 0.85 and after > 0.99, (before, after)


def test_crf_batch_equals_one_by_one():
    cases = [two_region_case(seed=s) for s in range(3)]
    images, probs = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    crf = DenseCRF(backend="torch")
    batch = crf.refine_batch(images, probs)
    single = np.stack([crf(i, p) for i, p in zip(images, probs)])
    assert (batch == single).mean() > 0.999


def test_crf_agrees_with_pydensecrf2():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install -e '.[refine]')")
    rng = np.random.default_rng(1)
    h, w, k = 60, 40, 4
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[:, 20:] = image[:, 20:] // 4  # structure for the bilateral kernel
    probs = rng.dirichlet(np.ones(k), size=(h, w)).transpose(2, 0, 1).astype(np.float32)
    ours = DenseCRF(backend="torch")(image, probs)
    theirs = DenseCRF(backend="pydensecrf2")(image, probs)
    assert (ours == theirs).mean() >= 0.98


def test_superpixel_vote_hand_made():
    segments = np.array([[0, 0, 1, 1],
                         [0, 0, 1, 1],
                         [2, 2, 2, 2]])
    probs = np.zeros((3, 3, 4), np.float32)
    probs[0] = 1.0
    probs[:, 0, 0] = [0.1, 0.9, 0.0]  # region 0: one pixel says class 1 strongly, three say 0 -> class 0
    probs[:, 0, 2] = [0.0, 0.0, 1.0]  # region 1: class 2 sums 2.6, class 0 sums 1.4 -> class 2
    probs[:, 0, 3] = [0.0, 0.0, 1.0]
    probs[:, 1, 2] = [0.4, 0.0, 0.6]
    probs[:, 2, :] = [[0.2] * 4, [0.7] * 4, [0.1] * 4]  # region 2: class 1 everywhere
    label = vote(segments, probs)
    assert label.tolist() == [[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 1, 1]]


def test_cleanup_refills_small_regions():
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 1
    label[1, 1] = 2            # a speck of class 2 in the background
    label[9:11, 9:11] = 0      # a small hole in class 1
    probs = np.eye(3, dtype=np.float32)[label].transpose(2, 0, 1)
    out = SmallRegionCleanup(min_size=5)(np.zeros((20, 20, 3), np.uint8), probs)
    assert out[1, 1] == 0 and (out[9:11, 9:11] == 1).all() and (out[5:15, 5:15] == 1).all()
    with pytest.raises(ValueError, match="one per class"):
        SmallRegionCleanup(min_size=[1, 2])(np.zeros((20, 20, 3), np.uint8), probs)


def test_eval_and_test_end_callback_report_refinements_side_by_side(train_cfg, tmp_path, data_root):
    import json

    from fashionseg.evaluate import evaluate
    from fashionseg.train import train
    from tests.conftest import compose_cfg

    _, results = train(train_cfg("callbacks=refine", "task=person"))
    report = results["refinements"]
    assert set(report) == {"none", "cleanup", "crf", "superpixel", "network_ms_per_image"}
    # The unrefined row is the test score itself.
    assert abs(report["none"]["miou"] - results["test"]["miou"]) < 1e-9
    for method in ("cleanup", "crf", "superpixel"):
        assert 0 <= report[method]["miou"] <= 1 and report[method]["ms_per_image"] > 0
    ckpt = results["best_checkpoint"]
    out = tmp_path / "eval"
    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", f"data.root={data_root}", f"paths.output_dir={out}",
                               "trainer.precision=32-true", "postprocess=[none,crf]", "postprocess.crf.iterations=2"])
    res = evaluate(cfg)
    assert set(res["refinements"]) == {"none", "crf", "network_ms_per_image"}
    assert "| crf |" in (out / "refinements.md").read_text()
    assert json.loads((out / "eval_results.json").read_text())["refinements"]["none"]["miou"] == res["scores"]["miou"]
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="nope"):
        compose_cfg("eval", [f"ckpt_path={ckpt}", "postprocess=[nope]"])
