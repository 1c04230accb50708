"""A network's heads: which of its output channels are which task's classes.

A person or fashion network has one head, all of its channels. A joint network (``task=joint``) has
one head per task of ``task.heads``, side by side in the output (person's 2 channels, then
fashion's 7): each is a classifier of its own over the same decoder, with its own softmax, loss and
metrics, and one forward pass serves every task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Head:
    """One task's classes in a network's output: channels ``start .. start + K``."""

    name: str
    class_names: tuple[str, ...]
    start: int = 0
    palette: tuple[tuple[int, ...], ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> slice:
        return slice(self.start, self.start + self.num_classes)


def task_heads(task: Mapping) -> list[Head]:
    """The heads of a task config (plain or OmegaConf): the task itself, or each task of ``task.heads``
    in order, their channels consecutive."""
    nodes = list(task["heads"].items()) if task.get("heads") else [(task["name"], task)]
    heads, start = [], 0
    for name, node in nodes:
        palette = node.get("palette")
        heads.append(Head(str(name), tuple(node["class_names"]), start,
                          tuple(tuple(int(v) for v in c) for c in palette) if palette else None))
        start += len(node["class_names"])
    return heads


def heads_from_names(class_names: Sequence[str] | Mapping[str, Sequence[str]], name: str = "") -> list[Head]:
    """Heads from K class names (one head) or ``{task: class names}`` (one head per task, in order)."""
    if isinstance(class_names, Mapping):
        return task_heads({"heads": {n: {"class_names": list(c)} for n, c in class_names.items()}})
    return [Head(name, tuple(class_names))]


def total_classes(num_classes: int | Sequence[int]) -> int:
    """A network's output channels: K, or the sum of its heads' class counts (``task.num_classes=[2, 7]``)."""
    return num_classes if isinstance(num_classes, int) else sum(int(k) for k in num_classes)


def all_class_names(heads: Sequence[Head]) -> list[str]:
    """The class names of every output channel, heads in order."""
    return [c for h in heads for c in h.class_names]


def head_label(label: np.ndarray, heads: Sequence[Head], head: Head) -> np.ndarray:
    """A head's label map (H, W) from a photo's decoded labels: the map itself for one head, or the head's
    layer of the (H, W, heads) stack that a joint task's data module holds."""
    return label[..., heads.index(head)] if len(heads) > 1 else label


def head_targets(target: torch.Tensor, heads: Sequence[Head]) -> list[torch.Tensor]:
    """Each head's label maps: ``target`` is (B, H, W) for one head, (B, n_heads, H, W) for several."""
    if len(heads) == 1:
        return [target]
    if target.ndim != 4 or target.shape[1] != len(heads):
        raise ValueError(f"A network with heads {[h.name for h in heads]} needs one label map per head, "
                         f"(B, {len(heads)}, H, W); got {tuple(target.shape)}.")
    return list(target.unbind(1))
