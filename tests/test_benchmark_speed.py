"""scripts/benchmark_speed.py: the training comparison runs on label maps with void (ignored) pixels."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_script, paint_void_bands

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
    result = benchmark_speed.main(["--sections", "train", "--data", str(root), "--size", "64", "96", "--batch", "2",
                                   "--rounds", "1", "--warmup", "1", "--steps", "1", "--out", str(out),
                                   "task=person", "trainer.precision=32-true"])
    train = result["train"]
    assert train["ours_median"] > 0 and train["bare_median"] > 0
    assert out.is_file()
    # Its training logs (logger=csv) live and die with the run's temporary folder: nothing is left behind.
    assert list(system_tmp.iterdir()) == []


def test_refinement_params_read_exponent_numbers_as_numbers():
    # YAML 1.1 alone reads 1e-3 (no dot) as a string, which the guided filter cannot compare with 0.
    params = benchmark_speed.refinement_params(["radius=4", "eps=1e-3", "guide=gray"])
    assert params == {"radius": 4, "eps": 0.001, "guide": "gray"} and isinstance(params["eps"], float)


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
