"""ONNX export of a trained network (uint8 photo batch in, logits out, dynamic batch/height/width), its
int8 quantization (ONNX Runtime, calibrated on training photos), and ONNX Runtime behind our interfaces."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from fashionseg.core.errors import ConfigError
from fashionseg.core.heads import all_class_names
from fashionseg.core.io import list_photos, read_photo
from fashionseg.data import checkpoint_datamodule, primary_data_config
from fashionseg.inference.checkpoint import TrainedNetwork, load_network
from fashionseg.inference.onnx import OnnxRunner
from fashionseg.inference.package import ONNX, ONNX_INT8
from fashionseg.inference.predictor import Predictor
from fashionseg.models.crf_layer import CRFLayerNetwork
from fashionseg.serving.package import inference_options, push_to_hub, write_package

log = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """The network as ONNX sees it: (B, 3, H, W) uint8 RGB -> (B, K, H, W) float logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)["out"]


EXPORTERS = ("torchscript", "dynamo")


class StaticSameConv2d(nn.Conv2d):
    """timm's ``Conv2dSame`` (TensorFlow's 'same' padding, in the tf_efficientnet encoders) with constant pad
    sizes. It computes them from the input's size on every call; for a side divisible by the stride they do
    not depend on the side: ``(k - 1) * dilation + 1 - stride`` in all, the smaller half before. Every side an
    exported network runs at is a multiple of 32 (the Predictor resizes or pads to one), so exported with
    constant pads the network computes the same, and ONNX Runtime folds each pad into its convolution (its
    PadFusion) instead of padding the feature map apart (in int8: dequantized, padded, quantized again)."""

    @classmethod
    def of(cls, conv: nn.Conv2d) -> StaticSameConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups,
                  conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
        new.load_state_dict(conv.state_dict())
        total = [max((k - 1) * d + 1 - s, 0) for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation)]
        new.pads = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)  # F.pad's order
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def static_same_padding(net: nn.Module) -> int:
    """Replace every timm ``Conv2dSame`` of ``net`` (in place) by a ``StaticSameConv2d``; returns how many."""
    from timm.layers import Conv2dSame

    found = [(parent, name, child) for parent in net.modules() for name, child in parent.named_children()
             if isinstance(child, Conv2dSame)]
    for parent, name, child in found:
        setattr(parent, name, StaticSameConv2d.of(child))
    return len(found)


def drop_empty_inputs(path: Path) -> None:
    """Drop the trailing empty inputs (omitted optional inputs, ``''``) of the ONNX file's nodes, which the
    spec reads as absent: ONNX Runtime's PadFusion leaves alone a ``Pad`` whose ``constant_value`` input is
    written as ``''`` (the TorchScript exporter's ``F.pad``) instead of omitted."""
    import onnx

    model = onnx.load(str(path))
    changed = False
    for node in model.graph.node:
        while node.input and not node.input[-1]:
            node.input.pop()
            changed = True
    if changed:
        onnx.save(model, str(path))


def export_onnx(net: nn.Module, path: str | Path, size: Sequence[int], opset: int = 18,
                exporter: str = "torchscript", static_padding: bool = True) -> Path:
    """Write ``net`` to ``path`` as ONNX with dynamic batch, height and width (sides multiples of 32).

    ``size`` (H, W) is the example input's size; other sizes run as long as the network accepts them.
    ``exporter``: ``torchscript`` (``torch.onnx.export(dynamo=False)``, which traces the network: about a
    second) or ``dynamo`` (``torch.export``, which runs the network symbolically: a minute and more on a
    CPU for the default network; scripts/benchmark_export.py times both). export.py checks either file
    against PyTorch on real photos. ``static_padding``: TensorFlow 'same' padding with constant pad sizes
    (``StaticSameConv2d``: sides must be multiples of 32, as the Predictor feeds them); ``False`` keeps the
    size arithmetic of timm's ``Conv2dSame`` in the graph, for sides of any size.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter={exporter!r}: choose one of {', '.join(EXPORTERS)}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A network kept in channels-last order (channels_last=true) would make torch.export specialise the
    # batch size; the ONNX graph does not depend on the memory order, so a contiguous copy is exported.
    model = LogitsOnly(copy.deepcopy(net).to(memory_format=torch.contiguous_format)).eval()
    if static_padding:
        static_same_padding(model)
    example = torch.zeros(1, 3, *size, dtype=torch.uint8)
    names = dict(input_names=["image"], output_names=["logits"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, **names,
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                            "logits": {0: "batch", 2: "height", 3: "width"}})
        else:
            batch, height, width = (torch.export.Dim("batch", min=1, max=64), torch.export.Dim.AUTO,
                                    torch.export.Dim.AUTO)
            torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, **names,
                dynamic_shapes={"image": {0: batch, 2: height, 3: width}}, external_data=False, verbose=False,
            ).save(str(path))
    drop_empty_inputs(path)
    return path


INT8_FORMATS = ("qdq", "qoperator")


def quantize_onnx(path: str | Path, out: str | Path, calibration: Iterable[torch.Tensor],
                  quant_format: str = "qdq") -> Path:
    """Static int8 quantization of an exported network with ONNX Runtime: weights int8 per output channel,
    activations uint8 with ranges (min/max) measured on ``calibration``, (B, 3, H, W) uint8 batches at the
    network's input size. Calibrate on training photos, never on the photos the model is scored on.

    ``quant_format``: ``qdq`` (QuantizeLinear/DequantizeLinear pairs around float operators, which ONNX
    Runtime fuses into integer kernels) or ``qoperator`` (integer operators written out: QLinearConv ...;
    ONNX Runtime's QOperator pass fails on the TorchScript exporter's graphs, whose constants are shared).

    Convolutions then run as integer kernels (VNNI on x86 CPUs that have it); the README's benchmarks
    give its speed and the test mIoU it keeps.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in INT8_FORMATS:
        raise ConfigError(f"int8_format={quant_format!r}: choose one of {', '.join(INT8_FORMATS)}.")
    path, out = Path(path), Path(out)
    batches = [np.ascontiguousarray(b.cpu().numpy().astype(np.uint8)) for b in calibration]
    if not batches:
        raise ValueError(f"No calibration photos to quantize {path}: pass at least one training batch.")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    out.parent.mkdir(parents=True, exist_ok=True)
    quiet = FromPackage("onnxruntime")  # it logs a WARNING per tensor it leaves in float, on the root logger
    logging.getLogger().addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="fashionseg-quant-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"  # graph optimized (batch-norm folded) and shapes inferred
            # Symbolic shape inference is for transformers; where it fails it dumps a file in the working folder.
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            fmt = QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator
            quantize_static(str(prepared), str(out), Batches(), quant_format=fmt, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=shape_arithmetic(onnx.load(str(prepared))))
    finally:
        logging.getLogger().removeFilter(quiet)
    return out


def shape_arithmetic(model) -> list[str]:
    """The nodes of an ONNX graph (shapes inferred) that compute sizes, not feature maps: every output of rank
    below 3. The TorchScript exporter writes size arithmetic as float operators on the input's shape (that of
    TensorFlow's 'same' padding, timm's Conv2dSame in the tf_efficientnet encoders, when exported with
    ``static_padding=False``); quantized, the pad sizes were rounded to 8-bit levels and clipped to the
    calibration's range, so the feature maps came out shifted or of the wrong size. int8 leaves these nodes
    in float."""
    graph = model.graph
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in (*graph.value_info, *graph.output, *graph.input)
             if vi.type.tensor_type.HasField("shape")}
    ranks.update({init.name: len(init.dims) for init in graph.initializer})
    return [node.name for node in graph.node if node.output and all(ranks.get(o, 4) < 3 for o in node.output)]


class FromPackage(logging.Filter):
    """Drops the records that a package's own code logged below ERROR (by the file that logged them)."""

    def __init__(self, package: str):
        super().__init__()
        self.folder = f"{package}{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self.folder not in record.pathname


def check_and_time(net: nn.Module, runners: dict[str, OnnxRunner], images: list[np.ndarray],
                   predictor_kwargs: dict) -> dict:
    """Each ONNX file against PyTorch on real photos: the max |logit difference|, the share of pixels
    whose label (every head's) is the same, and ms per photo (photo in, label maps out, batch 1).

    Returns ``{"torch_ms": ..., "photos": ..., <name>: {"max_abs_diff", "label_agreement", "ms"}}``.
    """
    def ms(pred: Predictor) -> float:
        pred.label_maps([images[0]])  # warm-up
        start = time.perf_counter()
        for image in images:
            pred.label_maps([image])  # every head's label map (a joint network has two)
        return 1000 * (time.perf_counter() - start) / len(images)

    torch_pred = Predictor(net, **predictor_kwargs)
    batches = [torch_pred.transform(image)["image"][None] for image in images]
    logits = [torch_pred._logits(batch) for batch in batches]  # PyTorch's side, once for every file
    expected = [torch_pred.label_maps([image])[0] for image in images]
    report: dict = {"torch_ms": ms(torch_pred), "photos": len(images)}
    for name, runner in runners.items():
        pred = Predictor(runner, **predictor_kwargs)
        diff, same, total = 0.0, 0, 0
        for image, batch, want_logits, want in zip(images, batches, logits, expected):
            diff = max(diff, float((want_logits - pred._logits(batch)).abs().max()))
            for task, label in pred.label_maps([image])[0].items():
                same, total = same + int((label == want[task]).sum()), total + label.size
        report[name] = {"max_abs_diff": diff, "label_agreement": same / total, "ms": ms(pred)}
    return report


def training_photos(datamodule, count: int) -> list[torch.Tensor]:
    """Up to ``count`` photos of a set-up datamodule's training split, resized as at test time, one
    (1, 3, H, W) uint8 batch each: an int8 calibration set."""
    dataset = datamodule.datasets["train"]
    dataset.transform = datamodule.eval_transform
    if not len(dataset):
        raise ValueError(f"The training split of {datamodule.root} is empty: int8 calibration needs training "
                         "photos; set calibration_root=<the data set the network was trained on>.")
    return [dataset[i]["image"][None] for i in range(min(count, len(dataset)))]


def calibration_batches(config: Mapping, root: str, count: int) -> list[torch.Tensor]:
    """``training_photos`` of a checkpoint's own training split of ``root`` (its seed and split); ``config``:
    the checkpoint's stored run config."""
    return training_photos(checkpoint_datamodule(config, root), count)


class Stages:
    """Progress of an export, one line per stage with its time (the libraries' own INFO logs are silenced)."""

    QUIET = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "torch._export",
             "onnxruntime", "root")

    def __init__(self, names: Sequence[str]):
        self.names, self.times = list(names), {}
        for name in self.QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)

    @contextlib.contextmanager
    def __call__(self, name: str):
        print(f"[{self.names.index(name) + 1}/{len(self.names)}] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - start, 1)
        print(f"      {name}: {self.times[name]:.1f} s", flush=True)


def export_checked(cfg, trained, out: Path, stages: Stages) -> dict:
    """Write ``out`` (and with ``int8``, ``<stem>.int8.onnx``), check them against PyTorch on real photos, time
    them; returns the report (also written beside ``out`` as JSON)."""
    train_cfg = OmegaConf.create(trained.config)
    data = primary_data_config(train_cfg.data)
    size = list(data.image_size) if data.image_size is not None else [608, 416]
    photos = list_photos(cfg.check_photos)[: cfg.check_count] if cfg.get("check_photos") else []
    if not photos:
        raise ConfigError(f"No photos to check the export on in {cfg.check_photos}; set check_photos=<folder>.")
    log.info("Exporting %s (%s, input %s) to %s", cfg.ckpt_path, train_cfg.model.name, size, out)
    with stages("export"):
        export_onnx(trained.net, out, size, opset=cfg.opset, exporter=cfg.get("exporter", "torchscript"),
                    static_padding=cfg.get("static_padding", True))
    images = [read_photo(p) for p in photos]
    heads = trained.heads
    kwargs = dict(class_names=all_class_names(heads), image_size=data.image_size,
                  size_multiple=data.get("size_multiple", 32), heads=heads)
    runners = {"onnxruntime": OnnxRunner(out)}
    if cfg.int8:
        int8 = out.with_name(f"{out.stem}.int8.onnx")
        with stages("calibrate"):
            calibration = calibration_batches(trained.config, cfg.calibration_root, cfg.calibration_count)
        log.info("Quantizing to int8 (%d training photos of %s calibrate): %s", len(calibration),
                 cfg.calibration_root, int8)
        with stages("quantize"):
            runners["int8"] = OnnxRunner(quantize_onnx(out, int8, calibration, cfg.get("int8_format", "qdq")))
    with stages("compare"):
        checks = check_and_time(trained.net, runners, images, kwargs)
    onnx = checks["onnxruntime"]
    report = {"onnx": str(out), "input_hw": size, "max_abs_diff": onnx["max_abs_diff"],
              "label_agreement": onnx["label_agreement"], "torch_ms": checks["torch_ms"],
              "onnxruntime_ms": onnx["ms"], "photos": checks["photos"], "stage_s": stages.times}
    lines = [f"ONNX written to {out}",
             f"max |logits(torch) - logits(onnxruntime)| on {report['photos']} photos: {report['max_abs_diff']:.2e}",
             f"ms per photo (600x400 in, label map out, batch 1): torch {report['torch_ms']:.1f}, "
             f"onnxruntime {report['onnxruntime_ms']:.1f}"]
    if cfg.int8:
        report["int8"] = {"onnx": str(int8), "calibration_photos": len(calibration), **checks["int8"]}
        lines += [f"int8 ONNX written to {int8}: the same label on {100 * checks['int8']['label_agreement']:.2f}% "
                  f"of the pixels as torch, {checks['int8']['ms']:.1f} ms per photo; score it with "
                  f"`python eval.py ckpt_path={cfg.ckpt_path} onnx={int8}`"]
    print("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    if report["max_abs_diff"] > cfg.tolerance:
        raise RuntimeError(f"ONNX output differs from PyTorch by {report['max_abs_diff']:.2e} > {cfg.tolerance}.")
    return report


def network_only(trained: TrainedNetwork) -> TrainedNetwork:
    """A network with the trainable CRF layer: the network under it, said aloud (the layer's lattice, built
    per photo from sorted pixel codes, has no ONNX form). Any other network: itself."""
    if not isinstance(trained.net, CRFLayerNetwork):
        return trained
    print("This checkpoint has the trainable CRF layer (crf_layer); ONNX export covers the network under it only: "
          "the ONNX file gives the network's logits before the CRF. The layer runs in PyTorch: eval.py, predict.py "
          "and the demo with ckpt_path=<this checkpoint>; with ONNX Runtime, add the hand-tuned CRF "
          "(postprocess=crf) instead.")
    config = {k: v for k, v in trained.config.items() if k != "crf_layer"}
    return TrainedNetwork(trained.net.net, config, trained.inference)


def export(cfg) -> dict:
    """`python export.py ckpt_path=... format=onnx`: write the ONNX file, check it against PyTorch, time both.
    With ``package=<dir>``: a model package instead (ONNX files in it with ``package_onnx=true``), uploaded to the
    Hugging Face Hub with ``push_to_hub=<user/repo>``."""
    if cfg.format != "onnx":
        raise ConfigError(f"format={cfg.format!r} is not supported; use format=onnx.")
    trained = load_network(cfg.ckpt_path)
    onnx_stages = ["export", *(["calibrate", "quantize"] if cfg.int8 else []), "compare"]
    if not cfg.get("package"):
        out = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / f"{Path(cfg.ckpt_path).stem}.onnx"
        return export_checked(cfg, network_only(trained), out, Stages(onnx_stages))
    if cfg.package_onnx and isinstance(trained.net, CRFLayerNetwork):
        raise ConfigError(f"{cfg.ckpt_path} has the trainable CRF layer, which ONNX export does not cover: write the "
                          "package without ONNX files (package_onnx=false; it runs the layer in PyTorch), or export "
                          "the network under the layer alone with `python export.py ckpt_path=... format=onnx`.")
    folder = Path(cfg.package)
    stages = Stages([*(onnx_stages if cfg.package_onnx else []), "package", *(["upload"] if cfg.push_to_hub else [])])
    inference = inference_options(cfg, trained)
    report = export_checked(cfg, trained, folder / ONNX, stages) if cfg.package_onnx else {}
    with stages("package"):
        write_package(trained, cfg.ckpt_path, folder, inference,
                      [ONNX, *([ONNX_INT8] if cfg.int8 else [])] if cfg.package_onnx else [])
    (folder / ONNX).with_suffix(".json").unlink(missing_ok=True)  # the check's report: in the log, not the package
    print(f"Model package written to {folder}: use it with `python predict.py model={folder} input=<photos> "
          f"output=<folder>` or Predictor.from_pretrained({str(folder)!r}).")
    report["package"] = str(folder)
    if cfg.push_to_hub:
        with stages("upload"):
            report["hub_url"] = push_to_hub(folder, cfg.push_to_hub)
        print(f"Uploaded to the Hugging Face Hub: {report['hub_url']} (load it with model={cfg.push_to_hub}).")
    return report
