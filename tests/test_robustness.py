"""Runs that survive interruption and bad configuration."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, small_overrides
from fashionseg import ConfigError
from fashionseg.callbacks import NonFiniteLossError
from fashionseg.config import check_writable, validate
from fashionseg.train import train


def run_train(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_sigkill_then_resume_equals_uninterrupted_run(data_root, tmp_path):
    # U2-NetP: small checkpoints, so the race between save and kill is short; deterministic CPU kernels.
    common = [o for o in small_overrides(data_root, tmp_path) if not o.startswith("paths.")]
    common += ["model=u2netp", "trainer.max_epochs=3", "trainer.deterministic=true", "test=false"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    proc = run_train([*common, f"hydra.run.dir={straight}"])
    assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]

    proc = run_train([*common, f"hydra.run.dir={killed}"])
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    epoch_at_kill = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert epoch_at_kill < 2, "killed before the last epoch"

    # Resume with nothing but the run directory: the config comes from the checkpoint.
    proc = run_train([f"hydra.run.dir={killed}", "ckpt_path=last"])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    a, b = final_weights(straight), final_weights(killed)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), f"{key} differs after resume"
    # The optimiser state and the best-so-far metric came back too.
    assert a["state_dict"]["val_miou_best.max_value"] == b["state_dict"]["val_miou_best.max_value"] > 0
    assert (killed / "csv" / "metrics.csv").is_file() and (killed / "csv" / "resume-1" / "metrics.csv").is_file()


def test_resume_without_checkpoint_says_how(train_cfg):
    with pytest.raises(ConfigError, match=r"ckpt_path=last, but .*last.ckpt does not exist.*hydra.run.dir"):
        train(train_cfg("ckpt_path=last"))


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(train_cfg):
    # 10 training images at batch 2: 5 steps per epoch, so the NaN comes in the second epoch.
    # (DeepLabv3+ calls the loss once per step; U2-Net once per output.)
    cfg = train_cfg("trainer.max_epochs=3", "~loss", "+loss._target_=helpers.NaNAfterSteps", "+loss.steps=6")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, global step 6 .*Likely causes.*"
                                                 r"learning rate.*Last good checkpoint: .*last.ckpt"):
        train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=fast", r"optimizer.lr='fast' must be a number"),
    ("data.batch_size=2.5", r"data.batch_size=2.5 must be an integer"),
    ("trainer.max_epochs=0", r"trainer.max_epochs must be >= 1"),
    ("task=person loss=wce loss.weights=[1,1,1]", r"loss.weights has 3 values .* task=person has 2 classes"),
])
def test_more_config_errors(train_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(train_cfg(*override.split()))


def test_unwritable_output_dir_fails_at_start(train_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"Cannot write to the output directory .*a_file/run.*hydra.run.dir"):
        train(train_cfg(f"paths.output_dir={blocker / 'run'}"))


def test_full_disk_fails_at_start(tmp_path, monkeypatch):
    class Full:
        f_bavail, f_frsize = 10, 4096
    monkeypatch.setattr(os, "statvfs", lambda _: Full())
    with pytest.raises(ConfigError, match=r"Only 0 MB free under .*Free disk space"):
        check_writable(tmp_path / "run")


def test_resume_continues_the_same_wandb_run(train_cfg, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_cfg("logger=wandb", "trainer.max_epochs=1", "test=false", model="u2netp")
    train(cfg)
    run_id = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                        weights_only=False)["hyper_parameters"]["config"]["logger"]["wandb"]["id"]
    assert run_id
    resumed = train_cfg("ckpt_path=last", "trainer.max_epochs=2", "test=false", model="u2netp")
    train(resumed)
    runs = sorted(p.name for p in (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    # Both parts log to the one run id (two folders, or one when both started in the same second).
    assert runs and all(r.endswith(run_id) for r in runs), runs


def test_resume_refuses_another_model(train_cfg):
    train(train_cfg("trainer.max_epochs=1", "test=false", model="u2netp"))
    with pytest.raises(ConfigError, match="Cannot resume a model=u2netp run as model=deeplabv3plus"):
        train(train_cfg("ckpt_path=last", model="deeplabv3plus"))
