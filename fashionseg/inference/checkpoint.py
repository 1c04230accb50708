"""Read a train.py checkpoint and rebuild its network from the config stored in it, without the training
layer: evaluation, prediction, the demo, export, a distillation teacher and resume all read checkpoints here.

Reading never runs code: checkpoints are opened with ``torch.load(weights_only=True)``, which rebuilds
tensors and plain containers only (the stored config is plain dicts and lists). A file that needs more
(a pickled object, perhaps a payload) is refused, naming ``scripts/convert_checkpoint.py --trust``, which
converts a checkpoint one trusts once, knowingly.

A checkpoint stores the run's resolved config, whose ``_target_`` paths name the classes that built the run
(``fashionseg.training.losses.CrossEntropy``). Checkpoints written before the package was split into
layers name the old flat modules (``fashionseg.losses.CrossEntropy``); ``upgrade_config`` maps them to
their new homes, in this one place, so that every old checkpoint still loads.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import OmegaConf
from torch import nn

from fashionseg.core.errors import ConfigError
from fashionseg.core.heads import Head, task_heads
from fashionseg.inference.package import WEIGHTS, read_package_config, resolve
from fashionseg.models.crf_layer import CRFLayerNetwork, MeanFieldCRF

# Old ``_target_`` prefix -> new one; the longest matching prefix wins. The classes of fashionseg 0.1.0's flat
# modules that a stored config names (losses, callbacks, the checkpoint writer); data, models and
# postprocess kept their paths.
MOVED_TARGETS = {
    "fashionseg.losses.": "fashionseg.training.losses.",
    "fashionseg.checkpoint.AtomicCheckpointIO": "fashionseg.training.checkpoint_io.AtomicCheckpointIO",
    "fashionseg.callbacks.RefinementReport": "fashionseg.evaluation.callbacks.RefinementReport",
    "fashionseg.callbacks.refinements.": "fashionseg.evaluation.callbacks.",
    "fashionseg.callbacks.": "fashionseg.training.callbacks.",
}


def upgrade_target(target: str) -> str:
    """A ``_target_`` path of an old checkpoint's config at its current home (unchanged if it did not move)."""
    prefix = max((old for old in MOVED_TARGETS if target.startswith(old)), key=len, default=None)
    return target if prefix is None else MOVED_TARGETS[prefix] + target[len(prefix):]


def upgrade_config(node: Any) -> Any:
    """A copy of a stored config (plain dicts and lists) with every moved ``_target_`` at its new home."""
    if isinstance(node, Mapping):
        return {k: upgrade_target(v) if k == "_target_" and isinstance(v, str) else upgrade_config(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [upgrade_config(v) for v in node]
    return node


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A train.py checkpoint as a dict, its stored config (``["hyper_parameters"]["config"]``) upgraded to
    the current module paths. ``mmap``: map the tensors instead of reading them (to read the config alone).
    Raises ``ConfigError`` naming the file when it is missing, unreadable or not written by train.py."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Checkpoint {path} does not exist. Give ckpt_path=<run dir>/checkpoints/<file>.ckpt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # an object that only running code could rebuild: never done here
        reason = next((f" ({line.strip()})" for line in str(e).splitlines() if "Unsupported" in line), "")
        raise ConfigError(
            f"Checkpoint {path} holds objects that loading would have to run code to rebuild{reason}; it was "
            "refused, and nothing in it ran. fashionseg checkpoints hold only tensors and plain values. If "
            f"you trust where this file comes from, convert it once: python scripts/convert_checkpoint.py --trust "
            f"{path} --out <new.ckpt>"
        ) from None
    except Exception as e:  # truncated, overwritten or not a checkpoint at all
        raise ConfigError(f"Cannot read checkpoint {path} ({type(e).__name__}: {e}); it is truncated or not a "
                          "checkpoint written by train.py.") from e
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if not config:
        raise ConfigError(f"Checkpoint {path} holds no fashionseg config; it was not written by train.py.")
    ckpt["hyper_parameters"]["config"] = upgrade_config(config)
    return ckpt


def build_network(config: Mapping, pretrained: bool = False) -> nn.Module:
    """The network of a run config (``model.net``), with the trainable CRF layer on top where the config has
    one (``crf_layer``). ``pretrained=False`` builds the encoder without its pretrained weights (a checkpoint
    holds all of them), so that loading never touches the network."""
    net_cfg = OmegaConf.create(dict(config["model"]["net"]))
    if not pretrained and "encoder_weights" in net_cfg:
        net_cfg.encoder_weights = None
    net = hydra.utils.instantiate(net_cfg)
    crf_cfg = config.get("crf_layer")
    return with_crf_layer(net, dict(crf_cfg), config, pretrained) if crf_cfg else net


def with_crf_layer(net: nn.Module, crf_cfg: dict, config: Mapping, pretrained: bool) -> CRFLayerNetwork:
    """``net`` under the trainable CRF layer of ``crf_cfg`` (conf/crf_layer/). With ``pretrained``, the weights
    come from the trained network ``crf_cfg["network"]`` (a checkpoint, package or Hub id; a run with the
    layer gives the layer's too)."""
    task = config["task"]
    if task.get("heads"):
        raise ConfigError("crf_layer: a network with one head per task (task=joint) has no single set of "
                          "classes for the CRF; train the layer on task=person or task=fashion.")
    start = crf_cfg.pop("network", None)
    freeze = bool(crf_cfg.pop("freeze_network", False))
    try:
        crf = MeanFieldCRF(len(task["class_names"]), **crf_cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"crf_layer: {e} (options: conf/crf_layer/frozen.yaml).") from None
    layer = CRFLayerNetwork(net, crf, freeze_network=freeze)
    if pretrained and start:
        trained = load_network(start)
        if list(trained.config["task"].get("class_names") or []) != list(task["class_names"]):
            raise ConfigError(f"crf_layer.network={start} was trained for the classes "
                              f"{trained.config['task'].get('class_names')}, this run has {list(task['class_names'])}.")
        inner = isinstance(trained.net, CRFLayerNetwork)
        try:
            (layer if inner else layer.net).load_state_dict(trained.net.state_dict(), strict=True)
        except RuntimeError as e:
            raise ConfigError(f"crf_layer.network={start}: its weights do not fit this run's network "
                              f"(model.net; {str(e).splitlines()[0]}). Compose the run with the model it was "
                              "trained with (e.g. the same experiment=).") from None
    return layer


@dataclass
class TrainedNetwork:
    """A trained network in eval mode, the run config it was trained with (task, classes, data), and, from a
    model package, the test-time options chosen for it (``tta_hflip``, ``tta_scales``, ``postprocess``)."""

    net: nn.Module
    config: dict
    inference: dict = field(default_factory=dict)

    @cached_property
    def heads(self) -> list[Head]:
        """The network's heads, from the stored task config."""
        return task_heads(self.config["task"])


def network_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's own weights in a LightningModule's state dict (its ``net.`` entries)."""
    return {k.removeprefix("net."): v for k, v in state_dict.items() if k.startswith("net.")}


def load_network(source: str | Path, revision: str | None = None) -> TrainedNetwork:
    """Rebuild the network of a train.py checkpoint, a model package folder or a Hugging Face Hub id
    (``user/repo`` at ``revision``) from its stored config, and load its weights."""
    path = resolve(source, revision)
    if path.is_dir():
        return load_package(path)
    ckpt = read_checkpoint(path)
    config = ckpt["hyper_parameters"]["config"]
    net = build_network(config)
    try:
        net.load_state_dict(network_state(ckpt["state_dict"]), strict=True)
    except RuntimeError as e:
        raise ConfigError(f"Checkpoint {path}: its weights do not fit the network its config describes "
                          f"({str(e).splitlines()[0]}).") from e
    return TrainedNetwork(net.eval(), config)


def load_package(folder: str | Path) -> TrainedNetwork:
    """The network of a model package (``fashionseg.inference.package``): its config.yaml and safetensors weights."""
    from safetensors.torch import load_model

    doc = read_package_config(folder)
    config = upgrade_config(doc["run"])
    net = build_network(config)
    try:
        load_model(net, Path(folder) / WEIGHTS, strict=True)
    except Exception as e:  # missing or extra tensors, a damaged file
        raise ConfigError(f"Model package {folder}: its weights ({WEIGHTS}) do not fit the network its {Path(folder)} "
                          f"config.yaml describes ({type(e).__name__}: {str(e).splitlines()[0]}).") from None
    return TrainedNetwork(net.eval(), config, dict(doc["inference"]))
