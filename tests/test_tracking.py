"""Experiment tracking and sweeps, offline: W&B files, sweep summaries, Optuna, a failing job, DDP on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, load_script, small_overrides

summarize = load_script("summarize_runs").summarize


def run_train(args: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def sweep_overrides(data_root: Path, tmp_path: Path) -> list[str]:
    return [o for o in small_overrides(data_root, tmp_path) if not o.startswith("paths.output_dir")] + [
        "model=deeplabv3plus", "model.net.encoder_weights=null", "task=person"]


def read_wandb_records(run_file: Path) -> list:
    """Records of an offline .wandb file: W&B's LevelDB-style log (7-byte file header, 32 KiB blocks,
    chunks with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST), each a protobuf Record."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a chunk header: the block is padded
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += block - pos % block
            continue
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_has_config_history_and_masks(train_cfg, tmp_path, monkeypatch):
    from fashionseg.training.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_cfg("logger=wandb", "trainer.max_epochs=2", "callbacks.prediction_images.every_n_epochs=1",
                    "callbacks.prediction_images.num_images=2", "task=fashion")
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))
    run = runs[0]
    records = read_wandb_records(next(run.glob("*.wandb")))
    config_keys = {u.key for r in records if r.HasField("config") for u in r.config.update}
    assert "config" in config_keys  # the full resolved Hydra config
    config_json = next(json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update
                       if u.key == "config")
    assert config_json["model"]["name"] == "deeplabv3plus" and config_json["task"]["name"] == "fashion"
    # History rows (newer W&B writes nested keys: "val/predictions/_type" etc.).
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in records if r.HasField("history")]
    assert sum("val/miou" in h for h in history) == 2 and any("train/loss_step" in h for h in history)
    assert any("val/iou_dress" in h for h in history)
    panels = [h for h in history if "val/predictions/_type" in h]
    assert panels and json.loads(panels[0]["val/predictions/_type"]) == "images/separated"
    assert "val/predictions/all_masks" in panels[0]  # prediction and ground-truth mask layers
    assert any("val/confusion_matrix/_type" in h for h in history)
    masks = list((run / "files" / "media" / "images" / "mask").rglob("*.png"))
    assert masks, "mask PNGs of the validation panel"


@pytest.mark.slow  # a 3-job sweep; test_optuna_two_trials sweeps and summarises by default
def test_sweep_with_a_failing_job_its_own_wandb_runs_and_summary(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    # Job 0's loss turns NaN at its third step, after W&B started; job 1 trains normally.
    proc = run_train(["-m", *sweep_overrides(data_root, tmp_path), f"hydra.sweep.dir={sweep}", "logger=wandb",
                      "~loss", "+loss._target_=helpers.NaNAfterSteps", "+loss.steps=2,1000"],
                     PYTHONPATH=str(ROOT / "tests"))
    assert proc.returncode != 0 and "NonFiniteLossError" in proc.stderr, proc.stderr[-3000:]
    runs = {job: list((sweep / job / "wandb").glob("offline-run-*")) for job in ("0", "1")}
    assert len(runs["0"]) == 1 and len(runs["1"]) == 1, runs
    records = {job: read_wandb_records(next(runs[job][0].glob("*.wandb"))) for job in runs}
    history = {job: [{i.key or "/".join(i.nested_key) for i in r.history.item} for r in records[job]
                     if r.HasField("history")] for job in records}
    assert not any("val/miou" in h for h in history["0"]), "job 1's metrics landed in job 0's run"
    assert sum("val/miou" in h for h in history["1"]) == 1
    run_id = json.loads((sweep / "1" / "results.json").read_text())["config"]["logger"]["wandb"]["id"]
    assert runs["1"][0].name.endswith(run_id)
    exits = {job: [r.exit.exit_code for r in records[job] if r.HasField("exit")] for job in records}
    assert exits == {"0": [1], "1": [0]}, exits
    # The failed job's results never appear; the summary lists it last, with its error.
    assert not (sweep / "0" / "results.json").exists() and (sweep / "1" / "results.json").exists()
    summary = summarize(sweep)
    assert [j["state"] for j in summary["jobs"]] == ["done", "failed"], summary["table"]
    assert "The run was stopped" in summary["jobs"][1]["error"] and summary["swept"] == ["loss.steps"]
    for name in ("summary.txt", "summary.csv", "summary.png"):
        assert (sweep / name).stat().st_size > 0


def test_optuna_two_trials(data_root, tmp_path):
    sweep = tmp_path / "optuna"
    proc = run_train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *sweep_overrides(data_root, tmp_path),
                      f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.glob("*/results.json"))) == 2
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "best_value" in best
    assert len(summarize(sweep)["jobs"]) == 2
    # The study is in an SQLite file in the sweep folder, and the log says so; the summary reads it.
    assert (sweep / "optuna.db").is_file() and f"Storage: sqlite:///{sweep}/optuna.db" in proc.stdout + proc.stderr
    assert summarize(sweep)["study"]["trials"] == {"complete": 2}


@pytest.mark.slow  # three sweeps of tiny trainings, two at once
def test_two_processes_share_one_optuna_study_and_a_relaunch_adds_to_it(data_root, tmp_path):
    import optuna

    sweep = tmp_path / "shared"
    args = ["hparams_search=optuna", *sweep_overrides(data_root, tmp_path), f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline"}
    workers = [subprocess.Popen([sys.executable, "train.py", "-m", *args, "hydra.sweeper.n_trials=2",
                                 f"hydra.sweeper.sampler.seed={seed}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (1, 2)]
    for worker in workers:
        out = worker.communicate(timeout=600)[0]
        assert worker.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name="fashionseg", storage=f"sqlite:///{sweep}/optuna.db")
    numbers = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(numbers) == [0, 1, 2, 3]  # 2 + 2 trials, no number twice
    assert len(list(sweep.glob("*/results.json"))) == 4  # each trial in a folder of its own
    again = run_train([*args, "hydra.sweeper.n_trials=1"])
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="fashionseg", storage=f"sqlite:///{sweep}/optuna.db")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5
    summary = load_script("summarize_runs").summarize(sweep)  # every process's trials, from the study
    assert summary["study"]["trials"] == {"complete": 5} and len(summary["jobs"]) == 5
    assert (sweep / "study.png").is_file()


@pytest.mark.slow  # two processes; the default set's time goes to single-process runs
def test_ddp_two_cpu_processes(data_root, tmp_path):
    out = tmp_path / "ddp"
    overrides = [o for o in small_overrides(data_root, out)]
    proc = run_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                      "model.net.encoder_weights=null", "task=person", *overrides, f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["miou"] > 0 and results["config"]["trainer"]["strategy"] == "ddp"
    assert not list(out.glob("results.before-resume-*.json"))  # one process writes the results, once


@pytest.mark.parametrize("env, offline", [({"WANDB_MODE": "offline"}, True), ({"WANDB_API_KEY": "x" * 40}, False)])
def test_wandb_mode_choice(env, offline, monkeypatch, tmp_path, caplog):
    from omegaconf import OmegaConf

    from fashionseg.core.tracking import configure_wandb

    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = OmegaConf.create({"logger": {"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger",
                                                 "project": "p", "save_dir": str(tmp_path), "offline": None,
                                                 "group": None, "name": None}}})
    configure_wandb(cfg)
    assert cfg.logger.wandb.offline is offline
    assert ("W&B: offline" in caplog.text) is offline


def test_slurm_launcher_config_composes():
    from fashionseg.core.config import compose_config

    cfg = compose_config("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.gpus_per_node == 1


def test_sweep_file_drives_train_py_with_hydra_overrides():
    import yaml

    from tests.conftest import compose_cfg

    sweep = yaml.safe_load((ROOT / "sweeps" / "fashion.yaml").read_text())
    assert sweep["program"] == "train.py" and "${args_no_hyphens}" in sweep["command"]
    # Every swept key is a valid override of the training config.
    for key, spec in sweep["parameters"].items():
        for value in spec.get("values") or [spec["min"], spec["max"]]:
            cfg = compose_cfg("train", [f"{key}={value}"])
            if key == "loss":  # a group: its config file was composed
                assert cfg.loss == compose_cfg("train", [f"loss={value}"]).loss and "_target_" in cfg.loss
            else:
                assert OmegaConf.select(cfg, key) == yaml.safe_load(str(value)), (key, value)


@pytest.mark.slow  # two local processes through submitit
def test_a_sweep_through_the_submitit_local_launcher_finds_both_jobs_results(data_root, tmp_path):
    sweep = tmp_path / "submitit"
    proc = run_train(["-m", "hydra/launcher=local", *sweep_overrides(data_root, tmp_path), "optimizer.lr=1e-3,3e-4",
                      f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert [r["config"]["optimizer"]["lr"] for r in results] == [1e-3, 3e-4]
    assert list(sweep.glob(".submitit/*/*_result.pkl")), "submitit ran the jobs"
    assert len(load_script("summarize_runs").summarize(sweep)["jobs"]) == 2


def submitit_tasks(folder: Path) -> list[int]:
    """The processes submitit's local executor started for the jobs of the sweep in ``folder``."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in command and str(folder) in command:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow  # one job of two DDP processes through submitit
def test_a_ddp_job_of_two_tasks_through_submitit_trains_each_photo_once_per_epoch(data_root, tmp_path):
    sweep, seen = tmp_path / "ddp", tmp_path / "seen"
    proc = run_train(["-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "trainer=ddp",
                      "trainer.accelerator=cpu", "trainer.devices=2", *sweep_overrides(data_root, tmp_path),
                      "data.batch_size=5", f"hydra.sweep.dir={sweep}", "+callbacks.seen._target_=helpers.SeenIds",
                      f"+callbacks.seen.folder={seen}"], PYTHONPATH=str(ROOT / "tests"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = next(p for p in sweep.iterdir() if (p / "results.json").is_file())
    results = json.loads((job / "results.json").read_text())
    assert results["test"]["miou"] > 0 and results["config"]["trainer"]["strategy"] == "ddp"
    assert not list(job.glob("results.before-resume-*.json"))  # one process writes the results
    log = (job / "train.log").read_text()
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log  # submitit's two tasks are Lightning's two processes
    ranks = [[i for line in (seen / f"seen-{r}.jsonl").read_text().splitlines() for i in json.loads(line)["ids"]]
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and sorted(ranks[0] + ranks[1]) == sorted(results["split"]["train"])


@pytest.mark.slow  # a local submitit job, preempted and requeued
def test_a_preempted_job_saves_is_requeued_and_resumes_from_its_own_last_checkpoint(data_root, tmp_path):

    from submitit.local.local import LocalJobEnvironment

    sweep = tmp_path / "requeue"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=local", *sweep_overrides(data_root, tmp_path),
           "trainer.max_epochs=6", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    first = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    tasks = submitit_tasks(sweep)
    assert proc.poll() is None and len(tasks) == 1, proc.stdout.read()[-3000:] if proc.poll() is not None else tasks
    os.kill(tasks[0], LocalJobEnvironment._usr_sig())  # what a cluster sends before pre-empting or timing a job out
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    logs = "".join(p.read_text() for p in [*(sweep / ".submitit").glob("*/*_log.*"), sweep / "0" / "train.log"])
    saved = re.search(r"exit 144 \(a signal\): saved .*last.ckpt \(epoch (\d+), step (\d+)\)", logs)
    assert "this job is preempted" in logs and "Requeued job" in logs and saved, logs[-3000:]
    assert f"Resuming {sweep / '0'} from {first}" in logs
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["epochs"] == 6 and results["images_seen"] == 6 * 10  # no epoch trained twice, none lost


def test_every_slurm_option_is_documented_with_an_override_that_composes():
    import dataclasses
    import shlex

    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    from fashionseg.core.config import compose_config

    lines = (ROOT / "fashionseg" / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text().splitlines()
    options = {f.name: f.default for f in dataclasses.fields(SlurmQueueConf) if f.name != "_target_"}
    overrides = {}
    for option in options:
        at = next((i for i, line in enumerate(lines) if line.startswith(f"{option}:")), None)
        assert at is not None and lines[at - 1].startswith("#   ") and lines[at - 2].startswith("# "), option
        (overrides[option],) = shlex.split(lines[at - 1][1:])  # the override as a shell passes it
        assert overrides[option].lstrip("+").startswith(f"hydra.launcher.{option}="), (option, overrides[option])
    launcher = compose_config("train", ["hydra/launcher=slurm", *overrides.values()],
                              return_hydra_config=True).hydra.launcher
    for option, default in options.items():  # each override took effect
        assert launcher[option] not in (None, {}) and launcher[option] != default, (option, overrides[option])
