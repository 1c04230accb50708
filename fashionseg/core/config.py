"""Composing the package's configs outside the entry points, and checks on a composed config, run
before any data is read or any file is written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fashionseg.core.errors import ConfigError


def compose_config(config_name: str = "train", overrides: Sequence[str] = (),
                   return_hydra_config: bool = False) -> DictConfig:
    """Compose one of the package's configs (fashionseg/conf) as an entry point would.

    For tests, benchmarks and library code (e.g. the refinement configs). Inside a running entry point
    it uses that run's Hydra (whose search path has these configs); elsewhere it initialises Hydra
    from the package for the call. ``return_hydra_config``: keep the ``hydra`` node and make it the
    current Hydra runtime config (overrides, group choices), as code running inside a job sees it.
    """
    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_module("fashionseg.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
        if return_hydra_config:
            HydraConfig().set_config(cfg)
    return cfg


def override_value(text: str):
    """A ``key=value`` value as Hydra reads it on the command line (``null``, ``rgb``, ``40``, ``1e-4``), for
    scripts that take such pairs of their own and print ``eval.py`` overrides from them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(f"value={text}").value()


def default_data_dir() -> str:
    """Where the data set is when no root is given: ``paths.data_dir`` ($FASHIONSEG_DATA, else data/...)."""
    return str(compose_config("train").paths.data_dir)


def _loss_weights(node) -> list:
    """Every non-null ``weights`` (a list, or ``auto``) given to a CrossEntropy inside the loss config."""
    found = []
    if isinstance(node, DictConfig):
        if str(node.get("_target_", "")).endswith("CrossEntropy") and node.get("weights") is not None:
            found.append(list(node.weights) if OmegaConf.is_list(node.weights) else node.weights)
        for key in node:
            if key != "weights":
                found += _loss_weights(node[key])
    elif OmegaConf.is_list(node):
        for item in node:
            found += _loss_weights(item)
    return found


# Keys whose type a typo on the command line can break: (key, expected type, what to say).
TYPED_KEYS = [
    ("optimizer.lr", float, "a number, e.g. 1e-3"),
    ("optimizer.weight_decay", float, "a number"),
    ("data.batch_size", int, "an integer"),
    ("data.num_workers", int, "an integer"),
    ("trainer.max_epochs", int, "an integer"),
    ("seed", int, "an integer"),
    ("model.aux_weight", float, "a number"),
]


def check_types(cfg: DictConfig) -> None:
    for key, kind, what in TYPED_KEYS:
        value = OmegaConf.select(cfg, key)
        ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if value is not None and (isinstance(value, bool) or not ok):
            raise ConfigError(f"{key}={value!r} must be {what}, got {type(value).__name__}.")


def check_heads(cfg: DictConfig) -> None:
    """A task with several heads (task=joint): its label kinds and class counts follow its heads, and it
    trains on one set without class weights."""
    heads = cfg.task.heads
    expected = {"label": [h.label for h in heads.values()], "num_classes": [h.num_classes for h in heads.values()]}
    for key, value in expected.items():
        if list(cfg.task[key]) != value:
            raise ConfigError(f"task.{key}={list(cfg.task[key])} must list the heads' own, {value}, in head order.")
    if _loss_weights(cfg.loss):
        raise ConfigError(f"task={cfg.task.name} has several heads and takes no class weights (loss.weights); "
                          "use a loss without weights (loss=ce, ce_dice, ce_boundary, lovasz, ...).")
    if "sets" in cfg.data:
        raise ConfigError(f"task={cfg.task.name} trains on one set; data.sets is for single-head tasks.")


def validate(cfg: DictConfig) -> None:
    """Fail fast, with one clear message, on values that would break a run later.

    Checks what every run shares; a feature switched on from config (``distill``) checks its own settings in
    its own layer (``fashionseg.training.distill.teacher_path``, called by train.py right after this)."""
    check_types(cfg)
    heads = cfg.task.get("heads")
    for key, task in [(f"task.heads.{n}", h) for n, h in heads.items()] if heads else [("task", cfg.task)]:
        if len(task.class_names) != task.num_classes:
            raise ConfigError(f"{key}.class_names has {len(task.class_names)} names but {key}.num_classes="
                              f"{task.num_classes}.")
    if heads:
        check_heads(cfg)
    k = cfg.task.num_classes
    lr = cfg.optimizer.get("lr")
    if lr is not None and not lr > 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}.")
    for weights in [] if heads else [w for w in _loss_weights(cfg.loss) if isinstance(w, list)]:
        if len(weights) != k:
            raise ConfigError(
                f"loss.weights has {len(weights)} values {weights} but task={cfg.task.name} has {k} classes "
                f"{list(cfg.task.class_names)}; give one weight per class or loss.weights=auto."
            )
    for key, data in (("data.sets." + n, d) for n, d in cfg.data.sets.items()) if "sets" in cfg.data \
            else [("data", cfg.data)]:
        size, multiple = data.get("image_size"), data.size_multiple
        if size is not None and (len(size) != 2 or any(s <= 0 or s % multiple for s in size)):
            raise ConfigError(
                f"{key}.image_size={list(size)} must be two positive sides (H, W) divisible by {multiple}, which "
                f"the model needs (e.g. [384,256] or [608,416]); or null to pad the native size."
            )
        if data.batch_size < 1:
            raise ConfigError(f"{key}.batch_size must be >= 1, got {data.batch_size}.")
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and epochs < 1 and epochs != -1:
        raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 for no limit), got {epochs}.")


# CPU features with native bfloat16 arithmetic: x86's AVX512_BF16 and AMX, ARM's BF16 and SVE BF16
# (torch.cpu.get_capabilities names).
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def native_bf16(accelerator: str = "cpu") -> bool:
    """Whether bfloat16 arithmetic is native here: a CUDA card that supports it, or a CPU with one of
    ``NATIVE_BF16``. Elsewhere oneDNN emulates it, and bf16 autocast trains slower than float32."""
    import torch

    if accelerator in ("gpu", "cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator != "cpu" or not hasattr(torch.cpu, "get_capabilities"):
        return False
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name) is True for name in NATIVE_BF16)


def resolve_precision(trainer_cfg) -> str:
    """``trainer.precision`` as Lightning takes it, ``auto`` replaced by the fastest choice here:
    ``bf16-mixed`` where bfloat16 is native (``native_bf16``), else ``32-true`` (``16-mixed`` on a CUDA card
    without bfloat16). Entry points store the resolved value in the run's config and checkpoints, so a
    resumed run keeps its precision on another machine."""
    precision = str(trainer_cfg.get("precision") or "32-true")
    if precision != "auto":
        return precision
    accelerator = str(trainer_cfg.get("accelerator") or "cpu")
    if accelerator == "auto":
        import torch

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if native_bf16(accelerator):
        return "bf16-mixed"
    return "16-mixed" if accelerator in ("gpu", "cuda") else "32-true"


def check_writable(directory: str | Path) -> Path:
    """Create the run directory and make sure files can be written there, before any work starts."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A probe of its own: processes launched into one folder at once (workers of a shared sweep) each check.
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(b"0" * 4096)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"Cannot write to the output directory {directory}: {e.strerror}. Choose another with "
            "hydra.run.dir=<dir> (or hydra.sweep.dir for -m), or free disk space."
        ) from e
    free = os.statvfs(directory)
    free_mb = free.f_bavail * free.f_frsize / 2**20
    if free_mb < 200:
        raise ConfigError(f"Only {free_mb:.0f} MB free under {directory}; checkpoints need more. Free disk space.")
    return directory
