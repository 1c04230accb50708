"""Refinements: shapes, dtypes and input checks; CRF edge recovery and agreement with pydensecrf2; superpixel voting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fashionseg.postprocess import DenseCRF, EdgeRegionVote, GuidedFilter, Identity, SmallRegionCleanup, SuperpixelVote
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


REFINEMENTS = [Identity(), SmallRegionCleanup(min_size=20), SuperpixelVote(),
               SuperpixelVote(method="slic", n_segments=50),
               SuperpixelVote(merge="rag"), SuperpixelVote(merge="kmeans", clusters=10),
               DenseCRF(backend="torch", compile=False), EdgeRegionVote(), EdgeRegionVote(detector="canny"),
               EdgeRegionVote(segments="slic", compactness=10, n_segments=50), GuidedFilter(),
               GuidedFilter(guide="gray", subsample=1)]


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
    crf = DenseCRF(backend="torch", bilateral_sxy=20, bilateral_srgb=20, compile=False)
    after = (crf(image, probs) == truth).mean()
    assert before < 0.85 and after > 0.99, (before, after)


def test_edges_restore_a_blurred_boundary_to_the_photos_sharp_edge():
    # A photo with a sharp colour edge at column 60 (and some texture); the network's probabilities put a
    # soft boundary 7 pixels to the right of it, as a blurred, shifted decoder output would.
    h, w, edge = 80, 120, 60
    rng = np.random.default_rng(0)
    image = np.zeros((h, w, 3), np.float64)
    image[:, :edge] = (180, 60, 50)
    image[:, edge:] = (40, 70, 190)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), np.uint8)
    truth[:, edge:] = 1
    x = np.arange(w)[None, :].repeat(h, 0)
    p1 = 1 / (1 + np.exp(-(x - (edge + 6.5)) / 3.0))  # 0.5 between columns 66 and 67, a 10-pixel wide ramp
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    before = (probs.argmax(0) != truth).sum(1)
    assert (before == 7).all()  # columns 60-66 of every row are wrong
    # This photo's noise makes edges of about 0.03, its colour edge about 0.3: merge below 0.1.
    for refine in (EdgeRegionVote(prob_weight=0.25, threshold=0.1), EdgeRegionVote(prob_weight=0, threshold=0.1),
                   EdgeRegionVote(detector="canny", prob_weight=0, threshold=0.1)):
        wrong = (refine(image, probs) != truth).sum(1)
        assert wrong.mean() < 0.5 and wrong.max() <= 3, (refine.detector, refine.prob_weight, wrong)  # was 7
    # It is the merging that restores it: the 600 unmerged watershed regions are small enough to lie
    # inside the blur, and vote as the network did; merged across weak edges, a handful of regions remain.
    unmerged = EdgeRegionVote(prob_weight=0.25, threshold=0)
    assert (unmerged(image, probs) != truth).sum(1).mean() > 5
    edges = unmerged.edge_map(image, probs)
    merged = EdgeRegionVote(prob_weight=0.25, threshold=0.1)
    assert unmerged.regions(image, edges).max() + 1 > 100 and merged.regions(image, edges).max() + 1 <= 6
    with pytest.raises(ValueError, match="detector must be sobel or canny"):
        EdgeRegionVote(detector="laplace")


def shifted_boundary_case(left: tuple, right: tuple, shift: float = 2.5):
    """A photo with a sharp colour edge at column 60; probabilities whose soft boundary lies ``shift`` pixels right of
    it (columns 60-62 wrong in every row, as a blurred, upsampled decoder output)."""
    h, w, edge = 80, 120, 60
    rng = np.random.default_rng(0)
    image = np.zeros((h, w, 3), np.float64)
    image[:, :edge], image[:, edge:] = left, right
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), np.uint8)
    truth[:, edge:] = 1
    p1 = 1 / (1 + np.exp(-(np.arange(w)[None, :].repeat(h, 0) - (edge + shift)) / 2.0))
    return image, np.stack([1 - p1, p1]).astype(np.float32), truth


def test_guided_filter_moves_a_soft_boundary_onto_the_photos_edge():
    image, probs, truth = shifted_boundary_case((40, 40, 40), (200, 200, 200))  # a light/dark edge
    assert ((probs.argmax(0) != truth).sum(1) == 3).all()
    for refine in (GuidedFilter(radius=8), GuidedFilter(radius=8, guide="gray"), GuidedFilter(radius=6, subsample=1)):
        wrong = (refine(image, probs) != truth).sum(1)
        assert wrong.mean() < 0.1 and wrong.max() <= 1, (refine.radius, refine.guide, wrong.mean())  # was 3
    # Red beside blue of about the same luminance: the colour guide sees the edge, the grey one does not.
    image, probs, truth = shifted_boundary_case((180, 60, 50), (40, 70, 190))
    assert (GuidedFilter(radius=8)(image, probs) != truth).sum(1).mean() < 0.1
    assert (GuidedFilter(radius=8, guide="gray")(image, probs) != truth).sum(1).mean() > 2.5
    # A window that does not reach the edge leaves a 3-pixel shift mostly in place.
    assert (GuidedFilter(radius=2)(image, probs) != truth).sum(1).mean() > 1.5


def test_guided_filter_leaves_probabilities_in_place_on_a_flat_photo():
    # On a flat photo the guided filter is a box blur of the probabilities: centred, it moves nothing.
    # The Fast Guided Filter's coarse window, 2 * radius // subsample + 1 pixels, is centred only when odd;
    # an even one (radius 3 at subsample 2) moved every boundary by two pixels.
    image = np.full((48, 96, 3), 128, np.uint8)
    probs = np.zeros((2, 48, 96), np.float32)
    probs[1, 12:36, 40:56] = 1.0
    probs[0] = 1.0 - probs[1]
    cols, rows = np.arange(96), np.arange(48)
    for radius, subsample in ((2, 1), (3, 1), (2, 2), (4, 2), (6, 2)):
        q = GuidedFilter(radius=radius, eps=1e-2, subsample=subsample).filtered(image[None], probs[None])[0, 1].numpy()
        centre = (q.sum(0) @ cols / q.sum(), q.sum(1) @ rows / q.sum())
        assert np.allclose(centre, (47.5, 23.5), atol=0.05), (radius, subsample, centre)
    for radius, subsample in ((3, 2), (5, 2), (5, 3)):
        with pytest.raises(ValueError, match=f"radius={radius} with subsample={subsample}"):
            GuidedFilter(radius=radius, subsample=subsample)


def test_guided_filter_of_two_classes_equals_filtering_both_and_batches_equal_one_by_one():
    from kornia.filters import guided_blur

    cases = [two_region_case(seed=s, noise=0.5) for s in range(3)]
    images, probs = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    refine = GuidedFilter(radius=4, eps=1e-2)
    guide = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    both = guided_blur(guide, torch.from_numpy(probs), 9, 1e-2, subsample=2).argmax(1).numpy()
    batch = refine.refine_batch(images, probs)
    assert batch.dtype == np.uint8 and (batch == both).mean() > 0.999
    assert (batch == np.stack([refine(i, p) for i, p in zip(images, probs)])).all()
    # More than two classes: every class map is filtered.
    k3 = np.concatenate([probs * 0.8, np.full_like(probs[:, :1], 0.2)], 1)
    assert (refine.refine_batch(images, k3) == batch).all()  # the constant class never wins
    for bad, match in ((dict(guide="lab"), "guide must be rgb or gray"), (dict(radius=0), "radius must be"),
                       (dict(radius=4, subsample=5), "subsample must be"), (dict(eps=0), "eps must be")):
        with pytest.raises(ValueError, match=match):
            GuidedFilter(**bad)


def test_lifted_guided_filter_puts_a_coarse_mask_on_the_photos_edge():
    """lift=True: probabilities at half the photo's resolution, their boundary two photo pixels off, are lifted onto
    the photo's edge (bilinear resizing keeps them off); photo-size probabilities are filtered as without lift."""
    h, w, edge = 120, 80, 41
    rng = np.random.default_rng(0)
    image = np.full((h, w, 3), 40.0)
    image[:, edge:] = 200
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), np.uint8)
    truth[:, edge:] = 1
    x = (np.arange(w // 2) + 0.5) * 2 - 0.5  # the coarse pixels' centres, in photo pixels
    p1 = np.repeat(1 / (1 + np.exp(-(x - (edge - 0.5 + 2)) / 3.0))[None], h // 2, 0)
    coarse = np.stack([1 - p1, p1]).astype(np.float32)
    resized = F.interpolate(torch.from_numpy(coarse)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    assert ((resized.argmax(0).numpy() != truth).sum(1) == 2).all()  # bilinear lifting keeps the shift
    refine = GuidedFilter(radius=8, eps=1e-3, guide="gray", subsample=1, lift=True)
    assert refine.lifts
    lifted = refine(image, coarse)
    assert lifted.shape == (h, w) and (lifted != truth).sum(1).mean() < 0.1
    plain = GuidedFilter(radius=8, eps=1e-3, guide="gray", subsample=1)
    assert (refine(image, resized.numpy()) == plain(image, resized.numpy())).all()
    assert (refine.refine_batch(image[None], coarse[None])[0] == lifted).all()
    with pytest.raises(ValueError, match="resize the probabilities to the photo's size"):
        plain(image, coarse)  # a refinement that does not lift refuses them
    with pytest.raises(ValueError, match="set guided.guide=gray"):
        GuidedFilter(guide="rgb", lift=True)


def test_refinements_that_lift_get_the_networks_resolution_in_predict_and_eval(person_ckpt, data_root, tmp_path,
                                                                               monkeypatch):
    """predict.py and eval.py hand a lifting refinement the network's probabilities unresized (where the network
    runs smaller than the photo)."""
    import fashionseg.postprocess.guided as guided
    from fashionseg.evaluation.evaluate import evaluate
    from fashionseg.serving.predict import predict
    from tests.conftest import compose_cfg, write_dataset

    seen = []
    lift_it = guided.guided_lift
    monkeypatch.setattr(guided, "guided_lift", lambda photo, probs, *args: seen.append(
        (photo.shape[:2], probs.shape[-2:])) or lift_it(photo, probs, *args))
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (192, 128, 3), dtype=np.uint8)).save(big / "a.png")
    lift = ["postprocess=guided", "postprocess.guided.lift=true", "postprocess.guided.guide=gray",
            "postprocess.guided.radius=4", "postprocess.guided.subsample=1"]
    summary = predict(compose_cfg("predict", [f"ckpt_path={person_ckpt}", f"input={big}", f"output={tmp_path / 'p'}",
                                              f"paths.output_dir={tmp_path / 'p'}", *lift]))
    assert len(summary["written"]) == 1 and seen == [((192, 128), (96, 64))]
    seen.clear()
    twice = write_dataset(tmp_path / "twice", 20, h=192, w=128)  # the checkpoint's photos (ids, split), twice the size
    overrides = [f"ckpt_path={person_ckpt}", f"data.root={twice}", "trainer.precision=32-true",
                 f"paths.output_dir={tmp_path / 'e'}", "postprocess=[none,guided]", *lift[1:]]
    result = evaluate(compose_cfg("eval", overrides))
    assert len(seen) == 8 and set(seen) == {((192, 128), (96, 64))}  # the 8 test photos
    assert 0 < result["refinements"]["guided"]["miou"] <= 1


def test_crf_batch_equals_one_by_one():
    cases = [two_region_case(seed=s) for s in range(3)]
    images, probs = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    crf = DenseCRF(backend="torch", compile=False)
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
    ours = DenseCRF(backend="torch", compile=False)(image, probs)
    theirs = DenseCRF(backend="pydensecrf2")(image, probs)
    assert (ours == theirs).mean() >= 0.98


def textured_case(h: int = 90, w: int = 61, k: int = 4, seed: int = 2):
    """A photo of a few flat colour regions with noise, and probabilities that know them only noisily."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    truth[h // 3:, : w // 2], truth[h // 3:, w // 2:], truth[2 * h // 3:, w // 4: 3 * w // 4] = 1, 2, 3
    colours = np.array([(30, 40, 50), (200, 60, 40), (40, 180, 90), (230, 230, 210)])
    image = np.clip(colours[truth] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    logits = 1.5 * np.eye(k)[truth].transpose(2, 0, 1) + rng.normal(0, 1.2, (k, h, w))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return image, probs.astype(np.float32), truth


def test_downsampled_crf_runs_the_mean_field_at_half_size_and_agrees_with_the_full_one():
    """downsample=2: the mean field on 2x2 block means (odd sizes too), lifted back; nearly the same labels as
    the exact CRF, the same cleaning of the noise, and labels = the arg-max of its marginals."""
    image, probs, truth = textured_case()
    params = dict(bilateral_sxy=20, bilateral_srgb=20, compile=False)
    full, half = DenseCRF(backend="torch", **params), DenseCRF(backend="torch", downsample=2, **params)
    seen = []
    small = half.torch_crf().scaled(2)
    small_mean_field = small.mean_field
    small.mean_field = lambda images, p, **kw: seen.append(tuple(p.shape[-2:])) or small_mean_field(images, p, **kw)
    half.torch_crf()._small = small
    exact, fast = full(image, probs), half(image, probs)
    assert seen == [(45, 31)]
    assert fast.shape == truth.shape and fast.dtype == np.uint8
    assert (fast == exact).mean() > 0.97
    assert (probs.argmax(0) == truth).mean() < 0.9 and (fast == truth).mean() > 0.98
    q = half.marginals(image, probs)
    assert q.shape == probs.shape and np.allclose(q.sum(0), 1, atol=1e-5) and (q.argmax(0) == fast).all()


@pytest.mark.parametrize("bad, match", [(dict(downsample=0), "downsample must be an integer >= 1"),
                                        (dict(downsample=1.5), "downsample must be an integer >= 1"),
                                        (dict(downsample=2, backend="pydensecrf2"), "needs backend=torch")])
def test_bad_crf_downsample_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        DenseCRF(**bad)


def test_crf_compiled_equals_eager_and_labels_are_argmax_of_marginals(monkeypatch):
    """The default torch.compile path computes what the eager code does (one compile, ~30 s on 2 CPUs)."""
    from torch._dynamo.utils import counters

    from fashionseg.models import permutohedral

    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)  # conftest turns compiling off for the other tests
    monkeypatch.setattr(permutohedral, "_COMPILED", {})  # no wrapper made while compiling was off
    counters.clear()
    cases = [two_region_case(seed=s, noise=0.5) for s in range(2)]
    images, probs = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    eager, compiled = DenseCRF(backend="torch", compile=False), DenseCRF(backend="torch", compile=True)
    q_eager = eager.torch_crf().marginals(torch.as_tensor(images), torch.as_tensor(probs))
    q_compiled = compiled.torch_crf().marginals(torch.as_tensor(images), torch.as_tensor(probs))
    assert torch.allclose(q_eager, q_compiled, atol=1e-5)
    labels = compiled.refine_batch(images, probs)
    assert labels.dtype == np.uint8 and (labels == q_eager.argmax(1).numpy()).mean() > 0.999
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"


def test_lattice_filter_in_any_pixel_order():
    """Values in the lattice's own (simplex) order or in any other order: the same filtered values per pixel."""
    from fashionseg.models.permutohedral import PermutohedralLattice

    g = torch.Generator().manual_seed(0)
    features = torch.rand(2, 300, 3, generator=g) * 4
    values = torch.rand(600, 5, generator=g)
    lattice = PermutohedralLattice(features, compile=False)
    own = torch.empty_like(values)
    own[lattice.order] = lattice.filter(values[lattice.order])
    shuffled = torch.randperm(600, generator=g)
    other = torch.empty_like(values)
    other[shuffled] = lattice.reordered(shuffled).filter(values[shuffled])
    assert torch.allclose(own, other, atol=1e-5)
    # And it approximates the exact Gaussian sum over all pixels of the image.
    exact = torch.exp(-torch.cdist(features[0], features[0]) ** 2 / 2) @ values[:300]
    approx = own[:300]
    assert torch.corrcoef(torch.stack([exact.flatten(), approx.flatten()]))[0, 1] > 0.95


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

    from fashionseg.evaluation.evaluate import evaluate
    from fashionseg.training.train import train
    from tests.conftest import compose_cfg

    _, results = train(train_cfg("callbacks=refine", "task=person"))
    report = results["refinements"]
    assert set(report) == {"none", "cleanup", "crf", "superpixel", "edges", "guided", "network_ms_per_image"}
    # The unrefined row is the test score itself, Boundary IoU included.
    assert abs(report["none"]["miou"] - results["test"]["miou"]) < 1e-9
    assert report["none"]["boundary_iou"] == pytest.approx(results["test"]["boundary_iou"], abs=1e-9)
    for method in ("cleanup", "crf", "superpixel", "edges", "guided"):
        cm = np.array(report[method]["confusion"], dtype=np.float64)
        assert cm.sum() == sum(sum(row) for row in results["test_confusion"])  # every test pixel, once
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        assert report[method]["miou"] == pytest.approx(np.mean(np.diag(cm)[union > 0] / union[union > 0]))
        assert report[method]["ms_per_image"] > 0
    ckpt = results["best_checkpoint"]
    out = tmp_path / "eval"
    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", f"data.root={data_root}", f"paths.output_dir={out}",
                               "trainer.precision=32-true", "postprocess=[none,crf,edges]",
                               "postprocess.crf.iterations=2"])
    res = evaluate(cfg)
    assert set(res["refinements"]) == {"none", "crf", "edges", "network_ms_per_image"}
    assert "| crf |" in (out / "refinements.md").read_text() and "| edges |" in (out / "refinements.md").read_text()
    written = json.loads((out / "eval_results.json").read_text())
    assert written["refinements"]["none"]["miou"] == res["scores"]["miou"]
    assert written["refinements"]["none"]["boundary_iou"] == pytest.approx(written["scores"]["boundary_iou"])
    assert 0 <= written["refinements"]["edges"]["boundary_iou"] <= 1
    assert {"boundary_iou", "boundary_iou_person"} <= set(written["scores"])
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="nope"):
        compose_cfg("eval", [f"ckpt_path={ckpt}", "postprocess=[nope]"])


def test_the_refinements_report_builds_its_refinements_when_the_run_starts():
    """A bad refinement parameter stops a run when its callbacks are made, not after the fit at test end; the
    refinements are those of the configs read then."""
    from omegaconf.errors import ConfigKeyError

    from fashionseg.evaluation.callbacks import RefinementReport

    with pytest.raises(ConfigKeyError, match="postprocess.guided.nope"):
        RefinementReport(methods=["none", "guided"], params={"guided": {"nope": 1}})
    report = RefinementReport(methods=["none", "guided"], params={"guided": {"radius": 4}})
    assert list(report.refinements) == ["none", "guided"] and report.refinements["guided"].radius == 4


def test_tune_refinements_picks_the_best_validation_setting(person_ckpt, data_root, tmp_path):
    import json

    from tests.conftest import load_script

    tune_refinements = load_script("tune_refinements")

    out = tmp_path / "tune.json"
    result = tune_refinements.main(["--ckpt", str(person_ckpt), "--data", str(data_root), "--refinements", "none",
                                    "cleanup", "--grid", "cleanup.min_size=1,100000", "--out", str(out)])
    rows = [r for r in result["rows"] if r["refinement"] == "cleanup"]
    assert len(rows) == 2 and result["split"] == "val"
    best = max(rows, key=lambda r: r["val_miou"])
    assert result["best"]["cleanup"] == best["params"]
    assert f"postprocess.cleanup.min_size={best['params']['min_size']}" in result["test_command"]
    assert json.loads(out.read_text())["best"] == result["best"]
    with pytest.raises(SystemExit, match="expected"):
        tune_refinements.main(["--ckpt", str(person_ckpt), "--grid", "cleanup=3"])


def test_tune_refinements_grid_reads_exponent_numbers_as_numbers():
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; the grid must still give the refinement a number."""
    from tests.conftest import load_script

    grids = load_script("tune_refinements").parse_grid(["guided.eps=1e-4,0.001,2E-3", "superpixel.merge=null,rag"])
    assert grids["guided"]["eps"] == [1e-4, 0.001, 2e-3]
    assert all(isinstance(v, float) for v in grids["guided"]["eps"])
    assert grids["superpixel"]["merge"] == [None, "rag"]
