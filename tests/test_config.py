import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import yaml
from conftest import CONF, ROOT, compose_cfg
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from fashionseg.core.config import validate
from fashionseg.core.errors import ConfigError
from fashionseg.core.heads import task_heads

MODELS = sorted(p.stem for p in Path(CONF, "model").glob("*.yaml") if p.stem != "smp")  # smp: needs model.net.arch
TASKS = sorted(p.stem for p in Path(CONF, "task").glob("*.yaml"))
LOSSES = sorted(p.stem for p in Path(CONF, "loss").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in Path(CONF, "experiment").glob("*.yaml"))


def test_groups_are_complete():
    assert {"u2net", "u2netp", "deeplabv3", "deeplabv3plus"} <= set(MODELS)
    assert set(TASKS) == {"person", "fashion", "joint"}
    assert {"ce", "wce", "dice", "ce_dice"} <= set(LOSSES)


# Every model with every task (default loss), and every loss with every task (default model).
@pytest.mark.parametrize("model, task, loss", [*((m, t, "ce") for m in MODELS for t in TASKS),
                                               *(("deeplabv3plus", t, lo) for lo in LOSSES for t in TASKS)])
def test_every_model_task_loss_composes(model, task, loss):
    cfg = compose_cfg("train", [f"model={model}", f"task={task}", f"loss={loss}", "paths.output_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    heads = task_heads(cfg.task)  # joint: person's then fashion's classes, one count per head
    assert [len(h.class_names) for h in heads] == ([2, 7] if task == "joint" else [cfg.task.num_classes])
    assert cfg.model.net.num_classes == cfg.task.num_classes
    assert cfg.data.label == cfg.task.label and cfg.data.num_classes == cfg.task.num_classes
    if task == "joint" and loss == "wce":  # class weights are per task: refused for the joint task
        with pytest.raises(ConfigError, match="takes no class weights"):
            validate(cfg)
        return
    validate(cfg)
    if "auto" not in str(cfg.loss):
        hydra.utils.instantiate(cfg.loss)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = compose_cfg("train", [f"experiment={experiment}", "paths.output_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    validate(cfg)
    assert cfg.task_name == experiment


def test_reference_recipes_follow_the_study():
    u2 = compose_cfg("train", ["experiment=reference_u2net_person", "paths.output_dir=/tmp/x"])
    assert (u2.model.name, u2.task.name, u2.data.batch_size, u2.optimizer.lr) == ("u2net", "person", 12, 1e-3)
    dl = compose_cfg("train", ["experiment=reference_deeplabv3_fashion", "paths.output_dir=/tmp/x"])
    OmegaConf.resolve(dl)
    assert (dl.model.net.encoder_name, dl.data.batch_size) == ("resnet101", 8)
    assert list(dl.loss.weights) == [1.0] + [1.5] * 6 and dl.scheduler._target_.endswith("ReduceLROnPlateau")


@pytest.mark.parametrize("group,name", [("model", "unet9000"), ("task", "shoes"), ("loss", "hinge")])
def test_unknown_names_list_the_valid_ones(group, name):
    with pytest.raises((ConfigCompositionException, MissingConfigException)) as e:
        compose_cfg("train", [f"{group}={name}"])
    msg = str(e.value)
    assert f"Could not find '{group}/{name}'" in msg and "Available options" in msg
    valid = {"model": "deeplabv3plus", "task": "person", "loss": "wce"}[group]
    assert valid in msg


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="data.image_sise"):
        compose_cfg("train", ["data.image_sise=[64,64]"])


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=-0.001", "optimizer.lr must be > 0, got -0.001"),
    ("loss=wce loss.weights=[1.0,2.0]", "loss.weights has 2 values .* task=fashion has 7 classes"),
    ("data.image_size=[100,64]", r"data.image_size=\[100, 64\] must be .* divisible by 32"),
    ("data.batch_size=0", "data.batch_size must be >= 1"),
])
def test_impossible_values_fail_fast(override, message):
    cfg = compose_cfg("train", [*override.split(), "paths.output_dir=/tmp/x"])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.parametrize("override,message", [
    ("distill=kd", "distill.teacher is not set: give distill.teacher=<teacher run>/checkpoints/<file>.ckpt"),
    ("distill=kd distill.teacher=/nowhere/t.ckpt", "distill.teacher=/nowhere/t.ckpt does not exist"),
])
def test_a_missing_teacher_fails_before_any_data_is_read(override, message, tmp_path):
    # Distillation checks its own settings (training layer), right after the shared checks: the data root
    # here does not exist, so reading any data first would fail with another message.
    from fashionseg.training.train import train

    cfg = compose_cfg("train", [*override.split(), f"paths.output_dir={tmp_path / 'run'}",
                                f"data.root={tmp_path / 'no-data'}"])
    validate(cfg)  # the shared checks leave a feature's settings to its own layer
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing written either


def test_optuna_search_composes_and_searches_real_keys():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from fashionseg.core.config import compose_config

    cfg = compose_config("train", ["hparams_search=optuna", "paths.output_dir=/tmp/x"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.hydra.mode.name == "MULTIRUN"
    # Every searched key is a key or group of the training config, and each of its choices composes.
    for override in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()]):
        sweep = override.value()
        values = [sweep.start, sweep.end] if hasattr(sweep, "start") else list(override.sweep_iterator())
        for value in values:
            one = compose_cfg("train", [f"{override.key_or_group}={value}", "paths.output_dir=/tmp/x"])
            if override.key_or_group != "loss":
                assert OmegaConf.select(one, override.key_or_group) == value
            validate(one)


def test_make_browser_never_calls_sudo(tmp_path):
    """Not root and no Chromium: `make browser` says how to enable the browser test, and calls no sudo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "sudo").write_text(f"#!/bin/sh\ntouch {tmp_path / 'sudo-called'}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["make", "-s", "browser", "CHROMIUM="], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "browser test will be skipped" in proc.stdout and not (tmp_path / "sudo-called").exists()


def test_console_script_composes_from_any_directory(tmp_path):
    """`pip install .` gives fashionseg-train; the configs ship inside the package, so no checkout is needed."""
    script = Path(sys.executable).parent / "fashionseg-train"
    assert script.exists(), "console scripts missing: reinstall the package (pip install -e . or make install)"
    proc = subprocess.run([str(script), "task=person", "model=u2netp", "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = yaml.safe_load(proc.stdout)
    assert job["model"]["name"] == "u2netp" and job["task"]["name"] == "person"
    assert not list(tmp_path.iterdir()), "--cfg job writes nothing"


def test_root_entry_point_logs_to_its_own_file(data_root, tmp_path):
    """`python train.py` at the repo root is the same entry point; its log is still <run dir>/train.log."""
    proc = subprocess.run([sys.executable, "train.py", f"data.root={tmp_path / 'nothing'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Data set not found" in proc.stdout + proc.stderr
    assert "Data set not found" in (tmp_path / "run" / "train.log").read_text()


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    import fashionseg
    from fashionseg.cli import main

    assert fashionseg.__version__ == version("fashionseg")
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"fashionseg {fashionseg.__version__}"
    main([])
    assert "usage: fashionseg" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown command 'fit'; choose one of train, eval"):
        main(["fit"])


def test_fashionseg_command_runs_an_entry_point_from_any_directory(tmp_path):
    # `fashionseg train ...` is `fashionseg-train ...`: the same Hydra main, the configs inside the package.
    script = Path(sys.executable).with_name("fashionseg")
    out = subprocess.run([str(script), "train", "task=person", "model=fpn", "--cfg", "job"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(out.stdout)
    assert (job["task"]["name"], job["model"]["name"]) == ("person", "fpn")
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("fashionseg ")


# A newcomer's first hour (issue 43): one line per user error, --help of the command's own, a quiet console.

def test_eval_without_ckpt_path_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "eval.py", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": ""})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert [line for line in out.splitlines() if line.strip()] == [
        next(line for line in out.splitlines() if "Job failed" in line)]
    assert "ConfigError: ckpt_path is required: give ckpt_path=<value>" in out


@pytest.mark.parametrize("command, groups", [("predict", ["postprocess", "extras"]),
                                             ("eval", ["postprocess", "data", "task", "trainer", "extras"])])
def test_help_lists_the_commands_own_groups_only(command, groups):
    proc = subprocess.run([sys.executable, f"{command}.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = proc.stdout.split("== Config groups (group=option) ==")[1].split("==")[0]
    assert [line.split(":")[0] for line in listed.strip().splitlines()] == groups
    for name in groups:  # every option the help names exists
        options = listed.split(f"{name}:")[1].splitlines()[0]
        for option in (o.strip(" ,") for o in options.split("(")[0].split(",")):
            if option and "own" not in option:
                assert (ROOT / "fashionseg" / "conf" / name / f"{option.split()[-1]}.yaml").is_file(), option
    assert "model= is ckpt_path=" in proc.stdout and "loss:" not in proc.stdout and "optimizer" not in proc.stdout


def test_a_run_prints_its_summary_and_no_library_noise(data_root, tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "task=person", "model.net.encoder_weights=null",
                           f"data.root={data_root}", "data.limit=8", "data.image_size=[64,64]", "trainer.max_epochs=1",
                           "test=false", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines() if line.strip()]
    before_training = lines[: next(i for i, line in enumerate(lines) if "Epoch 0" in line)]
    assert len(before_training) <= 25, "\n".join(before_training)
    assert any("Run: model=deeplabv3plus" in line for line in before_training)
    noise = [line for line in lines if "Tip:" in line or line.startswith("INFO: ") or "Warning" in line
             or "deprecated" in line or "log_every_n_steps" in line]
    assert not noise, noise


def test_a_time_limit_can_be_set_on_any_run_and_on_a_resume_without_its_experiment():
    """trainer.max_time is in the base trainer config (null): `python train.py hydra.run.dir=<run> ckpt_path=last
    trainer.max_time=...` composes for a run whose experiment set it, and so does a plain run; an experiment's
    guard still applies."""
    cfg = compose_cfg("train", ["ckpt_path=last", "trainer.max_time=00:03:30:00", "paths.output_dir=/tmp/x"])
    assert cfg.trainer.max_time == "00:03:30:00"
    assert compose_cfg("train", ["paths.output_dir=/tmp/x"]).trainer.max_time is None
    assert compose_cfg("train", ["experiment=best_person", "paths.output_dir=/tmp/x"]).trainer.max_time == "00:01:55:00"


@pytest.mark.parametrize("capabilities,expected", [
    ({"avx512_f": True, "avx512_bw": True}, "32-true"),  # AVX-512 without bfloat16: emulated, slower
    ({"avx512_f": True, "avx512_bf16": True}, "bf16-mixed"),
    ({"amx_bf16": True, "amx_tile": True}, "bf16-mixed"),
    ({"neon": True, "bf16": True}, "bf16-mixed"),  # ARM
    ({"avx2": True}, "32-true"),
])
def test_precision_auto_is_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch, capabilities, expected):
    import torch

    from fashionseg.core.config import resolve_precision

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert compose_cfg("train").trainer.precision == "auto"
    assert resolve_precision(compose_cfg("train").trainer) == expected
    assert resolve_precision(compose_cfg("train", ["trainer.precision=bf16-mixed"]).trainer) == "bf16-mixed"
    assert resolve_precision(compose_cfg("train", ["trainer.precision=32-true"]).trainer) == "32-true"


@pytest.mark.parametrize("bf16,expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_precision_auto_on_a_cuda_card(monkeypatch, bf16, expected):
    import torch

    from fashionseg.core.config import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_precision(compose_cfg("train", ["trainer=gpu"]).trainer) == expected
