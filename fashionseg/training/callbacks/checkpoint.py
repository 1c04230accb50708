"""Lightning's ModelCheckpoint, with a last.ckpt that is always the latest epoch and paths that follow the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def reroot(path: str, old: str, new: str) -> str:
    """``path`` moved from under the folder ``old`` to under ``new``; paths elsewhere are returned as they are."""
    if not path or not old:
        return path
    try:
        return str(Path(new) / Path(path).relative_to(old))
    except ValueError:
        return path


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) fixed for the two ways it loses or mixes up a run's work.

    - Lightning 2.6 writes ``last.ckpt`` only in epochs that also wrote a top-k checkpoint, so after
      an epoch that did not improve the monitored metric, ``last.ckpt`` still holds an older epoch:
      a kill then loses that epoch and a resume trains it again. Here ``last.ckpt`` is written at
      the end of every epoch's validation (or training epoch, without validation).
    - A run stopped by SIGTERM (a scheduler's pre-emption, ``kill``) saves ``last.ckpt`` where it stopped,
      mid-epoch if need be, so that ``ckpt_path=last`` continues from there.
    - The checkpoint stores absolute paths (its folder, the best and last files). Resuming a copied
      or moved run folder would keep writing to and deleting from the original folder; here every
      stored path under the stored folder is re-rooted at this callback's ``dirpath`` on load.
      A best checkpoint that is not in this folder (another run's, continued here) is kept where it
      is, or forgotten if it no longer exists, so that the test pass never loads a missing file.
    """

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        # `_should_skip_saving_checkpoint` is true when this step was saved already (top-k + last),
        # in sanity checking and in fast_dev_run.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERM (Lightning's SIGTERMException, raised on every DDP rank at the same step), or the SystemExit of
        # a signal handler that ends the process: submitit's on its preemption signal, which requeues the job
        # (hydra/launcher=slurm or local); the requeued job resumes from this checkpoint (training.rundir).
        # That one reaches rank 0 alone, which must not wait for the others in a DDP save.
        signalled = isinstance(exception, SIGTERMException) or (isinstance(exception, SystemExit)
                                                                 and trainer.world_size == 1)
        if signalled and self.save_last and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            why = "SIGTERM" if isinstance(exception, SIGTERMException) else f"exit {exception.code} (a signal)"
            log.info("%s: saved %s (epoch %d, step %d).", why, self.last_model_path, trainer.current_epoch,
                     trainer.global_step)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            def follow(path: str) -> str | None:
                """Where a stored checkpoint is now: in this run's folder (a copied or moved run), else where it
                was (a checkpoint of another run continued here: read, never deleted, since Lightning deletes
                only under ``dirpath``), else nowhere."""
                return next((p for p in (reroot(path, old, new), path) if Path(p).is_file()), None)

            best_k = state_dict.get("best_k_models") or {}
            now = {path: follow(path) for path in best_k}
            state_dict = dict(state_dict, dirpath=new,
                              last_model_path=reroot(state_dict.get("last_model_path") or "", old, new),
                              best_k_models={now[p]: score for p, score in best_k.items() if now[p]})
            for key in ("best_model_path", "kth_best_model_path"):
                if state_dict.get(key):
                    state_dict[key] = follow(state_dict[key]) or ""
            if lost := [p for p in best_k if not now[p]]:
                log.warning("The resumed run's checkpoint %s is gone: this run's own epochs take its place among "
                            "the best.", ", ".join(lost))
        super().load_state_dict(state_dict)
