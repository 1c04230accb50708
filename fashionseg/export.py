"""ONNX export of a trained network (uint8 photo batch in, logits out, dynamic batch/height/width)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """The network as ONNX sees it: (B, 3, H, W) uint8 RGB -> (B, K, H, W) float logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)["out"]


def export_onnx(net: nn.Module, path: str | Path, size: Sequence[int], opset: int = 18) -> Path:
    """Write ``net`` to ``path`` as ONNX with dynamic batch, height and width (sides multiples of 32).

    ``size`` (H, W) is the example input's size; other sizes run as long as the network accepts them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = LogitsOnly(net).eval()
    example = torch.zeros(1, 3, *size, dtype=torch.uint8)
    batch, height, width = torch.export.Dim("batch", min=1, max=64), torch.export.Dim.AUTO, torch.export.Dim.AUTO
    with torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=opset, input_names=["image"], output_names=["logits"],
            dynamic_shapes={"image": {0: batch, 2: height, 3: width}}, external_data=False, verbose=False,
        )
    program.save(str(path))
    return path


class OnnxRunner:
    """ONNX Runtime behind the network interface of ``Predictor``: uint8 batch -> float logits tensor."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("ONNX Runtime is not installed: pip install -e '.[deploy]'.") from e
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.cpu().numpy().astype(np.uint8))
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def check_and_time(net: nn.Module, runner: OnnxRunner, images: list[np.ndarray], predictor_kwargs: dict) -> dict:
    """Max |logit difference| between PyTorch and ONNX Runtime on real photos, and ms per photo of each."""
    import time

    from fashionseg.inference import Predictor

    torch_pred = Predictor(net, **predictor_kwargs)
    onnx_pred = Predictor(runner, **predictor_kwargs)
    diff = 0.0
    for image in images:
        item = torch_pred.transform(image)
        batch = item["image"][None]
        diff = max(diff, float((torch_pred._logits(batch) - onnx_pred._logits(batch)).abs().max()))

    def ms(pred: Predictor) -> float:
        pred.label_maps([images[0]])  # warm-up
        start = time.perf_counter()
        for image in images:
            pred.label_maps([image])  # every head's label map (a joint network has two)
        return 1000 * (time.perf_counter() - start) / len(images)

    return {"max_abs_diff": diff, "torch_ms": ms(torch_pred), "onnxruntime_ms": ms(onnx_pred), "photos": len(images)}


def export(cfg) -> dict:
    """`python export.py ckpt_path=... format=onnx`: write the ONNX file, check it against PyTorch, time both."""
    import json

    from omegaconf import OmegaConf

    from fashionseg import ConfigError
    from fashionseg.checkpoint import load_checkpoint
    from fashionseg.data import primary_data_config
    from fashionseg.heads import all_class_names, task_heads
    from fashionseg.io import list_photos, read_photo

    if cfg.format != "onnx":
        raise ConfigError(f"format={cfg.format!r} is not supported; use format=onnx.")
    module = load_checkpoint(cfg.ckpt_path)
    train_cfg = OmegaConf.create(module.hparams.config)
    data = primary_data_config(train_cfg.data)
    size = list(data.image_size) if data.image_size is not None else [608, 416]
    out = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / f"{Path(cfg.ckpt_path).stem}.onnx"
    log.info("Exporting %s (%s, input %s) to %s", cfg.ckpt_path, train_cfg.model.name, size, out)
    export_onnx(module.net, out, size, opset=cfg.opset)
    photos = list_photos(cfg.check_photos)[: cfg.check_count] if cfg.get("check_photos") else []
    if not photos:
        raise ConfigError(f"No photos to check the export on in {cfg.check_photos}; set check_photos=<folder>.")
    images = [read_photo(p) for p in photos]
    heads = task_heads(train_cfg.task)
    kwargs = dict(class_names=all_class_names(heads), image_size=data.image_size,
                  size_multiple=data.get("size_multiple", 32), heads=heads)
    report = {"onnx": str(out), "input_hw": size, **check_and_time(module.net, OnnxRunner(out), images, kwargs)}
    print(f"ONNX written to {out}\n"
          f"max |logits(torch) - logits(onnxruntime)| on {report['photos']} photos: {report['max_abs_diff']:.2e}\n"
          f"ms per photo (600x400 in, label map out, batch 1): torch {report['torch_ms']:.1f}, "
          f"onnxruntime {report['onnxruntime_ms']:.1f}")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    if report["max_abs_diff"] > cfg.tolerance:
        raise RuntimeError(f"ONNX output differs from PyTorch by {report['max_abs_diff']:.2e} > {cfg.tolerance}.")
    return report
