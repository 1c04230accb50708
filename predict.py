"""Label photos: `python predict.py ckpt_path=<file.ckpt> input=<photo or folder> output=<folder>`.

See conf/predict.yaml.
"""

import hydra
from omegaconf import DictConfig

from fashionseg.cli import run
from fashionseg.predict import predict_job


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run(predict_job, cfg)  # exit status 1 when any photo could not be read


if __name__ == "__main__":
    main()
