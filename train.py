"""Train a segmentation model: `python train.py model=deeplabv3plus task=fashion` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from fashionseg.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metric, _ = train(cfg)
    return metric


if __name__ == "__main__":
    main()
