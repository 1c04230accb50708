"""The entry points: `fashionseg-train`, `-eval`, `-predict`, `-export`, `-demo` (console scripts of
`pip install .`, also as `fashionseg <command>`), which `python train.py` etc. at the repo root call too.
Their configs ship inside the package (fashionseg/conf). What they share: the run directory checked before
Hydra writes to it, and one clean message for a user error (bad data, config or input) instead of two
tracebacks."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from fashionseg import __version__
from fashionseg.core.config import check_writable
from fashionseg.core.errors import ConfigError, FashionsegError, Interrupted
from fashionseg.core.extras import apply_extras

log = logging.getLogger("fashionseg")


class RunDirectoryCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml) for the run and sweep directories.

    - Fail with the project's message, not Hydra's ``PermissionError`` or ``Unable to configure handler
      'file'``, when the directory cannot be created or written. Runs before Hydra creates it.
    - A relaunch into a folder that already holds a run: Hydra rewrites the job's ``.hydra/`` files
      before the job starts. They are read first and put back, so the folder keeps the record of the
      run it holds, and the job (``fashionseg.training.rundir``) compares that run's overrides with
      this launch's to skip, resume or refuse it.
    """

    def __init__(self) -> None:
        self.previous: dict[str, dict[str, bytes]] = {}  # job folder -> its .hydra files before this launch

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)
        self._remember([Path(config.hydra.run.dir)], config.hydra.output_subdir, config.hydra.job.name)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)
        sweep = Path(config.hydra.sweep.dir)
        self._remember([p for p in sweep.iterdir() if p.is_dir()] if sweep.is_dir() else [],
                       config.hydra.output_subdir, config.hydra.job.name)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        files = self.previous.get(str(Path(config.hydra.runtime.output_dir).resolve()))
        if files and config.hydra.output_subdir is not None:
            folder = Path(config.hydra.runtime.output_dir) / config.hydra.output_subdir
            for name, data in files.items():
                (folder / name).write_bytes(data)

    def _remember(self, folders: list[Path], subdir: str | None, job: str) -> None:
        """The .hydra files of every folder that holds a training run (a results.json or checkpoints)."""
        if subdir is None or job != "train":
            return
        from fashionseg.training.rundir import holds_run  # the training layer, for train.py's folders only

        for folder in folders:
            record = folder / subdir
            if record.is_dir() and holds_run(folder):
                self.previous[str(folder.resolve())] = {p.name: p.read_bytes() for p in record.glob("*.yaml")}

    @staticmethod
    def _check(directory: str) -> None:
        try:
            check_writable(directory)
        except ConfigError as e:  # logging is not set up yet: Python prints the message, exit status 1
            raise SystemExit(f"ConfigError: {e}") from None


class OptunaStorage(Callback):
    """Hydra callback of ``hparams_search=optuna``: create the study's storage (its tables) before the sweeper opens
    it. Optuna's RDB storage sets its schema up without a lock, so two processes starting together on a new SQLite
    file would have one fail (a UNIQUE constraint on alembic_version); here the loser waits and opens it again."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        url = config.hydra.sweeper.get("storage")
        if not isinstance(url, str):
            return
        import random
        import time

        import optuna
        from sqlalchemy.exc import SQLAlchemyError

        for attempt in range(30):
            try:
                optuna.storages.RDBStorage(url)
                return
            except SQLAlchemyError:
                if attempt == 29:
                    raise
                time.sleep(0.1 + random.random() * 0.4)


def user_error(e: BaseException) -> FashionsegError | None:
    """The user error behind ``e``: a FashionsegError itself, one that Hydra's ``instantiate`` wrapped ("Error in
    call to target ..."), or a mandatory value left out (``ckpt_path: ???``); None for anything else."""
    if isinstance(e, FashionsegError):
        return e
    if isinstance(e, InstantiationException) and isinstance(e.__cause__, FashionsegError):
        return e.__cause__
    if isinstance(e, MissingMandatoryValue):
        key = e.full_key or str(e)
        job = HydraConfig.get().job.name if HydraConfig.initialized() else "<command>"
        return ConfigError(f"{key} is required: give {key}=<value> on the command line (`python {job}.py --help` "
                           "lists the options).")
    return None


def submitit_distributed_env() -> None:
    """A job that submitit's local executor (``hydra/launcher=local``) started as one of several tasks
    (``hydra.launcher.tasks_per_node=2``, with ``trainer=ddp trainer.devices=2``): give Lightning its place in
    the process group through the variables of processes started by another launcher (``MASTER_ADDR``,
    ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK``), which its ``LightningEnvironment`` reads,
    so that it joins the group instead of starting processes itself. On SLURM Lightning reads SLURM's own
    variables (``SLURMEnvironment``), and nothing is set here."""
    if "SUBMITIT_LOCAL_JOB_ID" not in os.environ or "SLURM_JOB_ID" in os.environ:
        return
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks < 2:
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + int(env.job_id) % 20000))
    os.environ.update(WORLD_SIZE=str(env.num_tasks), NODE_RANK=str(env.node), LOCAL_RANK=str(env.local_rank))


def run(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's job. A user error (``user_error``: bad data, config or input) is logged once, as
    one line (console and the job's log, where scripts/summarize_runs.py finds it): a single run then exits
    with status 1 and no traceback (``HYDRA_FULL_ERROR=1`` shows it); a job of a sweep fails and the sweep
    goes on. ``Interrupted`` (SIGTERM) ends the process with status 143, sweep or not. Other errors keep
    their traceback."""
    apply_extras(cfg.get("extras"))
    submitit_distributed_env()
    try:
        return job(cfg)
    except Interrupted as e:  # a signal asked the process to stop: a sweep stops too, and the job counts as failed
        log.error("Job failed: %s: %s", type(e).__name__, e)
        raise SystemExit(e.exit_status) from None
    except Exception as e:
        error = user_error(e)
        log.error("Job failed: %s: %s", type(error or e).__name__, error or e)
        if error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise error from None
        raise SystemExit(1) from None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train: `fashionseg-train model=deeplabv3plus task=fashion` (conf/train.yaml). Returns the metric a
    sweeper optimises."""
    from fashionseg.training.train import train

    return run(lambda c: train(c)[0], cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _eval(cfg: DictConfig) -> None:
    """Score a checkpoint: `fashionseg-eval ckpt_path=<file.ckpt> [postprocess=[none,crf]]` (conf/eval.yaml)."""
    from fashionseg.evaluation.evaluate import evaluate

    run(evaluate, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def _predict(cfg: DictConfig) -> None:
    """Label photos: `fashionseg-predict ckpt_path=<file.ckpt> input=<photo or folder> output=<folder>`
    (conf/predict.yaml). Exit status 1 when any photo could not be read."""
    from fashionseg.serving.predict import predict_job

    run(predict_job, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def export_main(cfg: DictConfig) -> None:
    """Export a checkpoint: `fashionseg-export ckpt_path=<file.ckpt> format=onnx` (conf/export.yaml)."""
    from fashionseg.serving.export import export

    run(export, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def demo_main(cfg: DictConfig) -> None:
    """The web demo: `fashionseg-demo checkpoints.person=<file.ckpt>`, then http://127.0.0.1:7860 (conf/app.yaml)."""
    from fashionseg.serving.app import serve

    run(serve, cfg)


# `model=<ckpt, package folder or user/repo>` on these commands' command lines: their configs share fashionseg/conf
# with train.py, where `model` is the group of architectures, so Hydra would read it as a group; it is ckpt_path.
ALIASES = {"eval": {"model": "ckpt_path"}, "predict": {"model": "ckpt_path"}}


def apply_aliases(command: str, args: Sequence[str]) -> list[str]:
    """A command line's ``alias=value`` arguments under their config key (``ALIASES``)."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        out.append(f"{ALIASES.get(command, {}).get(key, key)}={value}" if sep else arg)
    return out


def _aliased(command: str, main: Callable[[], Any]) -> Callable[[], Any]:
    def entry() -> Any:
        sys.argv = [sys.argv[0], *apply_aliases(command, sys.argv[1:])]  # Hydra reads sys.argv
        return main()
    entry.__name__ = entry.__qualname__ = f"{command}_main"
    entry.__doc__ = main.__doc__
    return entry


eval_main = _aliased("eval", _eval)
predict_main = _aliased("predict", _predict)

COMMANDS = {"train": train_main, "eval": eval_main, "predict": predict_main, "export": export_main, "demo": demo_main}
USAGE = """usage: fashionseg [--version] <command> [hydra overrides]

commands (each also a console script, fashionseg-<command>, and python <command>.py at the repo root):
  train     train a network: fashionseg train model=deeplabv3plus task=fashion
  eval      score a checkpoint: fashionseg eval ckpt_path=<file.ckpt>
  predict   label photos: fashionseg predict ckpt_path=<file.ckpt> input=<photos> output=<folder>
  export    ONNX export: fashionseg export ckpt_path=<file.ckpt> [int8=true]
  demo      the web demo: fashionseg demo checkpoints.person=<file.ckpt>

`fashionseg <command> --help` lists a command's config groups; docs: docs/ (make docs)."""


def main(argv: Sequence[str] | None = None) -> None:
    """`fashionseg --version`, or `fashionseg <command> [overrides]`: the `fashionseg-<command>` entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] in ("-V", "--version"):
        print(f"fashionseg {__version__}")
        return
    if args[0] not in COMMANDS:
        raise SystemExit(f"fashionseg: unknown command {args[0]!r}; choose one of {', '.join(COMMANDS)} "
                         "(fashionseg --help).")
    sys.argv = [f"fashionseg-{args[0]}", *args[1:]]  # Hydra reads the command line from sys.argv
    COMMANDS[args[0]]()
