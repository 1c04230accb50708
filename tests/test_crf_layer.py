"""The trainable CRF layer (CRF-as-RNN, fashionseg/models/crf_layer.py): exact gradients through the lattice, the
hand-tuned CRF at initialisation, learning on a toy problem whose answer is known, and a run with the layer
through train, eval, predict and export."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fashionseg.core.errors import ConfigError
from fashionseg.models.crf_layer import CRFLayerNetwork, MeanFieldCRF, lattice_filter
from fashionseg.models.permutohedral import PermutohedralLattice, TorchDenseCRF
from tests.conftest import compose_cfg, make_checkpoint, small_overrides


def normalised_lattice(features: torch.Tensor, weight: float = 1.0) -> PermutohedralLattice:
    lattice = PermutohedralLattice(features, compile=False, adjoint=True)
    norm = lattice.filter(torch.ones(lattice.size, 1)).add_(1e-20).rsqrt_()
    lattice.scale(norm, norm * weight)
    return lattice


def test_gradcheck_of_the_lattice_filter_in_its_own_and_in_another_pixel_order():
    """The backward pass is the adjoint filter, exact: gradcheck in float64, in the lattice's order, after
    reordering, and for a batch of two images sharing one lattice."""
    g = torch.Generator().manual_seed(0)
    lattice = normalised_lattice(torch.rand(2, 40, 3, generator=g) * 3, weight=2.0)
    values = torch.rand(80, 3, dtype=torch.float64, generator=g, requires_grad=True)
    for lat in (lattice, lattice.reordered(torch.randperm(80, generator=g))):
        lat64 = lat.to(torch.float64)
        assert torch.autograd.gradcheck(lambda v, lat64=lat64: lattice_filter(v, lat64), (values,))
    # The adjoint identity itself: <filter(u), v> = <u, adjoint(v)>.
    lat64 = lattice.to(torch.float64)
    u, v = torch.rand(80, 2, dtype=torch.float64, generator=g), torch.rand(80, 2, dtype=torch.float64, generator=g)
    assert torch.allclose((lat64.filter(u) * v).sum(), (u * lat64.adjoint(v)).sum(), rtol=1e-10)


def toy_photo(h: int = 12, w: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two colour regions (left/right) with noise: rgb (1, 3, H, W) float in 0-255, and its labels (H, W)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, w // 2:] = 1
    rgb = torch.where(labels.bool(), 200.0, 40.0).expand(1, 3, h, w) + torch.randn(1, 3, h, w, generator=g) * 10
    return rgb, labels


def test_gradcheck_of_one_mean_field_step_in_the_logits_the_compatibility_and_the_kernel_weights():
    rgb, _ = toy_photo(6, 5)
    crf = MeanFieldCRF(3, iterations=1, gaussian_sxy=2.0, bilateral_sxy=4.0, bilateral_srgb=30.0,
                       gaussian_weight=1.5, bilateral_weight=2.0).double()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, *rgb.shape[-2:], dtype=torch.float64, generator=g, requires_grad=True)
    compat = (crf.compatibility.detach() + 0.1 * torch.rand(3, 3, dtype=torch.float64, generator=g)).requires_grad_()
    weights = crf.kernel_weights.detach().clone().requires_grad_()

    def step(logits, compat, weights):
        return functional_call(crf, {"compatibility": compat, "kernel_weights": weights}, (rgb.double(), logits))

    assert torch.autograd.gradcheck(step, (logits, compat, weights))


def test_one_compatibility_per_kernel_starts_as_the_shared_one_and_has_exact_gradients(tmp_path):
    """per_kernel_compatibility: (2, K, K), both Potts at the start (the same marginals as one shared matrix, in
    training and at inference); gradcheck of a step in both matrices; the monitor draws one heat map each."""
    from fashionseg.training.callbacks.crf_layer import CRFLayerMonitor

    rgb, _ = toy_photo(6, 5)
    kwargs = dict(iterations=2, gaussian_sxy=2.0, bilateral_sxy=4.0, bilateral_srgb=30.0, gaussian_weight=1.5,
                  bilateral_weight=2.0)
    shared, each = MeanFieldCRF(3, **kwargs), MeanFieldCRF(3, per_kernel_compatibility=True, **kwargs)
    assert each.compatibility.shape == (2, 3, 3)
    logits = torch.randn(1, 3, *rgb.shape[-2:], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(shared(rgb, logits), each(rgb, logits), atol=1e-5)
    assert torch.allclose(shared(rgb, logits.requires_grad_()), each(rgb, logits), atol=1e-5)
    each = each.double()
    each.iterations = 1
    g = torch.Generator().manual_seed(6)
    compat = (each.compatibility.detach() + 0.1 * torch.rand(2, 3, 3, dtype=torch.float64, generator=g))
    x = torch.randn(1, 3, *rgb.shape[-2:], dtype=torch.float64, generator=g, requires_grad=True)

    def step(logits, compat):
        return functional_call(each, {"compatibility": compat, "kernel_weights": each.kernel_weights}, (rgb.double(),
                                                                                                        logits))

    assert torch.autograd.gradcheck(step, (x, compat.requires_grad_()))
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(step(x, compat), torch.zeros(1, 6, 5).long()),
                                  compat)
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0 and not torch.allclose(grad[0], grad[1])
    # the monitor: one heat map per kernel
    module = types.SimpleNamespace(net=CRFLayerNetwork(torch.nn.Identity(), each), class_names=["a", "b", "c"],
                                   log_dict=lambda *a, **k: None)
    trainer = types.SimpleNamespace(sanity_checking=False, is_global_zero=True, default_root_dir=str(tmp_path),
                                    current_epoch=0, loggers=[], global_step=0)
    CRFLayerMonitor().on_validation_epoch_end(trainer, module)
    assert {p.name for p in (tmp_path / "crf_layer").iterdir()} == {
        "compatibility_bilateral.png", "compatibility_spatial.png", "learned.json"}
    assert np.asarray(json.loads((tmp_path / "crf_layer" / "learned.json").read_text())["compatibility"]).shape == (
        2, 3, 3)


def test_kernel_weight_gradients_match_finite_differences_over_five_iterations():
    rgb, labels = toy_photo()
    crf = MeanFieldCRF(2, iterations=5, gaussian_sxy=2.0, bilateral_sxy=4.0, bilateral_srgb=30.0).double()
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, *labels.shape, dtype=torch.float64, generator=g)

    def loss(weights):
        out = functional_call(crf, {"compatibility": crf.compatibility, "kernel_weights": weights}, (rgb, logits))
        return torch.nn.functional.cross_entropy(out, labels[None])

    weights = torch.tensor([4.0, 2.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(weights), weights)
    eps = 1e-6
    for i in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[i] = eps
        numeric = (loss(weights.detach() + step) - loss(weights.detach() - step)) / (2 * eps)
        assert abs(float(grad[i]) - float(numeric)) < 1e-6 * max(1.0, abs(float(numeric.detach())))
    assert grad.abs().min() > 0  # both weights act on the result


def test_at_initialisation_the_layer_is_the_hand_tuned_crf():
    """Potts compatibility and the hand-tuned weights: the marginals of the inference CRF (TorchDenseCRF)."""
    g = torch.Generator().manual_seed(3)
    rgb = (torch.rand(2, 3, 30, 20, generator=g) * 255).to(torch.uint8)
    rgb[:, :, :15] = 220
    logits = torch.randn(2, 4, 30, 20, generator=g) * 2
    layer = MeanFieldCRF(4, 5, gaussian_sxy=3, gaussian_weight=1, bilateral_sxy=40, bilateral_srgb=5,
                         bilateral_weight=3)
    reference = TorchDenseCRF(5, 3, 1, 40, 5, 3, compile=False)
    with torch.no_grad():
        q = torch.softmax(layer(rgb, logits), 1)
    expected = reference.marginals(rgb.permute(0, 2, 3, 1).contiguous(), torch.softmax(logits, 1))
    assert torch.allclose(q, expected, atol=1e-5)
    # Training's path (autograd through the adjoint filter) computes what inference's fused path does.
    assert torch.allclose(torch.softmax(layer(rgb, logits.requires_grad_()), 1), q, atol=1e-5)


def test_the_layers_downsampled_inference_is_the_hand_tuned_crfs():
    """crf_layer.downsample=2 runs, without gradient, the hand-tuned CRF's downsampled code path (the same
    marginals at initialisation); with gradient (training) the layer stays at full resolution."""
    g = torch.Generator().manual_seed(4)
    rgb = (torch.rand(2, 3, 41, 30, generator=g) * 255).to(torch.uint8)
    rgb[:, :, :20] = 200
    logits = torch.randn(2, 4, 41, 30, generator=g) * 2
    kwargs = dict(gaussian_sxy=3, gaussian_weight=1, bilateral_sxy=40, bilateral_srgb=5, bilateral_weight=3)
    layer = MeanFieldCRF(4, 5, downsample=2, **kwargs)
    reference = TorchDenseCRF(5, 3, 1, 40, 5, 3, compile=False, downsample=2)
    with torch.no_grad():
        q = torch.softmax(layer(rgb, logits), 1)
    expected = reference.marginals(rgb.permute(0, 2, 3, 1).contiguous(), torch.softmax(logits, 1))
    assert q.shape == logits.shape and torch.allclose(q, expected, atol=1e-5)
    full = MeanFieldCRF(4, 5, **kwargs)
    trained = torch.softmax(layer(rgb, logits.requires_grad_()), 1)
    assert torch.allclose(trained, torch.softmax(full(rgb, logits), 1), atol=1e-6)
    with pytest.raises(ValueError, match="crf_layer.downsample must be an integer >= 1"):
        MeanFieldCRF(4, downsample=0)


def test_learning_keeps_small_parts_that_potts_smoothing_erases():
    """A toy problem with a known answer: single-pixel class-1 dots (buttons) on a class-0 region of one colour,
    with a weak but right unary. Potts smoothing at the starting weights erases the dots; a few Adam steps on
    the cross-entropy must learn that class 1 among class 0 costs (about) what class 0 does, and then keep the
    dots. The mean field's softmax ignores a shift shared by all classes, so what is learned is a column's
    differences: compatibility[1, 0] - compatibility[0, 0], 1 under Potts."""
    torch.manual_seed(0)
    h, w = 24, 24
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[3::6, 3::6] = 1
    rgb = torch.full((1, 3, h, w), 120.0)
    logits = torch.where(labels.bool(), 0.6, -0.6)[None, None].repeat(1, 2, 1, 1)
    logits[:, 0] *= -1  # class 0 wins by 1.2 on background, class 1 by 1.2 on the dots
    crf = MeanFieldCRF(2, iterations=5, gaussian_sxy=3, gaussian_weight=3, bilateral_sxy=10, bilateral_srgb=13,
                       bilateral_weight=5)
    potts = crf.compatibility.detach().clone()

    def dots_kept():
        with torch.no_grad():
            return float((crf(rgb, logits).argmax(1)[0][labels == 1] == 1).float().mean())

    before = dots_kept()
    optimiser = torch.optim.Adam(crf.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(crf(rgb, logits), labels[None], weight=torch.tensor([1.0, 10.0]))
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert before == 0.0, "the toy should start with the dots erased"
    assert dots_kept() == 1.0 and losses[-1] < 0.5 * losses[0]
    learned = crf.compatibility.detach()
    assert learned[1, 0] - learned[0, 0] < 0.5 * (potts[1, 0] - potts[0, 0])
    assert not torch.equal(crf.kernel_weights.detach(), torch.tensor([5.0, 3.0]))


def test_the_learned_unary_starts_as_the_plain_layer_has_exact_gradients_and_corrects_a_biased_network(tmp_path):
    """learn_unary: x = a * log p + b - pairwise. At a = 1, b = 0 the layer is the plain one (full and half
    resolution); gradcheck in a and b; a toy network whose scores favour class 0 by a constant on every pixel (a
    class prior it got wrong) misses all of class 1, and a few steps must learn b[1] - b[0] past that constant."""
    from fashionseg.training.callbacks.crf_layer import CRFLayerMonitor

    g = torch.Generator().manual_seed(7)
    rgb = (torch.rand(1, 3, 20, 16, generator=g) * 255).to(torch.uint8)
    logits = torch.randn(1, 3, 20, 16, generator=g) * 2
    kwargs = dict(gaussian_sxy=3, gaussian_weight=1, bilateral_sxy=20, bilateral_srgb=13, bilateral_weight=3)
    for downsample in (1, 2):
        plain = MeanFieldCRF(3, 3, downsample=downsample, **kwargs)
        learned = MeanFieldCRF(3, 3, downsample=downsample, learn_unary=True, **kwargs)
        with torch.no_grad():
            assert torch.allclose(plain(rgb, logits), learned(rgb, logits), atol=1e-5)
    assert "unary_bias" not in plain.state_dict() and set(learned.state_dict()) >= {"unary_weight", "unary_bias"}
    # a learned unary away from its start, with no pairwise term: the half-resolution inference gives a * log p + b
    # at full resolution (the unary is not only in the small mean field)
    with torch.no_grad():
        learned.unary_weight.fill_(0.5)
        learned.unary_bias.copy_(torch.tensor([0.0, 3.0, -1.0]))
        learned.kernel_weights.zero_()
        expected = 0.5 * torch.log_softmax(logits, 1).clamp(min=math.log(1e-5)) + torch.tensor([0.0, 3.0, -1.0]).view(
            1, 3, 1, 1)
        assert learned.downsample == 2 and torch.allclose(learned(rgb, logits), expected, atol=1e-4)
        learned.downsample = 1
        assert torch.allclose(learned(rgb, logits), expected, atol=1e-4)
    crf = MeanFieldCRF(3, 1, learn_unary=True, **kwargs).double()
    params = {name: p.detach().clone() for name, p in crf.named_parameters()}
    a = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64, requires_grad=True)

    def step(a, b):
        return functional_call(crf, {**params, "unary_weight": a, "unary_bias": b}, (rgb.double()[..., :6, :5],
                                                                                       logits.double()[..., :6, :5]))

    assert torch.autograd.gradcheck(step, (a, b))
    # the biased toy: two colour regions, the network right on the left (class 0) and 1 too low for class 1
    photo, labels = toy_photo(12, 10)
    net_logits = 3.0 * torch.nn.functional.one_hot(labels, 2).permute(2, 0, 1)[None].float()
    net_logits[:, 0] += 4.0
    crf = MeanFieldCRF(2, iterations=3, gaussian_sxy=2.0, bilateral_sxy=4.0, bilateral_srgb=30.0, learn_unary=True,
                       learn_compatibility=False, learn_weights=False)  # only the unary can mend it

    def right():
        with torch.no_grad():
            return float((crf(photo, net_logits).argmax(1)[0] == labels).float().mean())

    before = right()
    optimiser = torch.optim.Adam(crf.parameters(), lr=0.1)
    for _ in range(40):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(crf(photo, net_logits), labels[None]).backward()
        optimiser.step()
    assert before == 0.5 and right() == 1.0
    bias = crf.unary_bias.detach()
    assert bias[1] - bias[0] > 0.5  # class 1 raised against class 0
    # the monitor logs a and b as scalars, and writes them to learned.json
    logged = {}
    module = types.SimpleNamespace(net=CRFLayerNetwork(torch.nn.Identity(), crf), class_names=["a", "b"],
                                   log_dict=lambda values, **k: logged.update(values))
    trainer = types.SimpleNamespace(sanity_checking=False, is_global_zero=True, default_root_dir=str(tmp_path),
                                    current_epoch=0, loggers=[], global_step=0)
    CRFLayerMonitor().on_validation_epoch_end(trainer, module)
    assert set(logged) >= {"crf/unary_weight", "crf/unary_bias_a", "crf/unary_bias_b"}
    saved = json.loads((tmp_path / "crf_layer" / "learned.json").read_text())
    assert saved["unary_bias"] == pytest.approx(bias.tolist()) and saved["unary_weight"] == pytest.approx(
        crf.unary_weight.item())


def test_frozen_network_gets_no_gradient_and_stays_in_eval_mode():
    from fashionseg.models import deeplabv3plus

    net = deeplabv3plus(3, encoder_weights=None)
    layer = CRFLayerNetwork(net, MeanFieldCRF(3, iterations=2), freeze_network=True).train()
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    out = layer(torch.rand(2, 3, 64, 64))
    out["out"].sum().backward()
    assert layer.crf.compatibility.grad is not None and layer.crf.kernel_weights.grad is not None
    assert set(out) >= {"out", "unary", "aux"} and out["out"].shape == out["unary"].shape == (2, 3, 64, 64)


@pytest.fixture(scope="module")
def crf_run(data_root, tmp_path_factory):
    """A tiny network's checkpoint, then the layer's stage 1 on it (one epoch, with a learned unary): the checkpoint
    and the run folder."""
    from fashionseg.training.train import train

    base = tmp_path_factory.mktemp("crf_layer")
    ckpt = make_checkpoint(base / "net" / "fashion.ckpt", data_root, "fashion")
    common = ["model.net.encoder_weights=null", "task=fashion", "trainer.max_epochs=1",
              "callbacks.prediction_images=null"]
    train(compose_cfg("train", [*small_overrides(data_root, base / "crf"), *common, "crf_layer=frozen",
                                f"crf_layer.network={ckpt}", "crf_layer.iterations=2", "crf_layer.learn_unary=true"]))
    return ckpt, base / "crf"


def test_stage_one_learns_the_layer_alone_and_the_checkpoint_round_trips_through_eval_predict_and_export(
        crf_run, data_root, tmp_path):
    from fashionseg.evaluation.evaluate import evaluate
    from fashionseg.inference.checkpoint import load_network, read_checkpoint
    from fashionseg.serving.export import export
    from fashionseg.serving.predict import predict

    network_ckpt, run = crf_run
    ckpt = next((run / "checkpoints").glob("epoch*.ckpt"))
    state = read_checkpoint(ckpt)["state_dict"]
    before = read_checkpoint(network_ckpt)["state_dict"]
    assert not torch.equal(state["net.crf.compatibility"], 1 - torch.eye(7)), "the compatibility did not move"
    inner = {k.removeprefix("net.net."): v for k, v in state.items() if k.startswith("net.net.")}
    assert inner and all(torch.equal(v, before[f"net.{k}"]) for k, v in inner.items()), "stage 1 moved the network"
    learned = json.loads((run / "crf_layer" / "learned.json").read_text())
    assert np.allclose(learned["compatibility"], state["net.crf.compatibility"].numpy(), atol=1e-6)
    assert (run / "crf_layer" / "compatibility.png").stat().st_size > 1000
    tested = json.loads((run / "crf_layer" / "tested.json").read_text())  # the parameters the test scored
    assert tested["checkpoint"] == str(ckpt) and tested["unary_bias"] == pytest.approx(
        state["net.crf.unary_bias"].tolist())
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "crf/bilateral_weight" in metrics and "crf/unary_weight" in metrics
    assert not torch.equal(state["net.crf.unary_bias"], torch.zeros(7)), "the unary's biases did not move"

    loaded = load_network(ckpt).net
    assert isinstance(loaded, CRFLayerNetwork) and torch.equal(loaded.crf.unary_bias.detach(),
                                                                state["net.crf.unary_bias"])
    result = evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", f"data.root={data_root}",
                                           f"paths.output_dir={tmp_path / 'eval'}"]))
    assert 0.0 <= result["scores"]["miou"] <= 1.0
    out = tmp_path / "masks"
    summary = predict(compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={data_root / 'images'}",
                                              f"output={out}", f"paths.output_dir={out}"]))
    assert summary["written"] and not summary["failed"]
    with pytest.raises(ConfigError, match="package_onnx=false"):
        export(compose_cfg("export", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path}",
                                     f"package={tmp_path / 'pkg'}", "package_onnx=true"]))


def test_export_says_it_covers_the_network_under_the_layer(crf_run, data_root, tmp_path, capsys):
    from fashionseg.serving.export import export

    _, run = crf_run
    ckpt = next((run / "checkpoints").glob("epoch*.ckpt"))
    report = export(compose_cfg("export", [f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path}",
                                           f"check_photos={data_root / 'images'}", "check_count=1"]))
    assert "covers the network under it only" in capsys.readouterr().out
    assert report["max_abs_diff"] < 1e-3


def test_bad_layer_settings_are_named(data_root, tmp_path):
    from fashionseg.training.module import SegmentationModule

    cfg = compose_cfg("train", [*small_overrides(data_root, tmp_path), "model.net.encoder_weights=null",
                                "crf_layer=frozen", "crf_layer.network=null", "crf_layer.bilateral_srgb=0"])
    with pytest.raises(ConfigError, match="bilateral_srgb must be positive"):
        SegmentationModule.from_config(cfg)
    cfg = compose_cfg("train", [*small_overrides(data_root, tmp_path), "model.net.encoder_weights=null",
                                "crf_layer=frozen", f"crf_layer.network={tmp_path / 'missing.ckpt'}"])
    with pytest.raises(ConfigError, match="missing.ckpt does not exist"):
        SegmentationModule.from_config(cfg)


@pytest.mark.slow
def test_crf_benchmark_has_the_layers_rows_beside_pydensecrf2(crf_run, data_root, tmp_path):
    """scripts/benchmark_crf.py: the layer at its start is the same model as the other backends (it agrees
    with pydensecrf2 as ours does); with --layer, the learned layer of a run."""
    pytest.importorskip("pydensecrf")
    from tests.conftest import load_script

    network_ckpt, run = crf_run
    bench = load_script("benchmark_crf").main
    common = ["--data", str(data_root), "--images", "2", "--batch", "2", "--repeats", "1"]
    result = bench(["--ckpt", str(network_ckpt), *common, "--out", str(tmp_path / "a.json")])
    rows = {r["backend"]: r for r in result["rows"]}
    start, ours = rows["trainable layer (start)"], rows["ours, PyTorch (cpu)"]
    assert abs(start["agreement"] - ours["agreement"]) < 0.002 and start["ms_per_image"] > 0
    # The downsampled rows (--downsample 2 by default): ours and the layer at its start share the code path.
    fast, fast_layer = rows["ours, PyTorch (cpu, downsample 2)"], rows["trainable layer (start, downsample 2)"]
    assert 0.9 < fast["agreement"] <= 1 and abs(fast_layer["agreement"] - fast["agreement"]) < 0.002
    learned = next((run / "checkpoints").glob("epoch*.ckpt"))
    result = bench(["--ckpt", str(network_ckpt), *common, "--no-eager", "--layer", str(learned),
                    "--out", str(tmp_path / "b.json")])
    assert "trainable layer (learned)" in {r["backend"] for r in result["rows"]}
    with pytest.raises(SystemExit, match="has no trainable CRF layer"):
        bench(["--ckpt", str(network_ckpt), *common, "--layer", str(network_ckpt), "--out", str(tmp_path / "c.json")])


def test_held_out_split_gives_overrides_that_train_on_half_the_validation_photos(data_root, tmp_path, capsys):
    """scripts/held_out_split.py: Hydra accepts its overrides; the new run learns on the first half of the
    network's validation photos, chooses on the rest (--swap: the other way round), and is tested on the network's
    own test photos."""
    from tests.conftest import load_script

    script = load_script("held_out_split").main
    split = {"train": ["0001", "0002"], "val": ["0003", "0004", "0005", "0006"], "test": ["0007", "0008"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    result = script([str(tmp_path / "split.json")])
    assert capsys.readouterr().out.startswith("'~data.split' '+data.split={train:[")
    cfg = compose_cfg("train", [*small_overrides(data_root, tmp_path), *result])
    assert dict(cfg.data.split) == {"train": ["0003", "0004"], "val": ["0005", "0006"], "test": ["0007", "0008"]}
    swapped = compose_cfg("train", [*small_overrides(data_root, tmp_path),
                                    *script([str(tmp_path / "split.json"), "--swap"])])
    assert dict(swapped.data.split) == {"train": ["0005", "0006"], "val": ["0003", "0004"], "test": ["0007", "0008"]}
    with pytest.raises(SystemExit, match="leaves one part empty"):
        script([str(tmp_path / "split.json"), "--train-fraction", "0.1"])
    with pytest.raises(SystemExit, match="does not exist"):
        script([str(tmp_path / "missing.json")])
