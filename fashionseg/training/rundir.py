"""What a run finds in its own folder when it starts: a finished run is kept and skipped, an unfinished one
resumed, a folder of another command refused; temporaries of a killed checkpoint save removed.

A run folder is a run's record, so nothing in it is ever overwritten by another launch:

- ``results.json`` present: the job finished. It is skipped with a log line, and a sweeper gets its stored
  metric, so relaunching a sweep redoes only what did not finish.
- checkpoints but no ``results.json``: the job was killed. It resumes from its own last checkpoint, as
  ``ckpt_path=last`` would.
- either, launched with other overrides than the folder's (``.hydra/overrides.yaml``): refused, naming both.

``ckpt_path=last`` given explicitly continues a run as before, finished or not (e.g. with more epochs);
a finished run's ``results.json`` is then kept as ``results.before-resume-<n>.json``.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fashionseg.core.errors import ConfigError
from fashionseg.core.io import remove_stale_temporaries

log = logging.getLogger(__name__)

RESULTS = "results.json"
LAST = "last.ckpt"
# Overrides that do not change what a run computes: where it is, and how it is resumed.
NEUTRAL = ("ckpt_path", "hydra.", "paths.")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """The run's checkpoint files that are whole (a zip archive, as torch.save writes), newest first."""
    files = [p for p in checkpoint_dir(out_dir).glob("*.ckpt") if p.is_file() and zipfile.is_zipfile(p)]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def holds_run(out_dir: str | Path) -> bool:
    """Whether a folder holds a training run, finished (results.json) or not (checkpoints)."""
    return (Path(out_dir) / RESULTS).is_file() or bool(complete_checkpoints(out_dir))


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """``checkpoints/last.ckpt``, or, where its first save was killed, the newest complete checkpoint of the run
    (saying so); None when the run has none."""
    last = checkpoint_dir(out_dir) / LAST
    if last.is_file():
        return last
    newest = next(iter(complete_checkpoints(out_dir)), None)
    if newest is not None:
        log.warning("%s is missing (its first save was interrupted): resuming from the newest complete checkpoint "
                    "of the run, %s.", last, newest.name)
    return newest


def _meaningful(overrides) -> list[str]:
    return sorted(str(o) for o in overrides if not str(o).lstrip("+~").startswith(NEUTRAL))


def previous_overrides(out_dir: Path) -> list[str] | None:
    """The command-line overrides the folder's run was launched with (its ``.hydra/overrides.yaml``, put back by
    ``fashionseg.cli.RunDirectoryCheck`` before this launch's Hydra rewrote it), or None outside Hydra."""
    path = out_dir / ".hydra" / "overrides.yaml"
    if not HydraConfig.initialized() or not path.is_file():
        return None
    return _meaningful(yaml.safe_load(path.read_text()) or [])


def stored_metric(results: dict, name: str | None) -> float | None:
    """The metric a sweeper optimises, from a finished run's results.json."""
    if not name:
        return None
    if (results.get("optimized_metric") or {}).get("name") == name:
        return results["optimized_metric"]["value"]
    return results.get("val_miou_best") if name == "val/miou_best" else None


def relaunch(cfg: DictConfig) -> dict | None:
    """Decide what this launch does with what its run folder holds. Returns a finished run's results (the job is
    then skipped), else None, with ``cfg.ckpt_path`` set to ``last`` when an unfinished run is to be resumed."""
    out_dir = Path(cfg.paths.output_dir)
    for tmp in remove_stale_temporaries(checkpoint_dir(out_dir)):
        log.info("Removed %s, left by a checkpoint save that was killed.", tmp)
    if cfg.get("ckpt_path") is not None or not holds_run(out_dir):
        return None
    finished = (out_dir / RESULTS).is_file()
    before = previous_overrides(out_dir)
    now = _meaningful(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    if before is not None and now is not None and before != now:
        state = "a finished run" if finished else "an unfinished run"
        had, has = [o for o in before if o not in now], [o for o in now if o not in before]
        raise ConfigError(
            f"{out_dir} holds {state} launched with other overrides: it had {' '.join(had) or 'none of'}, this "
            f"launch has {' '.join(has) or 'none of them'}. Nothing in it was changed. Relaunch the same command to "
            f"{'skip' if finished else 'resume'} it, give ckpt_path=last to continue it with new values, or "
            "choose another hydra.run.dir (hydra.sweep.dir for a sweep)."
        )
    if finished:
        results = json.loads((out_dir / RESULTS).read_text())
        log.info("%s holds a finished run (%s): skipped, nothing in it changed. To train again, choose another "
                 "hydra.run.dir (hydra.sweep.dir for a sweep); to continue it, give ckpt_path=last.",
                 out_dir, RESULTS)
        return results
    log.info("%s holds an unfinished run (checkpoints, no %s): resuming it from its last checkpoint.",
             out_dir, RESULTS)
    with open_dict(cfg):
        cfg.ckpt_path = "last"
    return None


def keep_previous_results(out_dir: Path) -> None:
    """Before a continued run writes results.json: keep the finished run's as results.before-resume-<n>.json."""
    path = out_dir / RESULTS
    if path.is_file():
        n = 1 + len(list(out_dir.glob("results.before-resume-*.json")))
        path.rename(out_dir / f"results.before-resume-{n}.json")
