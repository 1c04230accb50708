"""Evaluate a checkpoint: `python eval.py ckpt_path=outputs/.../checkpoints/last.ckpt` (fashionseg/conf/eval.yaml).

The same as the console script `fashionseg-eval` (see fashionseg/cli.py).
"""

from fashionseg.cli import eval_main

if __name__ == "__main__":
    eval_main()
