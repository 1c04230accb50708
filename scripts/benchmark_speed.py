"""Speed benchmark: our training loop against a bare PyTorch loop, the data pipeline, inference latency.

Prints one table per section and writes everything to a JSON file. All numbers come from this
process (training: alternating rounds, median), so ratios compare like with like.

    python scripts/benchmark_speed.py                                   # the issue's settings
    python scripts/benchmark_speed.py --ckpt outputs/.../best.ckpt --onnx   # + a trained recipe
    python scripts/benchmark_speed.py --sections infer --infer-models u2netp
    python scripts/benchmark_speed.py --sections infer --infer-models --ckpt <ckpt> --refinement guided
    python scripts/benchmark_speed.py --sections infer --infer-models --ckpt <ckpt> --int8 --scales 1.125

Sections:
  train  images/s of DeepLabv3+ (or --model) at --size/--batch through the LightningModule +
         DataModule + Trainer of train.py (validation and checkpoint writing off), and through a
         plain loop (DataLoader, forward, cross-entropy, backward, Adam step) on a copy of the same
         network with the same data, batch size and bf16 autocast; their ratio.
  data   images/s the training DataLoader delivers (decoded data, augmentation, collation, one
         process), against the fastest training throughput measured in `train`.
  infer  ms per 600x400 photo, photo in -> label map out (resize, network, upsampling, argmax),
         batch 1, for each architecture config and each --ckpt; variants: eager fp32,
         channels_last, bf16 autocast, bf16 + channels_last, the same + torch.compile (weights frozen;
         compile time excluded), ONNX Runtime (--onnx) and its int8 quantization (--int8, calibrated on
         training photos); --variants picks some. With --refinement, each checkpoint
         variant is also timed followed by that refinement (photo -> refined label map, as predict.py);
         with --scales, each checkpoint runs at those test-time scales (as eval.py tta_scales=[...]).
         Peak resident memory of a fresh process per model. A data set of other sizes: its first photo
         resized to 600x400.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

import hydra
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from fashionseg.core.config import compose_config, default_data_dir, native_bf16, override_value, resolve_precision
from fashionseg.inference import VARIANTS
from fashionseg.training.distill import attach_distiller
from fashionseg.training.module import SegmentationModule
from fashionseg.training.train import instantiate_dict

ROOT = Path(__file__).resolve().parents[1]

def compose_cfg(overrides: list[str], output_dir: str | None = None):
    """train.py's config without a Hydra run. ``output_dir``: where a section's run writes (its logs), a
    folder the section owns and removes; None for sections that write nothing."""
    return compose_config("train", [f"paths.output_dir={output_dir or 'null'}", *overrides])


def data_root(args) -> str:
    root = args.data or default_data_dir()
    if not Path(root).is_dir():
        sys.exit(f"Data set not found at {root}: pass --data or set FASHIONSEG_DATA (see README).")
    return root


# ----------------------------------------------------------------------------------------------- train


class WindowTimer(L.Callback):
    """Wall time from the end of batch ``warmup - 1`` to the end of batch ``warmup + steps - 1``."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.start, self.seconds = warmup, steps, None, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        elif batch_idx == self.warmup + self.steps - 1:
            self.seconds = time.perf_counter() - self.start


def time_ours(cfg, module, datamodule, warmup: int, steps: int, log_dir: str) -> float:
    timer = WindowTimer(warmup, steps)
    callbacks = [c for c in instantiate_dict(cfg.callbacks) if not isinstance(c, L.pytorch.callbacks.ModelCheckpoint)]
    trainer = hydra.utils.instantiate(
        cfg.trainer, max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=log_dir,
        callbacks=[*callbacks, timer], logger=instantiate_dict(cfg.logger, "logger") or False,
    )
    trainer.fit(module, datamodule=datamodule)
    return steps * datamodule.batch_size / timer.seconds


def time_bare(net, dataset, batch_size: int, lr: float, bf16: bool, warmup: int, steps: int,
              ignore_index: int = -100, channels_last: bool = False) -> float:
    """The plainest loop that does the same work: no framework, no logging, no callbacks.
    ``ignore_index``: the void label, left out of the loss as the module's loss leaves it out;
    ``channels_last``: batches in the memory order of the network's weights, as the module feeds them."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    start = None
    for i, batch in enumerate(loader):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            # The loss in float32, as the module's CrossEntropy computes it: the same work in both loops.
            images = batch["image"].contiguous(memory_format=memory_format)
            loss = F.cross_entropy(net(images)["out"].float(), batch["mask"], ignore_index=ignore_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i == warmup - 1:
            start = time.perf_counter()
        elif i == warmup + steps - 1:
            return steps * batch_size / (time.perf_counter() - start)
    raise ValueError(f"{warmup + steps} batches needed, the training split has {len(loader)}.")


def bench_train(args, root: str) -> dict:
    with tempfile.TemporaryDirectory() as log_dir:  # the runs' logs, removed with it
        h, w = args.size
        cfg = compose_cfg([f"model={args.model}", "loss=ce", f"data.image_size=[{h},{w}]",
                           f"data.batch_size={args.batch}", "data.num_workers=0", f"data.root={root}",
                           "model.net.encoder_weights=null", "logger=csv", *args.overrides], output_dir=log_dir)
        cfg.trainer.precision = resolve_precision(cfg.trainer)  # auto: bf16-mixed where bfloat16 is native
        L.seed_everything(0, workers=True)
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        module = SegmentationModule.from_config(cfg)
        bare_net = copy.deepcopy(module.net)  # same initial weights
        bare_data = copy.copy(datamodule.datasets["train"])  # the plain photos: no teacher's logits
        attach_distiller(cfg, module, datamodule)  # distill=kd: our loop pays the teacher's term
        bf16 = str(cfg.trainer.precision).startswith("bf16")
        ours, bare = [], []
        for r in range(args.rounds):  # alternate the order so that drift hits both alike
            for which in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
                if which == "ours":
                    ours.append(time_ours(cfg, module, datamodule, args.warmup, args.steps, log_dir))
                else:
                    bare.append(time_bare(bare_net, bare_data, args.batch, cfg.optimizer.lr, bf16,
                                          args.warmup, args.steps, ignore_index=module.loss.ignore_index,
                                          channels_last=module.hparams.channels_last))
            print(f"  round {r + 1}/{args.rounds}: ours {ours[-1]:.2f} img/s, bare {bare[-1]:.2f} img/s", flush=True)
        ratios = [o / b for o, b in zip(ours, bare)]
        return {
            "model": cfg.model.name, "encoder": cfg.model.net.get("encoder_name"), "input_hw": [h, w],
            "batch_size": args.batch, "precision": str(cfg.trainer.precision), "steps_per_round": args.steps,
            "channels_last": module.hparams.channels_last,
            "distill": OmegaConf.to_container(cfg.distill) if cfg.get("distill") else None,
            "ours_img_s": ours, "bare_img_s": bare, "ratios": ratios,
            "ours_median": statistics.median(ours), "bare_median": statistics.median(bare),
            "ratio_median": statistics.median(ratios),
        }


# ------------------------------------------------------------------------------------------------ data


def bench_data(args, root: str, consume_img_s: float | None) -> dict:
    h, w = args.size
    cfg = compose_cfg([f"data.image_size=[{h},{w}]", f"data.batch_size={args.batch}", "data.num_workers=0",
                       f"data.root={root}", *args.overrides])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)
    n, start = 0, time.perf_counter()
    for epoch in range(args.data_epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            n += len(batch["id"])
    img_s = n / (time.perf_counter() - start)
    return {"input_hw": [h, w], "batch_size": args.batch, "num_workers": 0,
            "augment": OmegaConf.to_container(cfg.data.augment),
            "images": n, "img_s": img_s, "fastest_training_img_s": consume_img_s,
            "headroom": img_s / consume_img_s if consume_img_s else None}


# ----------------------------------------------------------------------------------------------- infer


def time_call(fn, min_reps: int = 3, max_reps: int = 10, budget_s: float = 8.0) -> float:
    """Median seconds of ``fn()`` after warm-up (two calls; one for calls over a second, then 2 timed at least)."""
    t = time.perf_counter()
    fn()
    if time.perf_counter() - t < 1.0:
        fn()
    else:
        min_reps = 2
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_variant(predictor, photo: np.ndarray, refine, row: dict) -> list[dict]:
    """ms per photo of one inference variant (photo in, label map out), and with ``refine`` after it."""
    calls = {row["variant"]: lambda: predictor([photo])}
    if refine is not None:
        from fashionseg.postprocess.base import lifts

        lifted = not lifts(refine)  # the photo's size, unless the refinement lifts them itself
        calls[f"{row['variant']} + {refine.name}"] = lambda: refine(photo, predictor.probabilities([photo], lifted)[0])
    rows = []
    for key, call in calls.items():
        try:
            rows.append({**row, "variant": key, "ms": 1000 * time_call(call)})
        except Exception as e:  # e.g. torch.compile without a C++ compiler: report it, time the rest
            rows.append({**row, "variant": key, "error": f"{type(e).__name__}: {e}"[:300]})
    return rows


def int8_calibration(spec: dict, cfg) -> list[torch.Tensor]:
    """32 training photos of the data set: the checkpoint's own training split, or for an architecture
    config the split its config draws."""
    from fashionseg.data import primary_data_config
    from fashionseg.serving.export import calibration_batches, training_photos

    if spec.get("ckpt"):
        from fashionseg.inference import load_network

        return calibration_batches(load_network(spec["ckpt"]).config, spec["root"], 32)
    data = primary_data_config(cfg.data)
    data.root = spec["root"]
    datamodule = hydra.utils.instantiate(data)
    datamodule.setup("test")
    return training_photos(datamodule, 32)


def infer_job(spec: dict, queue) -> None:
    """One model, every variant, in a fresh process (so that peak memory is this model's)."""
    try:
        photo = benchmark_photo(spec["root"])
        from fashionseg.inference import Predictor, scaled_size

        rows = []
        cfg = None
        if spec.get("ckpt"):
            base = Predictor.from_checkpoint(spec["ckpt"])
            net, names, size, name = base.net, base.class_names, base.image_size, spec["name"]
        else:
            no_weights = ["model.net.encoder_weights=null"] if spec["model"].startswith("deeplab") else []
            overrides = spec.get("overrides", [])
            cfg = compose_cfg([f"model={spec['model']}", f"task={spec['task']}", *no_weights,
                               f"data.image_size={spec['size']}", *overrides])
            net, names, size = hydra.utils.instantiate(cfg.model.net), list(cfg.task.class_names), cfg.data.image_size
            name = " ".join([spec["model"], *overrides])
        label = "native 608x416" if size is None else f"{size[0]}x{size[1]}"
        scales = tuple(spec.get("scales") or (1.0,))
        if scales != (1.0,):  # a checkpoint run at other test-time scales, as eval.py/predict.py tta_scales=[...]
            sizes = [scaled_size(size or (608, 416), s) for s in scales]
            label += " x" + "/".join(f"{s:g}" for s in scales) + " (" + ", ".join(f"{h}x{w}" for h, w in sizes) + ")"
        refine = None
        if spec.get("refinement"):  # photo -> probabilities -> refined label map, as predict.py does
            from fashionseg.postprocess.registry import load_refinements

            refine_name, params = spec["refinement"]
            refine = load_refinements([refine_name], {refine_name: params})[refine_name]
        for variant in spec["variants"]:
            predictor = Predictor(copy.deepcopy(net), names, size, tta_scales=scales, **VARIANTS[variant])
            rows += time_variant(predictor, photo, refine, {"model": name, "input": label, "variant": variant})
        if spec.get("onnx") or spec.get("int8"):
            from fashionseg.inference import OnnxRunner
            from fashionseg.serving.export import export_onnx, quantize_onnx

            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(net.eval(), Path(tmp) / "model.onnx", size or [608, 416])
                files = {"onnxruntime": path} if spec.get("onnx") else {}
                if spec.get("int8"):  # calibrated on training photos, as export.py int8=true
                    files["onnxruntime int8"] = quantize_onnx(path, Path(tmp) / "model.int8.onnx",
                                                              int8_calibration(spec, cfg))
                for variant, file in files.items():
                    predictor = Predictor(OnnxRunner(file), names, size, tta_scales=scales)
                    rows += time_variant(predictor, photo, refine, {"model": name, "input": label, "variant": variant})
        peak_mb = peak_rss_mb()
        for row in rows:
            row["peak_rss_mb"] = round(peak_mb)
        queue.put(rows)
    except Exception as e:  # report, and let the other models run
        queue.put([{"model": spec.get("name") or spec.get("model"), "error": f"{type(e).__name__}: {e}"}])


def refinement_params(items: list[str]) -> dict:
    """``--refinement-params radius=6 eps=1e-3`` as ``{"radius": 6, "eps": 0.001}``."""
    params = {}
    for item in items:
        key, _, value = item.partition("=")
        if not (key and value):
            sys.exit(f"--refinement-params {item!r}: expected <param>=<value>, e.g. radius=6.")
        params[key] = override_value(value)
    return params


def collect_rows(proc, queue, name: str, poll_s: float = 2.0) -> list[dict]:
    """The rows a model's process reports; an error row if it exits without reporting (it could not
    start, e.g. could not import this script, or was killed, e.g. for memory)."""
    while True:
        try:
            return queue.get(timeout=poll_s)
        except Empty:
            if proc.is_alive():
                continue
            try:  # rows put just before it exited
                return queue.get(timeout=poll_s)
            except Empty:
                return [{"model": name, "error": f"its process exited (code {proc.exitcode}) before it reported; "
                         "run the script as a file (python scripts/benchmark_speed.py ...) and check its memory"}]


def benchmark_photo(root: str) -> np.ndarray:
    """The data set's first photo, resized to 600x400 if it is another size (the latency is that of a 600x400 one)."""
    from fashionseg.core.io import list_photos, read_photo

    photo = read_photo(list_photos(Path(root) / "images")[0])
    if photo.shape[:2] != (600, 400):
        photo = np.asarray(Image.fromarray(photo).resize((400, 600), Image.BILINEAR))
    return photo


def bench_infer(args, root: str) -> list[dict]:
    size = "null" if args.infer_size == "native" else "[{},{}]".format(*args.infer_size.split("x"))
    # ONNX export (torch.onnx dynamo) takes a minute or more per network: --onnx only for the trained checkpoints;
    # --int8 for every model.
    common = {"variants": args.variants, "int8": args.int8, "root": root}
    refinement = (args.refinement, refinement_params(args.refinement_params)) if args.refinement else None
    specs = [{"model": m, "task": args.infer_task, "size": size, "onnx": False, "refinement": None, "scales": None,
              "overrides": args.infer_overrides, **common} for m in args.infer_models]
    specs += [{"ckpt": c, "name": Path(c).parent.parent.name or Path(c).stem, "onnx": args.onnx,
               "refinement": refinement, "scales": args.scales, **common} for c in args.ckpt]
    ctx = mp.get_context("spawn")
    rows = []
    for spec in specs:
        queue = ctx.Queue()
        # The process reads the photo itself: its arguments stay small, so that start() cannot block writing
        # them to a process that died before reading them all.
        proc = ctx.Process(target=infer_job, args=(spec, queue))
        proc.start()
        got = collect_rows(proc, queue, spec.get("name") or spec["model"])
        proc.join()
        for row in got:
            print("  " + "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        rows += got
    return rows


# ----------------------------------------------------------------------------------------------- main


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="train,data,infer", help="comma-separated: train, data, infer")
    p.add_argument("--data", help="data set root (default: paths.data_dir: $FASHIONSEG_DATA or data/...)")
    p.add_argument("--model", default="deeplabv3plus", help="model config for the training comparison")
    p.add_argument("--size", type=int, nargs=2, default=[320, 224], metavar=("H", "W"), help="training input size")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds of ours/bare")
    p.add_argument("--warmup", type=int, default=3, help="batches before the timed window, per round")
    p.add_argument("--steps", type=int, default=25, help="timed batches per round")
    p.add_argument("--data-epochs", type=int, default=2, help="epochs over the training split for `data`")
    p.add_argument("--infer-models", nargs="*", default=["deeplabv3plus", "deeplabv3", "u2net", "u2netp"])
    p.add_argument("--infer-task", default="fashion")
    p.add_argument("--infer-size", default="native", help="`native` (pad 600x400 to 608x416) or HxW")
    p.add_argument("--infer-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for the --infer-models networks, e.g. model.net.decoder_channels=128")
    p.add_argument("--ckpt", nargs="*", default=[], help="trained checkpoints to time at their own input size")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                   help=f"inference variants to time (default: all): {', '.join(map(repr, VARIANTS))}")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="test-time scales of each --ckpt (as eval.py / predict.py tta_scales=[...]): e.g. 1.125 runs "
                        "a 480x320 network at 544x352")
    p.add_argument("--refinement", help="also time each --ckpt's variants followed by this refinement "
                   "(conf/postprocess/<name>.yaml: photo -> probabilities -> refined label map, as predict.py)")
    p.add_argument("--refinement-params", nargs="*", default=[], metavar="PARAM=VALUE",
                   help="the refinement's parameters, e.g. radius=6 eps=0.001")
    p.add_argument("--onnx", action="store_true",
                   help="also time ONNX Runtime for each --ckpt (needs the deploy extra)")
    p.add_argument("--int8", action="store_true",
                   help="also time each model and --ckpt quantized to int8 by ONNX Runtime (export.py int8=true), "
                        "calibrated on 32 photos of its training split of the data set")
    p.add_argument("--out", default=str(ROOT / "outputs/benchmarks/speed.json"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the training config, e.g. trainer.precision=32")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    if sections - {"train", "data", "infer"}:
        p.error(f"unknown sections {sorted(sections - {'train', 'data', 'infer'})}; use train, data, infer")
    root = data_root(args)
    result = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "native_bf16": native_bf16()},  # bf16 autocast is emulated, and slow, where false
              "command": " ".join(["python", "scripts/benchmark_speed.py", *sys.argv[1:]])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    if "train" in sections:
        t = result["train"] = bench_train(args, root)
        teacher = t["distill"] and (t["distill"].get("logits") or t["distill"].get("teacher"))
        print(f"Training throughput, {args.model} {args.size[0]}x{args.size[1]} batch {args.batch}"
              f"{f', ours distilling from {teacher}' if teacher else ''}:", flush=True)
        print(table([["ours (LightningModule + DataModule + Trainer)", t["ours_median"]],
                     ["bare PyTorch loop", t["bare_median"]],
                     ["ratio ours / bare (median of rounds)", t["ratio_median"]]],
                    ["training loop", "images/s"]) + "\n", flush=True)
    if "data" in sections:
        fastest = max(result["train"]["ours_median"], result["train"]["bare_median"]) if "train" in result else None
        d = result["data"] = bench_data(args, root, fastest)
        print(table([["data pipeline (augmented, 1 process)", d["img_s"]],
                     ["fastest training loop above", fastest or "-"],
                     ["headroom (pipeline / training)", d["headroom"] or "-"]], ["", "images/s"]) + "\n", flush=True)
    if "infer" in sections:
        print("Inference, one 600x400 photo -> label map, batch 1:", flush=True)
        rows = result["infer"] = bench_infer(args, root)
        print(table([[r["model"], r.get("input", ""), r.get("variant", ""), r.get("ms", r.get("error")),
                      r.get("peak_rss_mb", "")] for r in rows],
                    ["model", "input", "variant", "ms/image", "peak RSS MB"]), flush=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nWritten to {out}")
    return result


if __name__ == "__main__":
    main()
