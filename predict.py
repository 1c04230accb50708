"""Label photos: `python predict.py ckpt_path=<file.ckpt> input=<photo or folder> output=<folder>`.

The same as the console script `fashionseg-predict` (see fashionseg/cli.py).
"""

from fashionseg.cli import predict_main

if __name__ == "__main__":
    predict_main()
