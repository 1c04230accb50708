"""predict.py: outputs per photo at the photo's size, any mode/orientation, bad files reported and skipped."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.io import read_photo
from fashionseg.inference import Predictor, network_logits
from fashionseg.serving.predict import predict
from tests.conftest import ROOT, compose_cfg


def predict_cfg(ckpt, input_path, out, *overrides):
    return compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={input_path}", f"output={out}",
                                   f"paths.output_dir={out}", *overrides])


def test_folder_sizes_modes_and_a_corrupt_file(person_ckpt, tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photos / "a_rgb.jpg")
    Image.fromarray(rgb[:50, :120 // 2]).convert("L").save(photos / "b_gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(photos / "c_rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(photos / "d_cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (33, 150, 3), dtype=np.uint8)).save(photos / "e_wide.png")
    (photos / "f_corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "out"
    result = predict(predict_cfg(person_ckpt, photos, out, "batch_size=2"))
    assert list(result["failed"]) == [str(photos / "f_corrupt.jpg")]
    assert "f_corrupt.jpg" in caplog.text
    assert len(result["written"]) == 5
    for src in sorted(photos.glob("[a-e]_*")):
        with Image.open(src) as im:
            size = im.size
        label = Image.open(out / f"{src.stem}_label.png")
        assert label.mode == "P" and label.size == size
        assert np.array(label).max() <= 1
        assert Image.open(out / f"{src.stem}_overlay.png").height >= size[1]
        cut = Image.open(out / f"{src.stem}_cutout.png")
        assert cut.mode == "RGBA" and cut.size == size


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.fromarray(np.zeros((40, 60, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert read_photo(tmp_path / "rot.jpg").shape == (60, 40, 3)


def test_fashion_has_no_cutout_and_classes_come_from_checkpoint(fashion_ckpt, tmp_path):
    Image.fromarray(np.full((64, 48, 3), 100, np.uint8)).save(tmp_path / "x.png")
    predict(predict_cfg(fashion_ckpt, tmp_path / "x.png", tmp_path / "out"))
    assert (tmp_path / "out" / "x_label.png").exists() and not (tmp_path / "out" / "x_cutout.png").exists()
    assert Predictor.from_checkpoint(fashion_ckpt).class_names[-1] == "dress"


def test_empty_and_missing_inputs_are_clear_errors(person_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No photos in"):
        predict(predict_cfg(person_ckpt, tmp_path / "empty", tmp_path / "out"))
    with pytest.raises(DataError, match="does not exist"):
        predict(predict_cfg(person_ckpt, tmp_path / "nope", tmp_path / "out"))
    with pytest.raises(DataError, match="empty"):
        read_photo(b"")


def test_onnx_runs_on_the_cpu_only(person_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr("fashionseg.serving.predict.resolve_device", lambda device: "cuda")  # as on a GPU machine
    with pytest.raises(ConfigError, match="onnx=.*device=cpu"):
        predict(predict_cfg(person_ckpt, tmp_path, tmp_path / "out", "onnx=model.onnx", "device=cuda"))


def test_postprocess_option_applies_the_refinement(person_ckpt, tmp_path):
    photo = np.random.default_rng(1).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "x.png")
    predict(predict_cfg(person_ckpt, tmp_path / "x.png", tmp_path / "out", "~postprocess.none",
                        "+postprocess.least._target_=helpers.LeastLikelyLabels"))
    written = np.array(Image.open(tmp_path / "out" / "x_label.png"))
    probs = Predictor.from_checkpoint(person_ckpt, channels_last=True).probabilities([photo])[0]
    assert np.array_equal(written, probs.argmin(0).numpy()) and not np.array_equal(written, probs.argmax(0).numpy())
    cleaned = predict(predict_cfg(person_ckpt, tmp_path / "x.png", tmp_path / "clean", "postprocess=cleanup"))
    assert cleaned["failed"] == {} and Image.open(tmp_path / "clean" / "x_label.png").size == (48, 64)


def test_predict_py_exits_non_zero_with_the_count_of_failed_photos(person_ckpt, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((64, 48, 3), 100, np.uint8)).save(photos / "good.png")
    (photos / "zero.jpg").write_bytes(b"")
    (photos / "gone.jpg").symlink_to(tmp_path / "no_such_file.jpg")  # a broken link is reported, not skipped
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "predict.py", f"ckpt_path={person_ckpt}", f"input={photos}",
                           f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "2 of 3 photo(s) could not be read" in log and "Traceback" not in log, log[-2000:]
    assert "gone.jpg is a broken link" in log and "zero.jpg is empty (0 bytes)" in log
    assert (out / "good_label.png").is_file()


def test_zero_byte_file_and_upload_get_the_same_message(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(DataError) as from_file:
        read_photo(tmp_path / "zero.jpg", name="zero.jpg")
    with pytest.raises(DataError) as from_upload:
        read_photo(b"", name="zero.jpg")
    assert str(from_file.value) == str(from_upload.value) == "zero.jpg is empty (0 bytes); give a JPEG or PNG photo."


def test_overlay_draws_void_ground_truth_in_grey():
    from fashionseg.core.io import VOID_COLOUR, overlay

    photo = np.zeros((4, 4, 3), np.uint8)
    label = np.array([[0, 1, 255, 255]] * 4, np.uint8)  # a ground-truth map with the ignore label
    out = np.asarray(overlay(photo, label, np.array([[0, 0, 0], [200, 0, 0]]), ["background", "a"], 1.0, False))
    assert (out[:, 2:] == VOID_COLOUR).all() and (out[:, 1] == [200, 0, 0]).all() and (out[:, 0] == 0).all()


def test_overlay_draws_class_boundaries_as_thin_lines_on_request(person_ckpt, tmp_path):
    from fashionseg.core.io import BOUNDARY_COLOUR, class_boundaries, overlay

    photo = np.full((6, 8, 3), 90, np.uint8)
    label = np.zeros((6, 8), np.uint8)
    label[:, 3:6] = 1  # background | person | other class
    label[:, 6:] = 2
    palette, names = np.array([[0, 0, 0], [200, 0, 0], [0, 0, 200]]), ["background", "a", "b"]
    plain = np.asarray(overlay(photo, label, palette, names, 0.5, legend=False))
    lined = np.asarray(overlay(photo, label, palette, names, 0.5, legend=False, boundaries=True))
    # Column 3 (class a's side of its edge with the background) and columns 5 and 6 (both sides of a|b).
    on_line = (lined == BOUNDARY_COLOUR).all(2)
    assert on_line.any(0).tolist() == [False, False, False, True, False, True, True, False] and on_line[:, 3].all()
    assert (lined[~on_line] == plain[~on_line]).all()
    # predict.py boundaries=true: the same overlay with the lines.
    photo = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(photo)
    stripes = ["~postprocess.none", "+postprocess.stripes._target_=helpers.Stripes"]  # labels with edges
    predict(predict_cfg(person_ckpt, photo, tmp_path / "a", *stripes))
    predict(predict_cfg(person_ckpt, photo, tmp_path / "b", *stripes, "boundaries=true"))
    lines = class_boundaries(np.array(Image.open(tmp_path / "b" / f"{photo.stem}_label.png")))
    with_lines, without = (np.array(Image.open(tmp_path / d / f"{photo.stem}_overlay.png"))[:, : lines.shape[1]]
                           for d in ("b", "a"))
    assert lines.any() and (with_lines[lines] == BOUNDARY_COLOUR).all()
    assert (with_lines[~lines] == without[~lines]).all()


class Recording(torch.nn.Module):
    """A tiny fixed network that records the input sizes it is run at."""

    def __init__(self):
        super().__init__()
        self.conv, self.sizes = torch.nn.Conv2d(3, 2, 3, padding=1), []
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return {"out": self.conv(x.float() / 255 if x.dtype == torch.uint8 else x)}


def test_multi_scale_tta_averages_the_logits_of_each_scale_and_mirror_image():
    net = Recording()
    images = torch.randint(0, 256, (2, 3, 96, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(network_logits(net, images), net(images)["out"])
        net.sizes.clear()
        got = network_logits(net, images, tta_hflip=True, scales=(0.5, 1.0, 1.5))
        # Each scale's sides rounded to a multiple of 32 (48 -> 64, 32 -> 32; 144 -> 160, 96 -> 96), both mirrors.
        assert net.sizes == [(64, 32), (64, 32), (96, 64), (96, 64), (160, 96), (160, 96)]
        unit = images.float() / 255
        expected = torch.zeros_like(got)
        for size in ((64, 32), (96, 64), (160, 96)):
            x = unit if size == (96, 64) else F.interpolate(unit, size=size, mode="bilinear", align_corners=False,
                                                           antialias=size[0] < 96)
            for flip in (False, True):
                out = net(x.flip(-1) if flip else x)["out"]
                out = out.flip(-1) if flip else out
                expected += F.interpolate(out, size=(96, 64), mode="bilinear", align_corners=False) / 6
    assert got.shape == (2, 2, 96, 64)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("scales", [[], [0.0, 1.0], [-1.0]])
def test_bad_tta_scales_are_refused_before_anything_runs(person_ckpt, scales):
    with pytest.raises(ConfigError, match=r"tta_scales=.*positive factors"):
        Predictor.from_checkpoint(person_ckpt, tta_scales=scales)


def photo_folder(folder, n: int, h: int = 64, w: int = 48):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.jpg")
    return folder


def decodes(path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except OSError:
        return False


def test_a_write_cut_short_leaves_no_truncated_output(person_ckpt, tmp_path, monkeypatch):
    photos, out = photo_folder(tmp_path / "photos", 2), tmp_path / "out"
    real_save, saves = Image.Image.save, []

    def killed_while_writing(self, fp, format=None, **params):
        saves.append(fp)
        if len(saves) == 4:  # the second photo's label: half a PNG, then the process dies
            buffer = __import__("io").BytesIO()
            real_save(self, buffer, format="PNG")
            data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
            if hasattr(fp, "write"):
                fp.write(data)
            else:
                open(fp, "wb").write(data)
            raise KeyboardInterrupt
        return real_save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        predict(predict_cfg(person_ckpt, photos, out, "batch_size=1"))
    files = sorted(out.iterdir())
    assert [p.name for p in files] == ["p00_cutout.png", "p00_label.png", "p00_overlay.png"]
    assert all(decodes(p) for p in files)


def test_skip_existing_redoes_only_the_missing_outputs(person_ckpt, tmp_path, caplog):
    photos, out = photo_folder(tmp_path / "photos", 3), tmp_path / "out"
    predict(predict_cfg(person_ckpt, photos, out))
    (out / "p01_overlay.png").unlink()
    (out / ".p02_label.png.x1y2.tmp").write_bytes(b"\x89PNG")  # what a killed write leaves
    kept = (out / "p00_label.png").stat().st_mtime_ns
    caplog.set_level(logging.INFO)
    result = predict(predict_cfg(person_ckpt, photos, out, "skip_existing=true"))
    assert result["skipped"] == [str(photos / "p00.jpg"), str(photos / "p02.jpg")]
    assert [[Path(p).name for p in w] for w in result["written"]] == [
        ["p01_label.png", "p01_overlay.png", "p01_cutout.png"]]
    assert (out / "p00_label.png").stat().st_mtime_ns == kept and decodes(out / "p01_overlay.png")
    assert not list(out.glob(".*.tmp")) and "already have every output" in caplog.text


@pytest.mark.slow
def test_predict_killed_while_writing_leaves_only_whole_pictures(person_ckpt, tmp_path):
    photos, out = photo_folder(tmp_path / "photos", 12, 600, 400), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "predict.py", f"ckpt_path={person_ckpt}", f"input={photos}",
                             f"output={out}", "batch_size=1", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out.is_dir() and any(out.iterdir())) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    pictures = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert pictures or list(out.iterdir()), "killed before writing"
    assert all(decodes(p) for p in pictures)


@pytest.mark.parametrize("classes", [2, 3])
def test_label_maps_are_the_arg_max_of_the_resized_logits(classes):
    """Two classes take a shortcut (their logits' difference resized, not both): the same labels as the arg-max of
    ``scores``; more classes the arg-max itself. The photo is cropped out of the padded input and resized up."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, classes, 1, bias=False), torch.nn.AvgPool2d(5, 1, 2))
    net[0].weight.data = torch.eye(3)[:classes, :, None, None]  # class c: colour channel c, smoothed
    predictor = Predictor(lambda x: {"out": net(x.float())}, [f"c{i}" for i in range(classes)], image_size=[64, 32])
    photo = np.random.default_rng(0).integers(0, 256, (90, 61, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = predictor.scores([photo])[0].argmax(0).numpy()
        labels = predictor([photo])[0]
    assert labels.shape == (90, 61) and labels.dtype == np.uint8
    assert len(np.unique(expected)) == classes  # not a trivial map
    assert (labels == expected).mean() > 0.9999
