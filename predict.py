"""Label photos: `python predict.py ckpt_path=<file.ckpt> input=<photo or folder> output=<folder>` (see conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from fashionseg.predict import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
