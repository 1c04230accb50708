"""Train a segmentation model: `python train.py model=deeplabv3plus task=fashion` (fashionseg/conf/train.yaml).

The same as the console script `fashionseg-train` (see fashionseg/cli.py).
"""

from fashionseg.cli import train_main

if __name__ == "__main__":
    train_main()
