"""ONNX export: dynamic height/width, same logits as PyTorch, usable behind Predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fashionseg.export import OnnxRunner, export_onnx
from fashionseg.inference import Predictor
from fashionseg.models.base import Normalize


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


@pytest.mark.slow
def test_export_cli_on_a_checkpoint(person_ckpt, data_root, tmp_path):
    from fashionseg.export import export
    from tests.conftest import compose_cfg

    cfg = compose_cfg("export", [f"ckpt_path={person_ckpt}", f"paths.output_dir={tmp_path}",
                                 f"check_photos={data_root / 'images'}", "check_count=2"])
    report = export(cfg)
    assert report["max_abs_diff"] < 1e-3 and (tmp_path / "person.onnx").exists()
