"""Web demo: `python app.py checkpoints.person=<file.ckpt>` and open http://127.0.0.1:7860 (see conf/app.yaml)."""

import hydra
from omegaconf import DictConfig

from fashionseg.app import serve
from fashionseg.cli import run


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    run(serve, cfg)


if __name__ == "__main__":
    main()
