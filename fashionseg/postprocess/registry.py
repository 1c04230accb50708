"""The refinements by name: every ``conf/postprocess/<name>.yaml``, instantiated by Hydra."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources

import hydra
from omegaconf import OmegaConf

from fashionseg.core.config import compose_config
from fashionseg.postprocess.base import Refinement

# Refinements that need a model trained for the network first (a folder to give): not in the default lists.
TRAINED = ("superpixel_classifier",)


def refinement_names(trained: bool = True) -> list[str]:
    """Every refinement with a config (fashionseg/conf/postprocess/<name>.yaml): ``none`` first, then by name;
    ``trained=False`` leaves out those that need a trained model (``TRAINED``)."""
    names = (p.name.removesuffix(".yaml") for p in resources.files("fashionseg.conf").joinpath("postprocess").iterdir()
             if p.name.endswith(".yaml"))
    return sorted((n for n in names if trained or n not in TRAINED), key=lambda name: (name != "none", name))


def load_refinements(names: Sequence[str], overrides: Mapping | None = None) -> dict[str, Refinement]:
    """Instantiate the ``postprocess`` config of each name (fashionseg/conf/postprocess/<name>.yaml, composed
    by Hydra), with optional per-name parameter overrides, e.g. ``{"crf": {"bilateral_sxy": 40}}``."""
    if not names:
        return {}
    valid = refinement_names()
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"Unknown refinement {unknown[0]!r}; valid: {valid}.")
    cfg = compose_config("eval", [f"postprocess=[{','.join(dict.fromkeys(names))}]"])
    out = {}
    for name in names:
        node = cfg.postprocess[name]  # each file nests its config under its own name
        if overrides and name in overrides:
            node = OmegaConf.merge(node, overrides[name])
        out[name] = hydra.utils.instantiate(node)
    return out
