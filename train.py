"""Train a segmentation model: `python train.py model=deeplabv3plus task=fashion` (see conf/train.yaml)."""

import logging

import hydra
from omegaconf import DictConfig

from fashionseg.train import train

log = logging.getLogger("fashionseg.train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metric, _ = train(cfg)
    except Exception:
        # Into this job's log file as well: in a sweep, scripts/summarize_runs.py reports it per job.
        log.exception("Job failed")
        raise
    return metric


if __name__ == "__main__":
    main()
