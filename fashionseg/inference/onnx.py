"""ONNX Runtime behind the network interfaces: an exported file (serving/export.py writes it) runs where a
network would, in ``Predictor`` and in a LightningModule's evaluation. Running a file is inference;
writing one is serving's job, so the Predictor never imports the exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class OnnxRunner:
    """ONNX Runtime behind the network interface of ``Predictor``: photo batch -> float logits tensor.

    Takes uint8 photos, or float photos in [0, 1] (a TTA scale's resized batch, ``network_logits``), which
    are rounded to uint8, the exported network's input. ONNX Runtime's threads do not spin-wait after a run:
    spinning threads would compete for the cores with the PyTorch work that follows (resize, arg-max,
    refinements).
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("ONNX Runtime is not installed: pip install -e '.[deploy]'.") from e
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file {path} not found; write one with `python export.py ckpt_path=...`.")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():
            images = (images.clamp(0, 1) * 255).round()
        array = np.ascontiguousarray(images.cpu().numpy().astype(np.uint8))
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class OnnxNetwork(nn.Module):
    """An ONNX file in place of a LightningModule's network (``{"out": logits}``), so that eval.py scores
    exactly what is deployed: ``python eval.py ckpt_path=<ckpt> onnx=<its .onnx or .int8.onnx>``."""

    def __init__(self, runner: OnnxRunner):
        super().__init__()
        self.runner = runner

    def forward(self, images: torch.Tensor) -> dict:
        return {"out": self.runner(images).to(images.device), "aux": []}
