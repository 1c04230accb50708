"""Export a checkpoint: `python export.py ckpt_path=<file.ckpt> format=onnx` (fashionseg/conf/export.yaml).

The same as the console script `fashionseg-export` (see fashionseg/cli.py).
"""

from fashionseg.cli import export_main

if __name__ == "__main__":
    export_main()
