"""ONNX export: dynamic height/width, same logits as PyTorch, usable behind Predictor; int8 quantization
calibrated on training photos; eval.py and predict.py running the exported file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fashionseg.inference import OnnxRunner, Predictor
from fashionseg.models.base import Normalize
from fashionseg.serving.export import calibration_batches, export_onnx, quantize_onnx


class TinyNet(nn.Module):
    def __init__(self, k: int = 3):
        super().__init__()
        self.normalize = Normalize()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, k, 1), nn.Upsample(scale_factor=2, mode="bilinear"))

    def forward(self, x):
        return {"out": self.body(self.normalize(x)), "aux": []}


def test_onnx_matches_torch_at_other_sizes(tmp_path):
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = export_onnx(net, tmp_path / "tiny.onnx", [64, 32])
    runner = OnnxRunner(path)
    for shape in [(1, 3, 64, 32), (2, 3, 96, 64)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        with torch.no_grad():
            expected = net(x)["out"]
        got = runner(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4
    photo = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    names = ["a", "b", "c"]
    ours = Predictor(net, names, [64, 32])([photo])[0]
    theirs = Predictor(runner, names, [64, 32])([photo])[0]
    assert ours.shape == (70, 50) and (ours == theirs).mean() > 0.99


def test_onnx_runner_takes_float_photos_as_the_network_does(tmp_path):
    """Multi-scale TTA resizes the uint8 batch to float photos in [0, 1]; the runner must read them as such
    (it used to cast them to uint8 as they were: every pixel 0 or 1)."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    runner = OnnxRunner(export_onnx(net, tmp_path / "tiny.onnx", [64, 32]))
    x = torch.randint(0, 256, (1, 3, 64, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert (runner(x.float() / 255) - net(x)["out"]).abs().max() < 1e-4
    photo = np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    kwargs = dict(class_names=["a", "b", "c"], image_size=[64, 32], tta_scales=(1.0, 1.5))
    ours, theirs = Predictor(net, **kwargs).scores([photo])[0], Predictor(runner, **kwargs).scores([photo])[0]
    # The resized photo is rounded to uint8 levels for the exported network: a small difference, not noise.
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


def test_a_channels_last_network_exports_with_a_dynamic_batch(tmp_path):
    """A checkpoint trained with channels_last=true loads in that memory order; its export used to fail
    (torch.export specialised the batch size)."""
    torch.manual_seed(0)
    net = TinyNet().eval().to(memory_format=torch.channels_last)
    runner = OnnxRunner(export_onnx(net, tmp_path / "tiny.onnx", [64, 32]))
    x = torch.randint(0, 256, (3, 3, 64, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert (runner(x) - net(x)["out"]).abs().max() < 1e-4
    assert next(net.parameters()).is_contiguous(memory_format=torch.channels_last)  # the network is left as it was


def test_missing_onnx_file_is_named():
    with pytest.raises(FileNotFoundError, match="nope.onnx.*export.py"):
        OnnxRunner("/nonexistent/nope.onnx")


def test_int8_quantization_runs_integer_kernels_close_to_the_float_network(tmp_path):
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = export_onnx(net, tmp_path / "tiny.onnx", [64, 32])
    calibration = [torch.randint(0, 256, (1, 3, 64, 32), dtype=torch.uint8) for _ in range(4)]
    int8 = quantize_onnx(path, tmp_path / "tiny.int8.onnx", calibration)  # QDQ: the default
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # ONNX Runtime fuses each DequantizeLinear -> Conv -> QuantizeLinear into an integer convolution.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path.parent / "tiny.int8.optimized.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    fused = {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}
    assert "QLinearConv" in fused and "Conv" not in fused
    qoperator = quantize_onnx(path, tmp_path.parent / "tiny.qop.onnx", calibration, quant_format="qoperator")
    ops = {node.op_type for node in onnx.load(str(qoperator)).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    x = torch.randint(0, 256, (2, 3, 64, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = net(x)["out"]
    got = OnnxRunner(int8)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().mean() < 0.05 * expected.abs().max()  # 8-bit steps, not a different network
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.8
    with pytest.raises(ValueError, match="No calibration photos"):
        quantize_onnx(path, tmp_path / "none.onnx", [])
    assert list(tmp_path.iterdir()) == [path, int8] or set(tmp_path.iterdir()) == {path, int8}


def test_calibration_photos_come_from_the_checkpoints_training_split(person_ckpt, data_root):
    from fashionseg.data import checkpoint_datamodule
    from fashionseg.training.module import load_checkpoint

    module = load_checkpoint(person_ckpt)
    batches = calibration_batches(module.hparams.config, str(data_root), 100)
    datamodule = checkpoint_datamodule(module.hparams.config, str(data_root))
    train, test = (datamodule.datasets[s] for s in ("train", "test"))
    assert len(batches) == len(train) == 10
    assert all(b.dtype == torch.uint8 and b.shape == (1, 3, 96, 64) for b in batches)
    test.transform = datamodule.eval_transform
    test_images = [test[i]["image"] for i in range(len(test))]
    assert not any(torch.equal(b[0], t) for b in batches for t in test_images)
    assert len(calibration_batches(module.hparams.config, str(data_root), 3)) == 3


@pytest.mark.slow
def test_export_cli_on_a_checkpoint(person_ckpt, data_root, tmp_path):
    from fashionseg.serving.export import export
    from tests.conftest import compose_cfg

    cfg = compose_cfg("export", [f"ckpt_path={person_ckpt}", f"paths.output_dir={tmp_path}",
                                 f"check_photos={data_root / 'images'}", "check_count=2"])
    report = export(cfg)
    assert report["max_abs_diff"] < 1e-3 and (tmp_path / "person.onnx").exists()
    assert report["label_agreement"] > 0.999 and "int8" not in report


@pytest.mark.slow
class SamePaddingNet(nn.Module):
    """TensorFlow's 'same' padding computed from the input's size (timm's Conv2dSame, as in the tf_efficientnet
    encoders): the TorchScript exporter writes that arithmetic as float operators on the input's shape."""

    def __init__(self, k: int = 3):
        super().__init__()
        from timm.layers import Conv2dSame

        self.normalize = Normalize()
        self.body = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  Conv2dSame(8, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, k, 1),
                                  nn.Upsample(scale_factor=4, mode="bilinear"))

    def forward(self, x):
        return {"out": self.body(self.normalize(x)), "aux": []}


def test_int8_leaves_the_shape_arithmetic_of_same_padding_in_float(tmp_path):
    """Quantized, the pad sizes computed from the input's shape were rounded to 8-bit levels and clipped to the
    calibration's range: at other sizes the feature maps came out shifted or of the wrong size (a DeepLabv3+
    EfficientNet-Lite0 lost two points of mIoU; an FPN one failed in ONNX Runtime: 'Attempting to broadcast an
    axis by a dimension other than 1')."""
    torch.manual_seed(0)
    net = SamePaddingNet().eval()
    path = export_onnx(net, tmp_path / "same.onnx", [64, 32], static_padding=False)  # sizes of any side
    calibration = [torch.randint(0, 256, (1, 3, 64, 32), dtype=torch.uint8) for _ in range(4)]
    int8 = quantize_onnx(path, tmp_path / "same.int8.onnx", calibration)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(int8)))
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in (*model.graph.value_info, *model.graph.input)}
    quantized = [node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert quantized and all(ranks.get(name, 4) >= 3 for name in quantized)  # images only, no sizes
    for shape in [(1, 3, 64, 32), (1, 3, 65, 33), (1, 3, 96, 64)]:  # 65 x 33: pads outside the calibration's
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        with torch.no_grad():
            expected = net(x)["out"]
        got = OnnxRunner(int8)(x)
        assert got.shape == expected.shape
        assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.9


def optimized_ops(path, tmp_path) -> list[str]:
    """The operators of the graph that ONNX Runtime runs for an ONNX file (its basic optimizations applied)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_same_padding_is_folded_into_the_convolutions(tmp_path):
    """TensorFlow's 'same' padding computed from the input's size left a Pad before every strided convolution,
    which ONNX Runtime cannot fold into it (in int8 also a dequantize and a quantize around each; a third of
    an int8 DeepLabv3+ EfficientNet-Lite0's time at 320x224). Exported with constant pads, the network gives
    the same logits at every size of multiples of 32, and ONNX Runtime runs no Pad, in float or int8."""
    from fashionseg.serving.export import StaticSameConv2d

    torch.manual_seed(0)
    net = SamePaddingNet().eval()
    path = export_onnx(net, tmp_path / "same.onnx", [64, 32])
    assert not any(isinstance(m, StaticSameConv2d) for m in net.modules())  # the network itself is left alone
    for shape in [(1, 3, 64, 32), (2, 3, 96, 64), (1, 3, 160, 128)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        with torch.no_grad():
            expected = net(x)["out"]
        assert torch.allclose(OnnxRunner(path)(x), expected, atol=1e-4)
    calibration = [torch.randint(0, 256, (1, 3, 64, 32), dtype=torch.uint8) for _ in range(4)]
    int8 = quantize_onnx(path, tmp_path / "same.int8.onnx", calibration)
    for file in (path, int8):
        ops = optimized_ops(file, tmp_path)
        assert "Conv" in ops or "QLinearConv" in ops
        assert "Pad" not in ops, f"{file.name}: {ops}"


def test_int8_export_then_eval_and_predict_run_the_onnx_files(person_ckpt, data_root, tmp_path):
    """export.py int8=true writes both files; eval.py onnx=<file> scores what ONNX Runtime runs (the float
    file as the checkpoint does), and predict.py onnx=<file> labels photos with it."""
    from fashionseg.evaluation.evaluate import evaluate
    from fashionseg.serving.export import export
    from fashionseg.serving.predict import predict
    from tests.conftest import compose_cfg

    cfg = compose_cfg("export", [f"ckpt_path={person_ckpt}", f"paths.output_dir={tmp_path}",
                                 f"check_photos={data_root / 'images'}", "check_count=2", "int8=true",
                                 f"calibration_root={data_root}", "calibration_count=4"])
    report = export(cfg)
    int8 = tmp_path / "person.int8.onnx"
    assert report["int8"]["onnx"] == str(int8) and int8.exists() and report["int8"]["calibration_photos"] == 4
    assert 0.5 < report["int8"]["label_agreement"] <= 1.0

    def scores(*overrides):
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        return evaluate(compose_cfg("eval", [f"ckpt_path={person_ckpt}", f"data.root={data_root}",
                                             f"paths.output_dir={out}", *overrides]))

    # The network in float32, as the ONNX file runs it: an untrained network's logits are near ties, which bf16
    # autocast (eval.py's default precision) breaks otherwise than float32 does.
    network = scores("trainer.precision=32-true")
    onnx_float, onnx_int8 = scores(f"onnx={tmp_path / 'person.onnx'}"), scores(f"onnx={int8}")
    assert onnx_float["onnx"] == str(tmp_path / "person.onnx") and network["onnx"] is None
    assert abs(onnx_float["scores"]["miou"] - network["scores"]["miou"]) < 1e-3
    assert abs(onnx_int8["scores"]["miou"] - network["scores"]["miou"]) < 0.2
    out = tmp_path / "predicted"
    summary = predict(compose_cfg("predict", [f"ckpt_path={person_ckpt}", f"input={data_root / 'images'}",
                                              f"output={out}", f"paths.output_dir={out}", f"onnx={int8}"]))
    assert summary["written"] and not summary["failed"]
