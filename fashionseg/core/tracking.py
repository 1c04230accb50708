"""Experiment tracking set-up: W&B online when logged in, offline otherwise; sweep jobs grouped per sweep."""

from __future__ import annotations

import functools
import logging
import netrc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when W&B has an API key: WANDB_API_KEY or a ~/.netrc entry for its host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def sweep_info() -> tuple[str, str] | None:
    """(sweep name, job name) inside a Hydra multirun, else None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep = "sweep-" + "_".join(Path(hc.sweep.dir).parts[-2:])
    overrides = hc.job.override_dirname or f"job{hc.job.num}"
    return sweep, f"{hc.job.num}:{overrides}"


def configure_wandb(cfg: DictConfig) -> None:
    """Decide online/offline for every WandbLogger of ``cfg.logger`` (one line says which) and group sweep jobs."""
    for logger_cfg in (cfg.get("logger") or {}).values():
        if not logger_cfg or not str(logger_cfg.get("_target_", "")).endswith("WandbLogger"):
            continue
        mode = os.environ.get("WANDB_MODE")
        if logger_cfg.get("offline") is None:
            logger_cfg.offline = (mode in ("offline", "dryrun")) if mode else not wandb_logged_in()
        save_dir = Path(logger_cfg.save_dir) / "wandb"
        if logger_cfg.offline:
            log.warning("W&B: offline (%s); runs are saved under %s, upload them later with "
                        "`wandb sync %s/offline-run-*`.",
                        "WANDB_MODE=offline" if mode else "not logged in: run `wandb login` to go online",
                        save_dir, save_dir)
        else:
            log.info("W&B: online, project %s%s.", logger_cfg.project,
                     f", entity {logger_cfg.entity}" if logger_cfg.get("entity") else "")
        info = sweep_info()
        if info:
            if logger_cfg.get("group") is None:
                logger_cfg.group = info[0]
            if logger_cfg.get("name") is None:
                logger_cfg.name = info[1]


def close_trackers(failed: bool) -> None:
    """Finish the live W&B run, if any: flushes an offline run and marks a failed job as failed.

    Hydra's launchers run the jobs of a ``-m`` sweep one after another in one process, and
    Lightning's WandbLogger reuses a live ``wandb.run``: left open, a failed job's run would
    receive the next job's metrics.
    """
    wandb = sys.modules.get("wandb")  # never imported: no run to close
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def closes_trackers(task: Callable) -> Callable:
    """Decorate a job (like lightning-hydra-template's ``task_wrapper``): its trackers close however it ends."""

    @functools.wraps(task)
    def wrapped(*args, **kwargs):
        failed = True
        try:
            result = task(*args, **kwargs)
            failed = False
            return result
        finally:
            close_trackers(failed)

    return wrapped
