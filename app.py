"""Web demo: `python app.py checkpoints.person=<file.ckpt>`, then open http://127.0.0.1:7860.

The same as the console script `fashionseg-demo` (see fashionseg/cli.py).
"""

from fashionseg.cli import demo_main

if __name__ == "__main__":
    demo_main()
