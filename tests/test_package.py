"""Model packages (issue 43): export.py package=<dir> writes them, and predict, eval and Predictor.from_pretrained read
them from a folder or a Hugging Face Hub id (offline, from a pre-filled cache)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, compose_cfg
from PIL import Image

from fashionseg.core.errors import ConfigError
from fashionseg.evaluation.evaluate import evaluate
from fashionseg.inference import Predictor
from fashionseg.serving.export import export
from fashionseg.serving.predict import predict
from fashionseg.training.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    """A finished tiny run: its best checkpoint, results.json and split.json."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg("train", ["task=person", "model.net.encoder_weights=null", f"data.root={data_root}",
                                f"paths.output_dir={out}", "data.image_size=[96,64]", "data.batch_size=2",
                                "trainer.max_epochs=1", "trainer.precision=32-true",
                                "trainer.enable_progress_bar=false"])
    _, results = train(cfg)
    return out, results


@pytest.fixture(scope="module")
def package(run, tmp_path_factory):
    out, results = run
    folder = tmp_path_factory.mktemp("pkg") / "person-model"
    export(compose_cfg("export", [f"ckpt_path={results['best_checkpoint']}", f"package={folder}", "postprocess=guided",
                                  "postprocess.guided.radius=4", f"paths.output_dir={folder.parent}"]))
    return folder


def test_a_package_holds_weights_config_metrics_and_a_model_card(package, run):
    _, results = run
    assert sorted(p.name for p in package.iterdir()) == ["README.md", "config.yaml", "metrics.json",
                                                         "model.safetensors"]
    config = yaml.safe_load((package / "config.yaml").read_text())
    assert config["run"]["task"]["class_names"] == ["background", "person"]
    assert config["inference"]["postprocess"]["guided"]["radius"] == 4
    metrics = json.loads((package / "metrics.json").read_text())
    assert metrics["test"] == results["test"] and len(metrics["split_sha256"]) == 64
    card = (package / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "fashionseg" and front["datasets"] == ["fashionista"] and "person" in front["tags"]
    assert f"| mIoU | {100 * results['test']['miou']:.2f}% |" in card
    assert "Predictor.from_pretrained" in card and "python train.py" in card and "research use" in card


def test_predict_model_package_gives_the_checkpoints_label_maps(package, run, data_root, tmp_path):
    _, results = run
    photo = data_root / "images" / "0003.jpg"
    cli = subprocess.run([sys.executable, "predict.py", f"model={package}", f"input={photo}",
                          f"output={tmp_path / 'pkg'}", "postprocess=none", f"hydra.run.dir={tmp_path / 'r'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"outputs written to {tmp_path / 'pkg'}" in cli.stdout + cli.stderr
    predict(compose_cfg("predict", [f"ckpt_path={results['best_checkpoint']}", f"input={photo}",
                                    f"output={tmp_path / 'ckpt'}", f"paths.output_dir={tmp_path}"]))
    a, b = (np.array(Image.open(tmp_path / d / "0003_label.png")) for d in ("pkg", "ckpt"))
    assert a.shape == (96, 64) and np.array_equal(a, b)


def test_eval_scores_a_package_as_its_checkpoint(package, run, data_root, tmp_path):
    _, results = run
    scores = [evaluate(compose_cfg("eval", [f"ckpt_path={model}", f"data.root={data_root}",
                                            f"paths.output_dir={tmp_path / name}"]))["scores"]
              for name, model in (("pkg", package), ("ckpt", results["best_checkpoint"]))]
    assert scores[0] == scores[1]


def hub_cache(cache, repo_id: str, package) -> None:
    """huggingface_hub's cache layout, as a download of ``repo_id`` at main would leave it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(package, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_from_pretrained_reads_a_hub_id_from_the_offline_cache(package, run, data_root, tmp_path):
    _, results = run
    hub_cache(tmp_path / "hub", "someone/person-model", package)
    script = (
        "import numpy as np; from fashionseg.core.io import read_photo; from fashionseg.inference import Predictor\n"
        f"p = Predictor.from_pretrained('someone/person-model')\n"
        f"np.save({str(tmp_path / 'label.npy')!r}, p([read_photo({str(data_root / 'images' / '0004.jpg')!r})])[0])\n"
        "try:\n    Predictor.from_pretrained('someone/not-cached')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = Predictor.from_checkpoint(results["best_checkpoint"])
    assert np.array_equal(np.load(tmp_path / "label.npy"), expected([np.array(Image.open(data_root / "images" /
                                                                                          "0004.jpg"))])[0])
    assert "ConfigError Cannot fetch the model package someone/not-cached" in proc.stdout
    assert "HF_HUB_OFFLINE=1" in proc.stdout


def test_what_is_neither_file_package_nor_hub_id_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nothing.ckpt does not exist. Give a checkpoint file"):
        Predictor.from_pretrained(str(tmp_path / "nothing.ckpt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="is a folder but not a model package"):
        Predictor.from_pretrained(str(tmp_path / "folder"))
