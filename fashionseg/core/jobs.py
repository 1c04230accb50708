"""Jobs that benchmark scripts start: a command run to its end, its output appended to a log file."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_logged(cmd: Sequence[str], log_path: str | Path, cwd: str | Path | None = None) -> None:
    """Run ``cmd`` (printed first) in ``cwd`` with stdout and stderr appended to ``log_path``; raise a
    ``RuntimeError`` naming the command and the log when it fails."""
    print("  $ " + " ".join(map(str, cmd)), flush=True)
    with open(log_path, "a") as log:
        proc = subprocess.run(list(map(str, cmd)), cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"Command failed (exit {proc.returncode}), see {log_path}: {' '.join(map(str, cmd))}")
