"""The entry points: `fashionseg-train`, `-eval`, `-predict`, `-export`, `-demo` (console scripts of
`pip install .`, also as `fashionseg <command>`), which `python train.py` etc. at the repo root call too.
Their configs ship inside the package (fashionseg/conf). What they share: the run directory checked before
Hydra writes to it, and one clean message for a user error (bad data, config or input) instead of two
tracebacks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from fashionseg import __version__
from fashionseg.core.config import check_writable
from fashionseg.core.errors import ConfigError, FashionsegError

log = logging.getLogger("fashionseg")


class RunDirectoryCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): fail with the project's message, not Hydra's
    ``PermissionError`` or ``Unable to configure handler 'file'``, when the run or sweep directory
    cannot be created or written. Runs before Hydra creates the directory and its log file."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(directory: str) -> None:
        try:
            check_writable(directory)
        except ConfigError as e:  # logging is not set up yet: Python prints the message, exit status 1
            raise SystemExit(f"ConfigError: {e}") from None


def run(job: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's job. A ``FashionsegError`` is logged once, as one line (console and the job's
    log, where scripts/summarize_runs.py finds it): a single run then exits with status 1 and no
    traceback; a job of a sweep fails and the sweep goes on. Other errors keep their traceback."""
    try:
        return job(cfg)
    except FashionsegError as e:
        log.error("Job failed: %s: %s", type(e).__name__, e)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        raise SystemExit(1) from None
    except Exception as e:
        log.error("Job failed: %s: %s", type(e).__name__, e)
        raise


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train: `fashionseg-train model=deeplabv3plus task=fashion` (conf/train.yaml). Returns the metric a
    sweeper optimises."""
    from fashionseg.training.train import train

    return run(lambda c: train(c)[0], cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    """Score a checkpoint: `fashionseg-eval ckpt_path=<file.ckpt> [postprocess=[none,crf]]` (conf/eval.yaml)."""
    from fashionseg.evaluation.evaluate import evaluate

    run(evaluate, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def predict_main(cfg: DictConfig) -> None:
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
