"""Train a segmentation model: `python train.py model=deeplabv3plus task=fashion` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from fashionseg.cli import run
from fashionseg.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(lambda c: train(c)[0], cfg)  # the metric a sweeper optimises


if __name__ == "__main__":
    main()
