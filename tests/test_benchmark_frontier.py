"""scripts/benchmark_frontier.py on tiny checkpoints and the synthetic set: the JSON's fields, the plot, MediaPipe's
rows skipped with a message when it is missing and measured through its worker when it is there (a stand-in
package here: the real one lives in its own environment), fashion recipes in a panel of their own with the time
ratio to a reference recipe. No timing is asserted."""

import json
import math
import re
import sys

import pytest
from conftest import load_script, make_checkpoint

FAKE_MEDIAPIPE = '''
import numpy as np


class _Result:
    def __init__(self, mask):
        self.segmentation_mask = mask


class _Model:
    def __init__(self, *args, **kwargs):
        pass

    def process(self, photo):  # the left half of the photo is the person
        mask = np.zeros(photo.shape[:2], np.float32)
        mask[:, : photo.shape[1] // 2] = 0.9
        return _Result(mask)


class selfie_segmentation:
    SelfieSegmentation = _Model


class pose:
    Pose = _Model


class solutions:
    selfie_segmentation = selfie_segmentation
    pose = pose
'''


@pytest.fixture(scope="module")
def checkpoints(data_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("frontier")
    return (make_checkpoint(folder / "a" / "deeplab.ckpt", data_root, "person"),
            make_checkpoint(folder / "b" / "u2netp.ckpt", data_root, "person", model="u2netp"))


def run(data_root, checkpoints, out, *extra):
    deeplab, u2netp = checkpoints
    return load_script("benchmark_frontier").main([
        "--recipe", "deeplab", str(deeplab), "--recipe", "u2netp+guided", str(u2netp), "postprocess=guided",
        "guided.radius=2", "--data", str(data_root), "--photos", "2", "--rounds", "1", "--warmup", "1",
        "--out", str(out), *extra])


def test_without_mediapipe_its_rows_are_skipped_with_how_to_install_it(tmp_path):
    python, why = load_script("benchmark_frontier").mediapipe_python(str(tmp_path / "no-python"))
    assert python is None and "MediaPipe is not installed" in why and "make mediapipe" in why


def test_mediapipes_rows_come_from_its_worker_with_the_ratio_to_the_selfie_model(data_root, checkpoints, tmp_path,
                                                                                  monkeypatch):
    package = tmp_path / "site" / "mediapipe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_MEDIAPIPE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    out = tmp_path / "frontier.json"
    result = run(data_root, checkpoints, out, "--mediapipe-python", sys.executable)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["test_photos"] == {"person": 8} and result["timed_photos"] == {"person": 2}
    assert set(result["pareto_front"]) == {"person"} and result["pareto_front"]["person"]
    assert result["references"] == {"person": "mediapipe selfie"}
    assert result["recipes"][1]["params"] == {"guided": {"radius": 2}} and result["mediapipe_skipped"] == ""
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    rows = {r["name"]: r for r in result["rows"]}
    for row in rows.values():
        assert 0 <= row["miou"] <= 1 and 0 <= row["boundary_iou"] <= 1 and row["ms"] > 0
    assert set(rows) == {"deeplab", "u2netp+guided", "mediapipe selfie", "mediapipe pose"}
    assert rows["mediapipe selfie"]["x_selfie"] == 1.0 and rows["deeplab"]["x_selfie"] > 0
    assert rows["deeplab"]["x_reference"] == pytest.approx(rows["deeplab"]["ms"] / rows["mediapipe selfie"]["ms"],
                                                           abs=1e-3)
    assert rows["mediapipe selfie"]["miou"] == rows["mediapipe pose"]["miou"] > 0  # the same stand-in mask


def test_fashion_recipes_get_a_panel_of_their_own_and_the_ratio_to_their_reference(data_root, checkpoints,
                                                                                  fashion_ckpt, tmp_path):
    out = tmp_path / "frontier.json"
    result = run(data_root, checkpoints, out, "--no-mediapipe", "--recipe", "fashion", str(fashion_ckpt),
                 "--recipe", "fashion + crf", str(fashion_ckpt), "postprocess=crf", "crf.iterations=2",
                 "--reference", "fashion + crf")
    rows = {r["name"]: r for r in result["rows"]}
    assert {name: row["task"] for name, row in rows.items()} == {
        "deeplab": "person", "u2netp+guided": "person", "fashion": "fashion", "fashion + crf": "fashion"}
    assert set(result["pareto_front"]) == {"person", "fashion"}
    assert set(result["pareto_front"]["fashion"]) <= {"fashion", "fashion + crf"}
    assert result["references"] == {"fashion": "fashion + crf"} and result["test_photos"]["fashion"] == 8
    assert rows["fashion + crf"]["x_reference"] == 1.0 and rows["fashion"]["x_reference"] > 0
    assert rows["deeplab"]["x_reference"] is None and rows["deeplab"]["x_selfie"] is None  # no MediaPipe, no reference
    assert all(0 <= row["miou"] <= 1 for row in rows.values())
    from PIL import Image

    width, height = Image.open(tmp_path / "frontier.png").size
    assert width > 1.5 * height  # two panels side by side
    report = (tmp_path / "frontier.md").read_text()
    charts = re.findall(r"```mermaid\n(.*?)```", report, re.S)
    assert len(charts) == 2 and "quadrantChart" in charts[0] and "| fashion + crf |" in report
    assert set(re.findall(r'"([^"]+)": \[', charts[1])) == {"fashion", "fashion + crf"}  # the fashion panel's points


def test_the_mermaid_chart_places_each_method_on_a_log_time_axis_and_marks_the_front():
    mermaid = load_script("benchmark_frontier").mermaid
    rows = [{"name": "mediapipe selfie", "ms": 5.0, "miou": 0.9469}, {"name": "fast", "ms": 20.0, "miou": 0.955},
            {"name": "slow", "ms": 100.0, "miou": 0.95}, {"name": 'best "x"', "ms": 400.0, "miou": 0.9686}]
    front = ["mediapipe selfie", "fast", 'best "x"']
    chart = mermaid({"title": "person, 240 test photos", "rows": rows, "front": front})
    assert chart.startswith("```mermaid\n%%{init: ") and chart.endswith("```\n")
    assert 'x-axis "2 ms" --> "500 ms per photo (log scale)"' in chart and 'y-axis "94% test mIoU" --> "98%"' in chart
    point = re.compile(r'^    "([^"]+)": \[(1|0\.\d+), (1|0\.\d+)\] radius: (\d+), color: (#[0-9a-f]{6})$')
    placed = {m[1]: m for m in (point.match(line) for line in chart.splitlines()) if m}
    assert set(placed) == {"mediapipe selfie", "fast", "slow", "best 'x'"}  # quotes cannot end a label early
    x = {name: float(m[2]) for name, m in placed.items()}
    assert x["mediapipe selfie"] == pytest.approx(math.log(5 / 2) / math.log(250), abs=1e-3)
    assert x["fast"] - x["mediapipe selfie"] == pytest.approx(math.log(20 / 5) / math.log(250), abs=2e-3)  # log scale
    assert float(placed["slow"][3]) == pytest.approx((95.0 - 94) / 4, abs=1e-3)
    assert placed["mediapipe selfie"][5] != placed["fast"][5]  # MediaPipe's colour is not ours
    assert int(placed["slow"][4]) < int(placed["fast"][4])  # the front's points are larger


def test_a_reference_that_is_no_recipe_is_named(data_root, checkpoints, tmp_path):
    with pytest.raises(SystemExit, match="--reference 'nothing' is not the name of a --recipe"):
        run(data_root, checkpoints, tmp_path / "f.json", "--no-mediapipe", "--reference", "nothing")


def test_the_pareto_front_keeps_what_nothing_beats_on_both_time_and_accuracy():
    pareto = load_script("benchmark_frontier").pareto
    rows = [{"name": "fast", "ms": 5, "miou": 0.94}, {"name": "slow-worse", "ms": 30, "miou": 0.93},
            {"name": "mid", "ms": 12, "miou": 0.96}, {"name": "best", "ms": 300, "miou": 0.97}]
    assert pareto(rows) == ["fast", "mid", "best"]


def test_a_recipe_option_that_does_not_exist_is_named(checkpoints):
    parse = load_script("benchmark_frontier").parse_recipe
    with pytest.raises(SystemExit, match="unknown option 'tta'"):
        parse(["x", "model.ckpt", "tta=true"])
    with pytest.raises(SystemExit, match=r"parameters for \['crf'\] but postprocess=guided"):
        parse(["x", "model.ckpt", "postprocess=guided", "crf.bilateral_sxy=40"])


def test_a_recipe_with_other_test_photos_is_refused(data_root, checkpoints, tmp_path):
    import torch

    ckpt = torch.load(checkpoints[1], weights_only=False)
    ckpt["hyper_parameters"]["config"]["data"]["seed"] += 1  # another permutation: other test photos
    other = tmp_path / "other" / "u2netp.ckpt"
    other.parent.mkdir()
    torch.save(ckpt, other)
    with pytest.raises(SystemExit, match="--recipe other: its test split differs from deeplab's"):
        load_script("benchmark_frontier").main([
            "--recipe", "deeplab", str(checkpoints[0]), "--recipe", "other", str(other), "--data", str(data_root),
            "--no-mediapipe", "--out", str(tmp_path / "f.json")])
