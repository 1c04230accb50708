"""Opening a checkpoint never runs code (issue 43): every reader refuses a pickled payload, and a checkpoint
one trusts is converted once with scripts/convert_checkpoint.py --trust."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_cfg, load_script
from omegaconf import OmegaConf

from fashionseg.core.errors import ConfigError
from fashionseg.evaluation.evaluate import evaluate
from fashionseg.inference import load_network
from fashionseg.serving.app import load_predictors
from fashionseg.serving.predict import predict
from fashionseg.training.train import train

REFUSED = r"holds objects that loading would have to run code to rebuild.*python scripts/convert_checkpoint.py --trust"


class Payload:
    """What a malicious checkpoint carries: unpickling it runs a shell command (here: creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def payload_ckpt(person_ckpt, tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = torch.load(person_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"]["note"] = Payload(marker)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    yield path
    assert not marker.exists(), "the payload ran"


def test_eval_refuses_a_payload(payload_ckpt, data_root, tmp_path):
    with pytest.raises(ConfigError, match=REFUSED):
        evaluate(compose_cfg("eval", [f"ckpt_path={payload_ckpt}", f"data.root={data_root}",
                                      f"paths.output_dir={tmp_path / 'eval'}"]))


def test_predict_refuses_a_payload(payload_ckpt, data_root, tmp_path):
    with pytest.raises(ConfigError, match=REFUSED):
        predict(compose_cfg("predict", [f"ckpt_path={payload_ckpt}", f"input={data_root / 'images'}",
                                        f"output={tmp_path / 'out'}", f"paths.output_dir={tmp_path / 'out'}"]))


def test_the_demo_refuses_a_payload(payload_ckpt):
    with pytest.raises(ConfigError, match=REFUSED):
        load_predictors({"person": str(payload_ckpt)})


def test_resume_refuses_a_payload(payload_ckpt, train_cfg):
    run_dir = payload_ckpt.parents[1]
    with pytest.raises(ConfigError, match=REFUSED):
        train(train_cfg("task=person", "ckpt_path=last", f"paths.output_dir={run_dir}"))
    with pytest.raises(ConfigError, match=REFUSED):  # another run's file, continued in a new folder
        train(train_cfg("task=person", f"ckpt_path={payload_ckpt}"))


def test_a_plain_checkpoint_written_before_this_change_still_loads(person_ckpt):
    trained = load_network(person_ckpt)  # written with torch.save, as train.py did before (conftest)
    assert trained.config["task"]["name"] == "person"


def test_a_trusted_checkpoint_is_converted_once_and_then_loads(person_ckpt, tmp_path):
    ckpt = torch.load(person_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["config"] = OmegaConf.create(ckpt["hyper_parameters"]["config"])  # a pickled object
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(ConfigError, match=REFUSED):
        load_network(old)
    refused = subprocess.run([sys.executable, "scripts/convert_checkpoint.py", str(old), "--out", str(tmp_path / "x")],
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--trust" in refused.stderr and not (tmp_path / "x").exists()
    new = tmp_path / "new.ckpt"
    assert load_script("convert_checkpoint").main(["--trust", str(old), "--out", str(new)]) == 0
    assert load_network(new).config == load_network(person_ckpt).config
    shutil.rmtree(tmp_path, ignore_errors=True)
