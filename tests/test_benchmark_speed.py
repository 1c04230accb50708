"""scripts/benchmark_speed.py: the training comparison on label maps with void pixels; the infer section's model
processes, int8 and test-time scales."""

import argparse
import json
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from tests.conftest import ROOT, load_script, make_checkpoint, paint_void_bands

benchmark_speed = load_script("benchmark_speed")


def test_train_section_skips_void_pixels_in_both_loops(data_root, tmp_path, monkeypatch):
    # Void pixels (255) reach the loss in real data (unlabelled gaps, the augmentation's border fill).
    # Our loop ignores them through the loss config; the bare loop must do the same work, not fail on them.
    root = shutil.copytree(data_root, tmp_path / "data")
    paint_void_bands(root, suffix="person")
    out = tmp_path / "speed.json"
    system_tmp = tmp_path / "system-tmp"  # what tempfile.gettempdir() returns during the run
    system_tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(system_tmp))
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True})  # no native bfloat16
    result = benchmark_speed.main(["--sections", "train", "--data", str(root), "--size", "64", "96", "--batch", "2",
                                   "--rounds", "1", "--warmup", "1", "--steps", "1", "--out", str(out),
                                   "task=person", "trainer.precision=auto"])
    train = result["train"]
    assert train["ours_median"] > 0 and train["bare_median"] > 0
    assert train["precision"] == "32-true" and result["machine"]["native_bf16"] is False  # auto, resolved
    assert out.is_file()
    # Its training logs (logger=csv) live and die with the run's temporary folder: nothing is left behind.
    assert list(system_tmp.iterdir()) == []


def test_train_section_times_our_loop_with_a_teachers_stored_logits(data_root, tmp_path, monkeypatch):
    """distill=kd distill.logits=<folder>: our loop computes the distillation term from the batches' stored
    logits; the bare loop trains on the plain photos."""
    import hydra

    from fashionseg.training.distill import Distiller, write_teacher_logits

    teacher = make_checkpoint(tmp_path / "teacher" / "checkpoints" / "t.ckpt", data_root, "person")
    datamodule = hydra.utils.instantiate(benchmark_speed.compose_cfg([f"data.root={data_root}", "task=person"]).data)
    datamodule.setup("fit")
    (tmp_path / "teacher" / "split.json").write_text(json.dumps({"train": datamodule.ids["train"], "val": [],
                                                                 "test": []}))
    folder = write_teacher_logits(teacher, tmp_path / "logits")
    batches = []
    original = Distiller.loss

    def spy(self, images, logits, target, stored=None):
        batches.append(stored)
        return original(self, images, logits, target, stored)

    monkeypatch.setattr(Distiller, "loss", spy)
    result = benchmark_speed.main(["--sections", "train", "--data", str(data_root), "--size", "64", "96", "--batch",
                                   "2", "--rounds", "1", "--warmup", "1", "--steps", "1", "--out",
                                   str(tmp_path / "speed.json"), "task=person", "trainer.precision=32-true",
                                   "distill=kd", f"distill.logits={folder}"])
    assert result["train"]["distill"]["logits"] == str(folder) and result["train"]["bare_median"] > 0
    assert len(batches) == 2 and all(b is not None and b.shape == (2, 2, 64, 96) for b in batches)


def test_refinement_params_read_exponent_numbers_as_numbers():
    # YAML 1.1 alone reads 1e-3 (no dot) as a string, which the guided filter cannot compare with 0.
    params = benchmark_speed.refinement_params(["radius=4", "eps=1e-3", "guide=gray"])
    assert params == {"radius": 4, "eps": 0.001, "guide": "gray"} and isinstance(params["eps"], float)


def test_infer_section_reports_a_model_process_that_dies_instead_of_waiting_forever(data_root, monkeypatch):
    # A model process can die before it reports: killed for memory, or unable to import the script (loaded from
    # its file in-process). The section must say so and go on, not wait on the queue forever. Here the process
    # runs sys.exit(spec, queue), which fails at once (TypeError) without reporting.
    monkeypatch.setattr(benchmark_speed, "infer_job", sys.exit)
    args = argparse.Namespace(
        infer_models=["deeplabv3plus"], infer_task="person", infer_size="96x64", ckpt=[], onnx=False, int8=False,
        variants=["eager fp32"], refinement=None, refinement_params=[], scales=[1.0], infer_overrides=[])
    rows = []
    worker = threading.Thread(target=lambda: rows.extend(benchmark_speed.bench_infer(args, str(data_root))),
                              daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "bench_infer still waits on a model process that has exited"
    assert len(rows) == 1 and rows[0]["model"] == "deeplabv3plus"
    assert "exited" in rows[0]["error"] and "before it reported" in rows[0]["error"], rows


def test_infer_section_runs_a_checkpoint_at_its_test_time_scales(data_root, person_ckpt, monkeypatch):
    # --scales 1.5 times the network as eval.py / predict.py tta_scales=[1.5] run it: the input resized by 1.5.
    import queue

    import fashionseg.inference.predictor

    seen = []
    network_logits = fashionseg.inference.predictor.network_logits

    def spy(net, images, tta_hflip=False, scales=(1.0,), multiple=32):
        seen.append((tuple(scales), tuple(images.shape[-2:])))
        return network_logits(net, images, tta_hflip, scales, multiple)

    monkeypatch.setattr(fashionseg.inference.predictor, "network_logits", spy)
    rows = queue.Queue()
    benchmark_speed.infer_job({"ckpt": str(person_ckpt), "name": "p", "root": str(data_root), "onnx": False,
                               "int8": False, "variants": ["eager fp32"], "refinement": None, "scales": [1.5]}, rows)
    [row] = rows.get_nowait()
    assert "error" not in row and row["ms"] > 0
    assert seen and set(seen) == {((1.5,), (96, 64))}  # the checkpoint's 96x64 input, scaled by 1.5
    assert row["input"] == "96x64 x1.5 (160x96)"  # sides rounded to multiples of 32, as the network runs it


def test_infer_section_times_an_architecture_with_config_overrides(data_root, monkeypatch):
    # --infer-overrides model.net.decoder_channels=64 times that network, and its rows say so.
    import queue

    import fashionseg.inference

    nets = []

    class Spy(fashionseg.inference.Predictor):
        def __init__(self, net, *args, **kwargs):
            nets.append(net)
            super().__init__(net, *args, **kwargs)

    monkeypatch.setattr(fashionseg.inference, "Predictor", Spy)
    rows = queue.Queue()
    for overrides in ([], ["model.net.decoder_channels=64"]):
        benchmark_speed.infer_job({"model": "deeplabv3plus", "task": "person", "size": "[96,64]",
                                   "root": str(data_root), "onnx": False, "int8": False, "variants": ["eager fp32"],
                                   "refinement": None, "scales": None, "overrides": overrides}, rows)
    [default], [narrow] = rows.get_nowait(), rows.get_nowait()
    assert "error" not in narrow and narrow["ms"] > 0
    assert (default["model"], narrow["model"]) == ("deeplabv3plus", "deeplabv3plus model.net.decoder_channels=64")
    size = [sum(p.numel() for p in net.parameters()) for net in nets]
    assert size[1] < size[0]  # the narrower decoder was built and timed


@pytest.mark.slow
def test_infer_section_times_int8_for_an_architecture_and_a_checkpoint(data_root, person_ckpt, tmp_path):
    """As a user runs it (a script: its model processes can import it)."""
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_speed.py"), "--sections", "infer", "--data",
                    str(data_root), "--infer-models", "deeplabv3plus", "--infer-size", "96x64", "--ckpt",
                    str(person_ckpt), "--int8", "--variants", "eager fp32", "--refinement", "guided", "--out",
                    str(out)], check=True, cwd=ROOT, timeout=900)
    infer = json.loads(out.read_text())["infer"]
    assert not [r for r in infer if "error" in r], infer
    ckpt_name = person_ckpt.parent.parent.name or person_ckpt.stem
    rows = {(r["model"], r["variant"]): r for r in infer}
    for model in ("deeplabv3plus", ckpt_name):
        assert rows[(model, "onnxruntime int8")]["ms"] > 0
    assert rows[(ckpt_name, "onnxruntime int8 + guided")]["ms"] > 0
