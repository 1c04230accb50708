"""Shared fixtures: a synthetic data set in the real on-disk format, and the real config shrunk for CPU."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

# pytest-xdist's workers share the cores: each worker, and the train/eval processes it starts, gets its share of
# threads. Two workers of two threads each on 2 cores would make OpenMP's threads wait on each other (several
# times slower). Set before torch is imported; an explicit OMP_NUM_THREADS wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(
        os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from PIL import Image  # noqa: E402

from fashionseg.core.config import compose_config  # noqa: E402

# torch.compile's one-off compile of the CRF takes tens of seconds on a fresh 2-core machine, in every process
# that refines: the tests, and the train/eval processes they start, run it eagerly (the same results). The
# compiled path has its own test, which turns compiling back on (test_postprocess.py).
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "fashionseg" / "conf")
VOC = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128] + [0] * (768 - 21)
# Distinct colours for the 7 clothes classes, so that a model can learn the synthetic task quickly.
COLOURS = np.array([[40, 90, 40], [230, 180, 150], [60, 30, 20], [200, 30, 30], [20, 20, 20], [30, 30, 160],
                    [200, 200, 40]], dtype=np.uint8)
H, W = 96, 64  # 3:2 portrait, like the real 600x400 photos


def write_palette_png(path: Path, label: np.ndarray) -> None:
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(VOC)
    im.save(path)


def make_sample(rng: np.random.Generator, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo of a blocky 'person': hair, skin, a top, pants or a dress, shoes; returns image, clothes, person."""
    clothes = np.zeros((h, w), np.uint8)
    x0, x1 = sorted(rng.integers(w // 8, w - w // 8, size=2) + np.array([0, 1]))
    x1 = max(x1, x0 + w // 4)
    top = rng.integers(h // 12, h // 6)
    rows = np.linspace(top, h - h // 12, 6).astype(int)
    clothes[rows[0]:rows[1], x0:x1] = 2            # hair
    clothes[rows[1]:rows[2], x0:x1] = 1            # skin (face)
    clothes[rows[2]:rows[3], x0:x1] = 3 if rng.random() < 0.5 else 6  # tshirt or dress
    clothes[rows[3]:rows[4], x0:x1] = 5 if clothes[rows[2], x0] == 3 else 6
    clothes[rows[4]:rows[5], x0:x1] = 4            # shoes
    person = (clothes > 0).astype(np.uint8)
    image = COLOURS[clothes].astype(np.int16) + rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), clothes, person


def write_dataset(root: Path, n: int, seed: int = 0, h: int = H, w: int = W) -> Path:
    """Write ``n`` samples (h x w) as images/NNNN.jpg, labels/NNNN_person.png, labels/NNNN_clothes.png."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for i in range(1, n + 1):
        image, clothes, person = make_sample(rng, h, w)
        Image.fromarray(image).save(root / "images" / f"{i:04d}.jpg", quality=95)
        write_palette_png(root / "labels" / f"{i:04d}_clothes.png", clothes)
        write_palette_png(root / "labels" / f"{i:04d}_person.png", person)
    (root / "labels.txt").write_text("0: background\n1: skin\n2: hair\n3: tshirt\n4: shoes\n5: pants\n6: dress")
    return root


def paint_void_bands(root, suffix="clothes", value=255):
    """Horizontal bands of ``value`` across every label map; returns the number of void pixels per id."""
    void = {}
    for path in sorted((root / "labels").glob(f"*_{suffix}.png")):
        label = np.array(Image.open(path))
        label[10:14] = value
        label[40:41] = value
        write_palette_png(path, label)
        void[path.name.removesuffix(f"_{suffix}.png")] = int((label == value).sum())
    return void


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """20 synthetic photos: a 10/2/8 split."""
    return write_dataset(tmp_path_factory.mktemp("fashionista"), 20)


def small_overrides(data_root: Path, out_dir: Path) -> list[str]:
    """Shrink the real config to a CPU smoke run on the synthetic set."""
    return [
        f"data.root={data_root}", f"paths.output_dir={out_dir}", "data.image_size=[96,64]", "data.batch_size=2",
        "data.eval_batch_size=4", "trainer.max_epochs=1", "trainer.precision=32-true",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
    ]


def compose_cfg(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config as the entry point would, with Hydra's runtime config set (overrides, choices);
    the run directory comes from paths.output_dir in tests."""
    cfg = compose_config(config_name, overrides or [], return_hydra_config=True)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def load_script(name: str) -> ModuleType:
    """A module of scripts/ (scripts are files, not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def no_weights(model: str) -> list[str]:
    """Tests run offline: no pretrained download for the smp models."""
    return ["model.net.encoder_weights=null"] if model.startswith("deeplab") else []


@pytest.fixture
def train_cfg(data_root, tmp_path):
    def make(*overrides: str, model: str = "deeplabv3plus") -> DictConfig:
        return compose_cfg("train", [f"model={model}", *no_weights(model), *small_overrides(data_root, tmp_path),
                                     *overrides])
    return make


def make_checkpoint(path: Path, data_root: Path, task: str = "person", model: str = "deeplabv3plus") -> Path:
    """A checkpoint as train.py writes it (config + weights), of an untrained small network: no training needed."""
    import torch

    from fashionseg.training.module import SegmentationModule

    cfg = compose_cfg("train", [f"model={model}", f"task={task}", *no_weights(model),
                                *small_overrides(data_root, path.parent)])
    module = SegmentationModule.from_config(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="session")
def person_ckpt(tmp_path_factory, data_root) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "person.ckpt", data_root, "person")


@pytest.fixture(scope="session")
def fashion_ckpt(tmp_path_factory, data_root) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "fashion.ckpt", data_root, "fashion")
