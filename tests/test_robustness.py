"""Runs that survive interruption and bad configuration."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_cfg, small_overrides
from PIL import Image

from fashionseg.core.config import check_writable, validate
from fashionseg.core.errors import ConfigError
from fashionseg.training.callbacks import NonFiniteLossError
from fashionseg.training.train import resume_config, train


def run_train(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "HYDRA_FULL_ERROR": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


# The default model (DeepLabv3+, ImageNet EfficientNet-Lite0, bf16 autocast) shrunk, and U2-NetP in float32.
KILL_RESUME_CONFIGS = {
    "deeplabv3plus": ["model=deeplabv3plus"],
    "u2netp": ["model=u2netp", "trainer.precision=32-true"],
}


# U2-NetP (no dropout) resumed identically before the loaders had generators of their own: a slow-set variant.
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m == "u2netp" else m
                                   for m in KILL_RESUME_CONFIGS])
def test_sigkill_then_resume_equals_uninterrupted_run(data_root, tmp_path, model):
    common = [o for o in small_overrides(data_root, tmp_path) if not o.startswith(("paths.", "trainer.precision"))]
    common += [*KILL_RESUME_CONFIGS[model], "trainer.max_epochs=2", "trainer.deterministic=true", "test=false"]
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
    assert epoch_at_kill == 0, "killed before the last epoch"

    # Resume with nothing but the run directory: the config comes from the checkpoint.
    proc = run_train([f"hydra.run.dir={killed}", "ckpt_path=last"])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    a, b = final_weights(straight), final_weights(killed)
    assert a["epoch"] == b["epoch"] == 1 and a["global_step"] == b["global_step"]
    differ = [key for key, tensor in a["state_dict"].items() if not torch.equal(tensor, b["state_dict"][key])]
    assert not differ, f"{len(differ)} of {len(a['state_dict'])} tensors differ after resume, e.g. {differ[:3]}"
    # The optimiser state and the best-so-far metric came back too.
    assert a["state_dict"]["val_miou_best.max_value"] == b["state_dict"]["val_miou_best.max_value"] > 0
    assert (killed / "csv" / "metrics.csv").is_file() and (killed / "csv" / "resume-1" / "metrics.csv").is_file()


def test_last_checkpoint_holds_the_latest_epoch_when_the_metric_did_not_improve(train_cfg):
    # val/miou_best never decreases, so under mode=min only the first epoch is "best".
    cfg = train_cfg("trainer.max_epochs=3", "test=false", "callbacks.model_checkpoint.monitor=val/miou_best",
                    "callbacks.model_checkpoint.mode=min", "callbacks.model_checkpoint.filename=best",
                    model="u2netp")
    _, results = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert torch.load(results["best_checkpoint"], map_location="cpu", weights_only=False)["epoch"] == 0
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 2


def tree_state(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_resuming_a_copied_run_writes_only_into_the_copy(train_cfg, tmp_path):
    # monitor=step improves every epoch: each epoch writes a new best checkpoint and deletes the previous one.
    first = ["test=false", "callbacks.model_checkpoint.monitor=step"]
    original, copy = tmp_path / "original", tmp_path / "copy"
    _, first_results = train(train_cfg(*first, "trainer.max_epochs=1", f"paths.output_dir={original}",
                                       model="u2netp"))
    shutil.copytree(original, copy, symlinks=True)
    before = tree_state(original)

    _, results = train(train_cfg("ckpt_path=last", "trainer.max_epochs=2", "test=true",
                                 f"paths.output_dir={copy}", model="u2netp"))
    assert tree_state(original) == before, "the original run folder was changed"
    assert Path(results["best_checkpoint"]).parent == copy / "checkpoints"
    assert json.loads((copy / "results.json").read_text())["best_checkpoint"] == results["best_checkpoint"]
    assert (copy / "csv" / "resume-1" / "metrics.csv").is_file()
    # The count of training photos carries over; the throughput is the resumed fit's own.
    assert first_results["images_seen"] == 10 and results["images_seen"] == 20
    assert results["images_per_s"] * results["fit_time_s"] == pytest.approx(10, rel=0.05)
    assert sorted(p.name for p in (copy / "checkpoints").glob("*.ckpt")) == ["epoch001-miou" + Path(
        results["best_checkpoint"]).name.split("miou")[1], "last.ckpt"]
    stored = torch.load(copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    config = stored["hyper_parameters"]["config"]
    assert config["paths"]["output_dir"] == str(copy)
    assert config["callbacks"]["model_checkpoint"]["dirpath"] == str(copy / "checkpoints")
    assert config["logger"]["csv"]["save_dir"] == str(copy)
    state = next(v for k, v in stored["callbacks"].items() if k.startswith("RunCheckpoint"))
    assert state["dirpath"] == str(copy / "checkpoints") and state["best_model_path"].startswith(str(copy))


@pytest.mark.parametrize("original_kept", [True, False], ids=["original-kept", "original-gone"])
def test_continuing_from_another_runs_checkpoint_tests_a_checkpoint_that_exists(train_cfg, tmp_path, original_kept):
    # val/miou_best never decreases, so under mode=min the first epoch stays the best: the continued run
    # never writes a best checkpoint of its own, and its test must load one that exists.
    never_improves = ["callbacks.model_checkpoint.monitor=val/miou_best", "callbacks.model_checkpoint.mode=min"]
    original, continued = tmp_path / "original", tmp_path / "continued"
    _, first = train(train_cfg(*never_improves, "trainer.max_epochs=1", "test=false",
                               f"paths.output_dir={original}", model="u2netp"))
    start = tmp_path / "elsewhere" / "start.ckpt"  # the file copied under another name, outside both runs
    start.parent.mkdir()
    shutil.copy(original / "checkpoints" / "last.ckpt", start)
    if not original_kept:
        shutil.rmtree(original)
    before = tree_state(original) if original_kept else None

    _, results = train(train_cfg(*never_improves, f"ckpt_path={start}", "trainer.max_epochs=2", "test=true",
                                 f"paths.output_dir={continued}", model="u2netp"))
    assert results["test"] and Path(results["best_checkpoint"]).is_file()
    if original_kept:  # its best epoch is still the best: tested where it lies, and left as it was
        assert results["best_checkpoint"] == first["best_checkpoint"]
        assert tree_state(original) == before
    else:  # the best file is gone: this run's own epoch takes its place
        assert Path(results["best_checkpoint"]).parent == continued / "checkpoints"


def test_resume_overrides_go_through_hydras_parser(train_cfg):
    train(train_cfg("trainer.max_epochs=1", "test=false", model="u2netp"))
    resumed = resume_config(train_cfg("ckpt_path=last", "optimizer.lr=1e-3", "trainer.max_epochs=2", "seed=7",
                                      "data.image_size=[64,64]", "~callbacks.lr_monitor", model="u2netp"))
    assert resumed.optimizer.lr == 1e-3 and isinstance(resumed.optimizer.lr, float)
    assert resumed.trainer.max_epochs == 2 and resumed.seed == 7 and list(resumed.data.image_size) == [64, 64]
    assert "lr_monitor" not in resumed.callbacks and "model_checkpoint" in resumed.callbacks
    validate(resumed)


def test_resume_from_a_corrupt_checkpoint_names_the_file(train_cfg):
    cfg = train_cfg("trainer.max_epochs=1", "test=false", model="u2netp")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # truncated
    with pytest.raises(ConfigError, match=rf"Cannot read checkpoint {last} .*truncated.*ckpt_path=<file>"):
        train(train_cfg("ckpt_path=last", model="u2netp"))


def test_callback_groups_compose_with_experiments():
    cfg = compose_cfg("train", ["experiment=best_person", "callbacks=ema"])
    assert {"model_checkpoint", "ema", "refinements"} <= set(cfg.callbacks)
    assert cfg.callbacks.refinements._target_.endswith("RefinementReport")
    assert list(cfg.callbacks.refinements.methods) == ["none", "guided", "crf"]
    # Adding the callback keeps what the experiment set on the others (no validation split: no monitor).
    assert cfg.callbacks.model_checkpoint.monitor is None
    several = compose_cfg("train", ["callbacks=[ema,refine,snapshots]"]).callbacks
    assert {"ema", "refinements", "snapshots"} <= set(several)


@pytest.mark.parametrize("override", ["+callbacks.refinements.methods=[none]", "+logger.csv2.save_dir=x"])
def test_a_callback_or_logger_without_target_is_an_error(train_cfg, override):
    group = override.split(".")[0].lstrip("+")
    with pytest.raises(ConfigError, match=rf"{group}\.\w+=.* has no _target_.*{group}=\[default,"):
        train(train_cfg(override, "test=false", model="u2netp"))


# The sweep (-m) variant goes through the same check with hydra.sweep.dir: a slow-set variant.
@pytest.mark.parametrize("multirun", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["run", "sweep"])
def test_unwritable_run_directory_gets_the_projects_message(tmp_path, multirun):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_train(["-m", f"hydra.sweep.dir={blocker / 'sweep'}", "seed=1,2"] if multirun
                     else [f"hydra.run.dir={blocker / 'run'}"])
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    assert re.search(r"Cannot write to the output directory .*a_file/(run|sweep).*hydra.run.dir", out), out
    assert "Traceback" not in out and "Unable to configure handler" not in out, out


def test_a_data_error_is_printed_once_without_traceback(data_root, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data_root, bad)
    label = np.array(Image.open(bad / "labels" / "0003_clothes.png"))
    label[0, 0] = 9
    Image.fromarray(label, "L").save(bad / "labels" / "0003_clothes.png")
    proc = run_train([f"data.root={bad}", f"hydra.run.dir={tmp_path / 'run'}", "model.net.encoder_weights=null"],
                     env={"HYDRA_FULL_ERROR": ""})
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1
    assert out.count("0003_clothes.png has values [9]") == 1 and "Traceback" not in out, out
    assert "Job failed: DataError" in (tmp_path / "run" / "train.log").read_text()  # for summarize_runs.py


def test_resume_without_checkpoint_says_how(train_cfg):
    with pytest.raises(ConfigError, match=r"ckpt_path=last, but .*checkpoints holds no checkpoint.*hydra.run.dir"):
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
