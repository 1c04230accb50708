"""Time export.py end to end, fp32 + int8, with each exporter, in one run.

    python scripts/benchmark_export.py [--ckpt <file.ckpt>] [--data <dir>] [--out outputs/benchmarks/export.json]

Runs `python export.py ckpt_path=<ckpt> int8=true` once per setting, one after the other in this process's
run (process start, export, int8 calibration and quantization, and the check against PyTorch included):

  before        exporter=dynamo int8_format=qoperator   (torch.export, QLinear operators: export.py until 0.2.0)
  pads_apart    exporter=torchscript int8_format=qdq static_padding=false   (the encoder's 'same' padding
                computed from the input's size, each pad a node of its own: export.py until 2026-12-07)
  after         exporter=torchscript int8_format=qdq    (the TorchScript tracer, QDQ, constant pads: the defaults)

The checkpoint is --ckpt, or an untrained checkpoint of the default model (DeepLabv3+ EfficientNet-Lite0,
384x256: the same network, so the same cost). Prints a table (seconds per stage, the ONNX files' ms per
600x400 photo and their label agreement with PyTorch) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fashionseg.training.module import untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# The default model on the person task, without pretrained weights (offline): untrained_checkpoint's network.
DEFAULT_PERSON = ["task=person", "model.net.encoder_weights=null"]
SETTINGS = {"before": ["exporter=dynamo", "int8_format=qoperator"],
            "pads_apart": ["exporter=torchscript", "int8_format=qdq", "static_padding=false"],
            "after": ["exporter=torchscript", "int8_format=qdq"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", help="checkpoint to export (default: an untrained default model)")
    parser.add_argument("--data", default=os.environ.get("FASHIONSEG_DATA"),
                        help="data set whose photos check the export and calibrate int8 (default: $FASHIONSEG_DATA)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default="outputs/benchmarks/export.json")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("give --data <data set folder> or set FASHIONSEG_DATA")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or str(untrained_checkpoint(Path(tmp) / "person.ckpt", DEFAULT_PERSON))
        for name in args.settings:
            out = Path(tmp) / name
            cmd = [sys.executable, "export.py", f"ckpt_path={ckpt}", f"output={out / 'model.onnx'}", "int8=true",
                   f"check_photos={args.data}/images", f"calibration_root={args.data}", *SETTINGS[name],
                   f"hydra.run.dir={out}"]
            print("  $ " + " ".join(cmd), flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode:
                print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
                return 1
            report = json.loads((out / "model.json").read_text())
            rows.append({"setting": name, "overrides": SETTINGS[name], "seconds": round(seconds, 1),
                         "stage_s": report["stage_s"], "console_lines": len((proc.stdout + proc.stderr).splitlines()),
                         "fp32_ms": round(report["onnxruntime_ms"], 1), "int8_ms": round(report["int8"]["ms"], 1),
                         "int8_label_agreement": report["int8"]["label_agreement"],
                         "torch_ms": round(report["torch_ms"], 1)})

    header = ["setting", "export.py s", "export", "calibrate", "quantize", "compare", "console lines", "fp32 ms",
              "int8 ms", "int8 = torch"]
    table = [header] + [[r["setting"], f"{r['seconds']:.1f}", *(f"{r['stage_s'].get(k, 0):.1f}" for k in
                                                               ("export", "calibrate", "quantize", "compare")),
                         str(r["console_lines"]), f"{r['fp32_ms']:.1f}", f"{r['int8_ms']:.1f}",
                         f"{100 * r['int8_label_agreement']:.2f}%"] for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": args.ckpt or "untrained default person model", "rows": rows}, indent=1))
    print(f"Written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
