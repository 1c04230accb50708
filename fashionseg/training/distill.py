"""Knowledge distillation: a trained teacher's softened class probabilities as a second training target.

``python train.py experiment=fast_person_trainval distill=kd distill.teacher=<teacher>.ckpt`` trains the
fast network (the student) on its own loss plus ``weight * T^2 * KL(teacher || student)`` at temperature
``T`` (Hinton et al. 2015, "Distilling the knowledge in a neural network"), per labelled pixel, on the
same augmented batch. The teacher is any train.py checkpoint with the student's classes (a joint
teacher lends the matching head); it runs frozen, in eval mode, and is no part of the student's
checkpoint, so the student's inference cost is unchanged.

The teacher's forward pass in every step costs training time. ``write_teacher_logits``
(``python scripts/teacher_logits.py --ckpt <teacher>.ckpt --out <folder>``) runs the teacher once over its
training photos and stores its logits at each photo's size; ``distill.logits=<folder>`` (instead of
``distill.teacher``) then gives every training item the stored logits, warped with the photo and its
label by the same augmentation (nearest neighbour, as labels), and the step runs the student alone.

A teacher that learned this run's validation or test photos would leak them into training; the
teacher run's ``split.json`` (beside its ``checkpoints/``, or copied into a logits folder) is checked
against this run's split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.heads import Head, head_targets, heads_from_names
from fashionseg.core.io import read_photo
from fashionseg.data.datamodule import SUBSETS
from fashionseg.data.multiset import primary_data_config
from fashionseg.inference.checkpoint import load_network
from fashionseg.inference.logits import network_logits
from fashionseg.inference.predictor import Predictor

LOGITS_MANIFEST = "teacher.json"  # in a logits folder, beside split.json and logits/<n>.npy


class Distiller:
    """The distillation term of a student's training loss.

    Deliberately not an ``nn.Module``: the teacher is not registered with the LightningModule, so its
    weights stay out of the optimiser, the checkpoints and the parameter count.

    Args:
        teacher: the teacher network (returns ``{"out": logits}``), frozen here; None when the batches bring
            the teacher's stored logits (``distill.logits``).
        pairs: (student head, teacher head) with the same classes: which teacher channels teach which
            student channels.
        temperature: softmax temperature ``T`` of both distributions; the term is scaled by ``T^2`` so that
            its gradients keep their size across temperatures.
        weight: the term's weight in the training loss.
        tta_hflip: the teacher's logits averaged with its mirror image's.
        ignore_index: label of pixels that count for nothing (void).
        scale: the teacher sees the batch resized by this factor (sides rounded to 32), its logits resized
            back: a teacher trained at another input size (e.g. 1.25 for a 608x416 teacher of a 480x320
            student).
    """

    def __init__(self, teacher: nn.Module | None, pairs: Sequence[tuple[Head, Head]], temperature: float = 2.0,
                 weight: float = 1.0, tta_hflip: bool = False, ignore_index: int | None = None,
                 scale: float = 1.0):
        if temperature <= 0 or weight < 0 or scale <= 0:
            raise ConfigError(f"distill.temperature and distill.scale must be > 0 and distill.weight >= 0, got "
                              f"{temperature}, {scale} and {weight}.")
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.stored: StoredLogits | None = None  # from_config's, with distill.logits
        self.pairs, self.temperature, self.weight = list(pairs), float(temperature), float(weight)
        self.tta_hflip, self.ignore_index, self.scale = tta_hflip, ignore_index, float(scale)

    @classmethod
    def from_config(cls, cfg: Mapping, student_heads: Sequence[Head], ids: Mapping,
                    ignore_index: int | None = None) -> Distiller:
        """The distiller of a run's ``distill`` config (conf/distill/kd.yaml), its heads and its split ids.
        With ``distill.logits`` its ``stored`` logits are to be handed to the training photos
        (``FashionDataModule.set_teacher_logits``)."""
        path = teacher_path(cfg)
        if cfg.get("check_split", True):
            check_teacher_split(path, ids)
        if path.is_dir():
            stored = StoredLogits(path)
            distiller = cls(None, match_heads(student_heads, stored.heads, path), cfg.get("temperature", 2.0),
                            cfg.get("weight", 1.0), ignore_index=ignore_index)
            distiller.stored = stored
            return distiller
        teacher = load_network(path)
        return cls(teacher.net, match_heads(student_heads, teacher.heads, path), cfg.get("temperature", 2.0),
                   cfg.get("weight", 1.0), cfg.get("tta_hflip", False), ignore_index, cfg.get("scale", 1.0))

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's float logits (B, C, H, W) of a training batch (B, 3, H, W), from the teacher network."""
        if self.teacher is None:
            raise ValueError("This distiller has stored logits and no teacher network: pass the batch's "
                             "'teacher' logits to loss().")
        device = next(self.teacher.parameters()).device
        if device != images.device:
            self.teacher.to(images.device)
        return network_logits(self.teacher, images, self.tta_hflip, (self.scale,))

    def loss(self, images: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
             teacher: torch.Tensor | None = None) -> torch.Tensor:
        """``T^2 * KL(teacher || student)`` per labelled pixel, averaged, summed over the heads.

        Args:
            images: the batch (B, 3, H, W) the student saw.
            logits: the student's logits (B, C, h, w).
            target: labels (B, H, W), or (B, tasks, H, W) for a joint student; void pixels are left out.
            teacher: the teacher's stored logits (B, C_teacher, H, W), warped with the batch; None: the
                teacher network runs on ``images``.
        """
        if teacher is None:
            teacher = self.teacher_logits(images)
        teacher = teacher.float()
        if teacher.shape[-2:] != logits.shape[-2:]:
            teacher = F.interpolate(teacher, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        students = [s for s, _ in self.pairs]
        targets = head_targets(target, students)
        t = self.temperature
        total = logits.new_zeros((), dtype=torch.float32)
        for (student, teach), labels in zip(self.pairs, targets):
            log_p = F.log_softmax(logits[:, student.channels].float() / t, dim=1)  # (B, K, h, w)
            log_q = F.log_softmax(teacher[:, teach.channels] / t, dim=1)
            kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1)  # (B, h, w)
            if labels.shape[-2:] != kl.shape[-2:]:
                labels = F.interpolate(labels[:, None].float(), size=kl.shape[-2:], mode="nearest")[:, 0].long()
            valid = labels != self.ignore_index if self.ignore_index is not None else torch.ones_like(kl, dtype=bool)
            total = total + (kl * valid).sum() / valid.sum().clamp(min=1) * t * t
        return total


def attach_distiller(cfg: Mapping, module, datamodule) -> None:
    """With a ``distill`` config (``distill=kd``): give the module its distiller, and hand a teacher's stored
    logits (``distill.logits``) to the datamodule's training photos. Nothing without one."""
    if not cfg.get("distill"):
        return
    module.distiller = Distiller.from_config(cfg["distill"], module.heads, datamodule.ids, module.hparams.ignore_index)
    if module.distiller.stored is not None:  # the batches bring the teacher's logits
        datamodule.set_teacher_logits(module.distiller.stored)


def match_heads(student_heads: Sequence[Head], teacher_heads: Sequence[Head], source: Path) -> list[tuple[Head, Head]]:
    """(student head, teacher head) pairs of the same classes; an error names a student head without one."""
    pairs = []
    for head in student_heads:
        match = next((t for t in teacher_heads if t.class_names == head.class_names), None)
        if match is None:
            raise ConfigError(
                f"Teacher {source} has no head with the student's {head.name} classes {list(head.class_names)}; "
                f"its heads: {[(t.name, list(t.class_names)) for t in teacher_heads]}. Distil from a network "
                "of the same task (or a joint one with that task).")
        pairs.append((head, match))
    return pairs


def teacher_path(cfg: Mapping) -> Path:
    """The teacher of a ``distill`` config, checked to be set once and to exist: a checkpoint
    (``distill.teacher``) or a folder of its stored logits (``distill.logits``)."""
    teacher, logits = cfg.get("teacher"), cfg.get("logits")
    if teacher and logits:
        raise ConfigError(f"distill.teacher={teacher} and distill.logits={logits} are both set: give one, the "
                          "teacher's checkpoint (it runs in every step) or the folder of its stored logits.")
    if logits:
        path = Path(logits)
        if not (path / LOGITS_MANIFEST).is_file():
            raise ConfigError(f"distill.logits={path} is not a folder of stored teacher logits (it has no "
                              f"{LOGITS_MANIFEST}); write one with `python scripts/teacher_logits.py --ckpt "
                              f"<teacher>.ckpt --out {path}`.")
        return path
    if not teacher:
        raise ConfigError("distill.teacher is not set: give distill.teacher=<teacher run>/checkpoints/<file>.ckpt "
                          "(a checkpoint written by train.py), or distill.logits=<folder> (its stored logits, "
                          "scripts/teacher_logits.py).")
    path = Path(teacher)
    if not path.is_file():
        raise ConfigError(f"distill.teacher={path} does not exist; give a checkpoint written by train.py "
                          "(<teacher run>/checkpoints/<file>.ckpt).")
    return path


class StoredLogits:
    """A folder written by ``write_teacher_logits``: a teacher's logits of photos, read back by id.

    Layout: ``teacher.json`` (the teacher, its heads, how it ran, the photo ids in file order), the
    teacher run's ``split.json``, and ``logits/<n>.npy``, float16 (H, W, C) at each photo's size.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / LOGITS_MANIFEST).read_text())
        self.ids = [str(i) for i in self.manifest["ids"]]
        self.index = {photo: n for n, photo in enumerate(self.ids)}
        self.heads = heads_from_names(self.manifest["heads"])

    def load(self, ids: Sequence[str], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """The logits (H, W, C) float16 of each photo (this run's training photos), checked to be stored and
        against the photo's size (H, W)."""
        missing = sorted(set(ids) - set(self.index))
        if missing:
            raise ConfigError(
                f"distill.logits={self.folder} has no logits for {len(missing)} of this run's training photos (e.g. "
                f"{missing[:5]}); it holds the {len(self.ids)} photos of its teacher's "
                f"{self.manifest.get('subset', 'training')} split. Write the logits of this run's training photos "
                "(scripts/teacher_logits.py with the teacher trained on the same data.seed and data.split).")
        out = []
        for photo, size in zip(ids, sizes):
            file = self.folder / "logits" / f"{self.index[photo]}.npy"
            try:
                logits = np.load(file)
            except (OSError, ValueError, EOFError) as e:  # missing, truncated or not an array
                raise DataError(f"Cannot read stored teacher logits {file} (photo {photo}): {e}. Write the folder "
                                "again with scripts/teacher_logits.py (a new --out).") from e
            if logits.shape[:2] != tuple(size):
                raise DataError(f"Stored teacher logits {file} (photo {photo}) are {logits.shape[1]}x{logits.shape[0]} "
                                f"(WxH) but the photo is {size[1]}x{size[0]}: the folder was written for other "
                                "photos. Write it again with scripts/teacher_logits.py.")
            out.append(logits)
        return out


def write_teacher_logits(ckpt: str | Path, out: str | Path, subset: str = "train", data_root: str | Path | None = None,
                         tta_hflip: bool = False, tta_scales: Sequence[float] = (1.0,), device: str = "cpu",
                         bf16: bool = False, batch_size: int = 4) -> Path:
    """Run a teacher checkpoint once over the photos of its run's ``subset`` and store its logits.

    Args:
        ckpt: a train.py checkpoint; its run's ``split.json`` (beside ``checkpoints/``) names the photos and is
            copied along, for the student's leak check.
        out: the folder to write (``distill.logits=<out>``); it must not hold stored logits already.
        subset: whose photos: ``train`` (the teacher's training photos: a student trained on the same split).
        data_root: the photos' folder, if not where the teacher's run read them.
        tta_hflip, tta_scales, device, bf16: how the teacher runs (``Predictor``).
    """
    ckpt, out = Path(ckpt), Path(out)
    manifest = teacher_split_file(ckpt)
    if not manifest.is_file():
        raise ConfigError(f"{manifest} is missing: train.py writes it beside the checkpoints/ folder of {ckpt}, "
                          "and it names the photos the teacher learned. Copy the teacher's run folder whole.")
    split = json.loads(manifest.read_text())
    if subset not in SUBSETS or "sets" in split:
        raise ConfigError(f"--subset {subset!r}: give one of {list(SUBSETS)} of a one-set teacher run ({manifest}).")
    ids = [str(i) for i in split[subset]]
    if not ids:
        raise ConfigError(f"The teacher's {subset} split is empty ({manifest}); choose another --subset.")
    if (out / LOGITS_MANIFEST).exists():
        raise ConfigError(f"{out} already holds stored teacher logits; give a new --out folder.")
    teacher = load_network(ckpt)
    predictor = Predictor.from_network(teacher.net, teacher.config, tta_hflip=tta_hflip, tta_scales=tta_scales,
                                       device=device, bf16=bf16)
    data = primary_data_config(OmegaConf.create(teacher.config["data"]))
    root = Path(data_root) if data_root is not None else Path(data.root)
    files = [root / data.images.format(id=i) for i in ids]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise DataError(f"{len(absent)} of the teacher's {subset} photos are missing (e.g. {absent[:3]}): give "
                        "--data-root <the folder holding images/>.")
    (out / "logits").mkdir(parents=True, exist_ok=True)
    for start in range(0, len(ids), batch_size):
        photos = [read_photo(f) for f in files[start:start + batch_size]]
        for n, scores in enumerate(predictor.scores(photos), start):
            np.save(out / "logits" / f"{n}.npy", scores.permute(1, 2, 0).numpy().astype(np.float16))
    (out / "split.json").write_text(json.dumps(split, indent=1))
    heads = {h.name: list(h.class_names) for h in predictor.heads}
    (out / LOGITS_MANIFEST).write_text(json.dumps({
        "checkpoint": str(ckpt), "subset": subset, "root": str(root), "heads": heads, "tta_hflip": tta_hflip,
        "tta_scales": list(tta_scales), "dtype": "float16", "ids": ids}, indent=1))
    return out


def subset_ids(ids: Mapping) -> dict[str, set[str]]:
    """Photo ids per subset of a split manifest: one set's ``{subset: ids}``, or several sets'
    ``{set: {subset: ids}}`` (each id then prefixed by its set's name)."""
    out = {name: set() for name in SUBSETS}
    for key, value in ids.items():
        if key in SUBSETS and isinstance(value, (list, tuple)):
            out[key] |= {str(i) for i in value}
        elif isinstance(value, Mapping):
            for subset, members in subset_ids(value).items():
                out[subset] |= {f"{key}/{i}" for i in members}
    return out


def teacher_split_file(path: Path) -> Path:
    """The ``split.json`` naming a teacher's photos: beside the ``checkpoints/`` folder of its checkpoint, or
    the copy in a folder of its stored logits."""
    return path / "split.json" if path.is_dir() else path.parent.parent / "split.json"


def check_teacher_split(path: Path, ids: Mapping) -> None:
    """Refuse a teacher that learned this run's test photos (its training or validation photos) or its
    validation photos (its training photos): the student would learn them through it. ``path``: the
    teacher's checkpoint, or a folder of its stored logits (which holds a copy of its ``split.json``)."""
    manifest = teacher_split_file(path)
    if not manifest.is_file():
        raise ConfigError(
            f"Cannot check which photos teacher {path} learned: {manifest} is missing (train.py writes it beside "
            "checkpoints/). Copy the teacher's run folder whole, or give distill.check_split=false if you are "
            "sure it never saw this run's validation and test photos.")
    teacher = subset_ids(json.loads(manifest.read_text()))
    student = subset_ids(ids)
    for subset, seen, what in (("test", teacher["train"] | teacher["val"], "trained or selected on"),
                               ("val", teacher["train"], "trained on")):
        leaked = sorted(student[subset] & seen)
        if leaked:
            raise ConfigError(
                f"Teacher {path} was {what} {len(leaked)} of this run's {subset} photos (e.g. {leaked[:5]}, from "
                f"{manifest}): distilling it would leak them into training. Train the teacher on this run's "
                f"training photos only (the same data.seed and data.split), or distil into a run without a "
                f"{subset} split.")
