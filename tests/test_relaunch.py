"""A run folder is never clobbered: relaunches skip what finished and resume what did not; SIGTERM is a failure
with a checkpoint; a killed first save of last.ckpt still resumes (issue 41)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, small_overrides

from fashionseg.cli import run
from fashionseg.core.errors import Interrupted
from fashionseg.training.train import train


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder but the logs that a relaunch appends to, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".log"}


def test_relaunching_a_finished_run_skips_it_and_changes_nothing(train_cfg, tmp_path, caplog):
    cfg = train_cfg("task=person", "trainer.max_epochs=1")
    metric, results = train(cfg)
    before = snapshot(tmp_path)
    caplog.set_level(logging.INFO)
    again, stored = train(train_cfg("task=person", "trainer.max_epochs=1"))
    assert snapshot(tmp_path) == before
    assert again == metric == results["val_miou_best"] and stored == json.loads(json.dumps(results))
    assert "holds a finished run" in caplog.text and "skipped" in caplog.text


def test_relaunching_an_unfinished_run_resumes_it_and_never_writes_v1(train_cfg, tmp_path, caplog):
    train(train_cfg("task=person", "trainer.max_epochs=1", "test=false"))
    (tmp_path / "results.json").unlink()  # as if killed after its first epoch
    caplog.set_level(logging.INFO)
    _, results = train(train_cfg("task=person", "trainer.max_epochs=2", "test=false"))
    assert "holds an unfinished run" in caplog.text
    assert results["epochs"] == 2 and results["images_seen"] == 2 * 10  # epoch 0 was not trained again
    assert not [p.name for p in tmp_path.rglob("*-v[0-9]*")]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_a_killed_first_save_of_last_ckpt_resumes_from_the_newest_complete_checkpoint(train_cfg, tmp_path, caplog):
    train(train_cfg("task=person", "trainer.max_epochs=1", "test=false"))
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "last.ckpt").unlink()  # its save was killed: a 0-byte temporary and no last.ckpt
    (checkpoints / ".last.ckpt.k1ll3d.tmp").write_bytes(b"")
    (tmp_path / "results.json").unlink()
    caplog.set_level(logging.INFO)
    _, results = train(train_cfg("task=person", "trainer.max_epochs=2", "test=false", "ckpt_path=last"))
    assert "last.ckpt is missing (its first save was interrupted)" in caplog.text and "epoch000" in caplog.text
    assert results["epochs"] == 2 and results["images_seen"] == 20
    assert not list(checkpoints.glob("*.tmp")) and (checkpoints / "last.ckpt").is_file()


def test_a_finished_run_continued_with_ckpt_path_last_keeps_its_first_results(train_cfg, tmp_path):
    train(train_cfg("task=person", "trainer.max_epochs=1", "test=false"))
    first = (tmp_path / "results.json").read_bytes()
    train(train_cfg("task=person", "trainer.max_epochs=2", "test=false", "ckpt_path=last"))
    assert (tmp_path / "results.before-resume-1.json").read_bytes() == first
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 2


def sweep_command(data_root, tmp_path, sweep: Path, lrs: str) -> list[str]:
    overrides = [o for o in small_overrides(data_root, tmp_path) if not o.startswith(("paths.", "data.image_size"))]
    return [sys.executable, "train.py", "-m", "task=person", "model.net.encoder_weights=null", "data.limit=16",
            "data.image_size=[64,64]", *overrides, "trainer.max_epochs=2", f"optimizer.lr={lrs}",
            f"hydra.sweep.dir={sweep}"]


@pytest.mark.slow  # 25 s; the same rules run in the default set on single runs (above)
def test_relaunching_a_sweep_skips_finished_jobs_resumes_the_killed_one_and_refuses_other_values(data_root,
                                                                                                  tmp_path):
    sweep = tmp_path / "sweep"
    cmd = sweep_command(data_root, tmp_path, sweep, "1e-3,3e-4")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    job0 = snapshot(sweep / "0")
    (sweep / "1" / "results.json").unlink()  # job 1 as if killed after its last epoch
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert snapshot(sweep / "0") == job0  # results.json, metrics.csv, checkpoints, .hydra: byte-identical
    assert "holds a finished run" in (sweep / "0" / "train.log").read_text()
    assert "holds an unfinished run" in (sweep / "1" / "train.log").read_text()
    assert (sweep / "1" / "results.json").is_file()
    assert not [p.name for p in sweep.rglob("*-v[0-9]*")]

    # Other values into the same folders: refused, nothing changed.
    other = subprocess.run(sweep_command(data_root, tmp_path, sweep, "1e-2,3e-4"), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert other.returncode != 0
    refused = "launched with other overrides: it had optimizer.lr=0.001, this launch has optimizer.lr=0.01."
    assert refused in (sweep / "0" / "train.log").read_text()
    assert snapshot(sweep / "0") == job0


def test_sigterm_stops_the_run_as_interrupted_with_last_ckpt_where_it_stopped(train_cfg, tmp_path):
    cfg = train_cfg("task=person", "trainer.max_epochs=5", "+callbacks.sigterm._target_=helpers.SigtermAtStep",
                    "+callbacks.sigterm.step=7")
    with pytest.raises(Interrupted, match=rf"Received SIGTERM at epoch 1, step 7: .*Resume with: python train.py "
                                          rf"hydra.run.dir={tmp_path} ckpt_path=last"):
        train(cfg)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 7
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(SystemExit) as stopped:  # the entry point: exit status 143, sweep or not
        run(lambda c: train(c), train_cfg("task=person", "trainer.max_epochs=5", "ckpt_path=last",
                                         "+callbacks.sigterm._target_=helpers.SigtermAtStep",
                                         "+callbacks.sigterm.step=9"))
    assert stopped.value.code == 143


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_logs_how_to_resume_and_exits_143(data_root, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in small_overrides(data_root, tmp_path) if not o.startswith(("paths.", "data.image_size"))]
    cmd = [sys.executable, "train.py", "task=person", "model.net.encoder_weights=null", "data.image_size=[32,32]",
           *overrides, "trainer.max_epochs=1000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    first = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, out[-3000:]
    log = (run_dir / "train.log").read_text()
    for text in (log, out):
        assert "Received SIGTERM" in text and f"hydra.run.dir={run_dir} ckpt_path=last" in text
    assert torch.load(first, weights_only=False)["global_step"] > 0
    assert not (run_dir / "results.json").exists()

