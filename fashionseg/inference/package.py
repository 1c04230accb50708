"""Model packages: the unit a user shares, read from a folder or a Hugging Face Hub id.

A package is a folder (``python export.py ckpt_path=<ckpt> package=<dir>`` writes one):

- ``model.safetensors``: the network's weights (safetensors: tensors only, nothing to run on load);
- ``config.yaml``: ``run`` (the training run's config: network, task, classes, palette, input size) and
  ``inference`` (the test-time options chosen on validation: ``tta_hflip``, ``tta_scales``, ``postprocess``);
- ``metrics.json``: its test scores with the hash of the split they were computed on;
- ``README.md``: the model card, with Hugging Face front matter;
- optionally ``model.onnx`` and ``model.int8.onnx``.

``resolve`` turns what a user gives (a ``.ckpt`` file, a package folder, or ``user/repo`` on the Hub,
fetched by ``huggingface_hub`` into its own cache, which ``HF_HUB_OFFLINE=1`` reads without a network)
into a local path; ``load_package`` rebuilds the network from it.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fashionseg.core.errors import ConfigError

WEIGHTS, CONFIG, METRICS, CARD = "model.safetensors", "config.yaml", "metrics.json", "README.md"
ONNX, ONNX_INT8 = "model.onnx", "model.int8.onnx"
FILES = (WEIGHTS, CONFIG, METRICS, CARD, ONNX, ONNX_INT8)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user/repo


def is_package(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def resolve(source: str | Path, revision: str | None = None) -> Path:
    """A local path for ``source``: a checkpoint file or a package folder as they are, a Hub id downloaded.

    Raises ``ConfigError`` naming ``source`` when it is none of these, or cannot be fetched.
    """
    path = Path(source)
    if path.is_file() or is_package(path):
        return path
    if path.is_dir():
        raise ConfigError(f"{path} is a folder but not a model package: a package holds {WEIGHTS} and {CONFIG}. "
                          "Write one with `python export.py ckpt_path=<file.ckpt> package=<dir>`.")
    if not HUB_ID.match(str(source)) or str(source).endswith((".ckpt", ".pt", ".pth")):
        raise ConfigError(f"{source} does not exist. Give a checkpoint file (.ckpt), a model package folder, or a "
                          "Hugging Face Hub id (user/repo).")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(str(source), revision=revision, allow_patterns=list(FILES))
    except Exception as e:  # offline and not cached, no such repo, no access
        raise ConfigError(
            f"Cannot fetch the model package {source} (revision {revision or 'main'}) from the Hugging Face Hub: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Offline (HF_HUB_OFFLINE=1) it must "
            "already be in the huggingface_hub cache; or give a local package folder or .ckpt file."
        ) from None
    if not is_package(folder):
        raise ConfigError(f"The Hub repository {source} (revision {revision or 'main'}) is not a fashionseg model "
                          f"package: it has no {WEIGHTS} and {CONFIG}.")
    return Path(folder)


def read_package_config(folder: str | Path) -> dict:
    """A package's config.yaml: ``{"run": <run config>, "inference": {...}}`` (plain dicts and lists)."""
    path = Path(folder) / CONFIG
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"Cannot read {path} ({type(e).__name__}: {e}); export the package again.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("run"), dict):
        raise ConfigError(f"{path} has no `run` config; it was not written by fashionseg's export.py.")
    doc.setdefault("inference", {})
    return doc
