"""What the trainable CRF layer (``crf_layer=...``) has learned, after every validation epoch: its kernel weights
as scalars, its compatibility matrix as a heat map (a PNG in the run folder, and an image for W&B and
TensorBoard), and both as JSON."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from fashionseg.core.io import write_atomic
from fashionseg.models.crf_layer import CRFLayerNetwork


class CRFLayerMonitor(L.Callback):
    """Logs ``crf/bilateral_weight`` and ``crf/gaussian_weight`` (with ``learn_unary``, ``crf/unary_weight`` and
    ``crf/unary_bias_<class>`` too), writes ``<run>/crf_layer/compatibility.png`` (with one matrix per kernel:
    ``compatibility_bilateral.png`` and ``compatibility_spatial.png``) and ``learned.json`` (the last epoch's;
    ``tested.json``: the tested checkpoint's), and sends the heat maps to W&B / TensorBoard as
    ``crf/compatibility`` (``crf/<the file's name>``). A run without the layer: nothing."""

    def on_validation_epoch_end(self, trainer: L.Trainer, module) -> None:
        net = getattr(module, "net", None)
        if trainer.sanity_checking or not isinstance(net, CRFLayerNetwork):
            return
        learned = net.crf.learned()
        scalars = {"crf/bilateral_weight": learned["bilateral_weight"],
                   "crf/gaussian_weight": learned["gaussian_weight"]}
        if "unary_bias" in learned:  # learn_unary: the unary's weight and one bias per class
            scalars["crf/unary_weight"] = learned["unary_weight"]
            scalars |= {f"crf/unary_bias_{name}": b for name, b in zip(module.class_names, learned["unary_bias"])}
        module.log_dict(scalars, add_dataloader_idx=False)
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir) / "crf_layer"
        matrices = np.asarray(learned["compatibility"])
        named = {"compatibility": ("", matrices)} if matrices.ndim == 2 else {  # one per kernel
            "compatibility_bilateral": (" (bilateral kernel)", matrices[0]),
            "compatibility_spatial": (" (spatial kernel)", matrices[1])}
        doc = json.dumps({"epoch": trainer.current_epoch, "class_names": module.class_names, **learned}, indent=1)
        write_atomic(folder / "learned.json", lambda f: f.write(doc.encode()))
        for name, (kernel, matrix) in named.items():
            title = f"learned compatibility{kernel}, epoch {trainer.current_epoch}"
            png = compatibility_figure(matrix, module.class_names, title)
            write_atomic(folder / f"{name}.png", lambda f, png=png: f.write(png))
            self.send_image(trainer, f"crf/{name}", png)

    def on_test_start(self, trainer: L.Trainer, module) -> None:
        """``<run>/crf_layer/tested.json``: the parameters of the checkpoint the test scores (the best epoch's;
        ``learned.json`` is the last epoch's)."""
        net = getattr(module, "net", None)
        if not isinstance(net, CRFLayerNetwork) or not trainer.is_global_zero:
            return
        doc = json.dumps({"checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                          "class_names": module.class_names, **net.crf.learned()}, indent=1)
        write_atomic(Path(trainer.default_root_dir) / "crf_layer" / "tested.json", lambda f: f.write(doc.encode()))

    @staticmethod
    def send_image(trainer: L.Trainer, key: str, png: bytes) -> None:
        """The PNG to the run's W&B and TensorBoard loggers, at the current step."""
        for target in trainer.loggers:
            if isinstance(target, WandbLogger):
                import wandb
                from PIL import Image

                target.log_metrics({key: wandb.Image(Image.open(io.BytesIO(png)))}, step=trainer.global_step)
            elif isinstance(target, TensorBoardLogger):
                from PIL import Image

                image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                target.experiment.add_image(key, image, trainer.global_step, dataformats="HWC")


def compatibility_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> bytes:
    """A K x K compatibility matrix as an annotated heat map, PNG bytes. Entry (l, l') is the energy a pixel of
    class l pays per unit of kernel-weighted class l' around it (Potts: 1 off the diagonal, 0 on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(2.5 + 0.8 * k, 1.5 + 0.7 * k))
    limit = max(float(np.abs(matrix).max()), 1e-6)
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("neighbouring class l'")
    ax.set_ylabel("class l")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
