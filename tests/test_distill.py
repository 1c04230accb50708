import csv
import json

import hydra
import pytest
import torch
from conftest import make_checkpoint
from torch import nn

from fashionseg import ConfigError
from fashionseg.distill import Distiller, check_teacher_split
from fashionseg.heads import Head
from fashionseg.module import SegmentationModule
from fashionseg.train import train

PERSON = Head("person", ("background", "person"))


class Fixed(nn.Module):
    """A teacher whose logits are given."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, images):
        return {"out": self.logits.expand(len(images), -1, -1, -1)}


def test_distillation_term_is_zero_on_the_teachers_logits_and_leaves_void_pixels_out():
    torch.manual_seed(0)
    teacher_logits = torch.randn(1, 2, 4, 6)
    distiller = Distiller(Fixed(teacher_logits), [(PERSON, PERSON)], temperature=2.0, ignore_index=255)
    images = torch.zeros(2, 3, 4, 6, dtype=torch.uint8)
    target = torch.zeros(2, 4, 6, dtype=torch.long)
    same = teacher_logits.expand(2, -1, -1, -1).clone()
    assert distiller.loss(images, same, target).item() == pytest.approx(0.0, abs=1e-6)

    student = same.clone()
    student[:, :, 0] = -student[:, :, 0]  # disagree on the first row only
    assert distiller.loss(images, student, target).item() > 0.01
    target[:, 0] = 255  # ... which is void: nothing left to learn
    assert distiller.loss(images, student, target).item() == pytest.approx(0.0, abs=1e-6)

    # Gradients reach the student's logits, never the frozen teacher.
    student.requires_grad_(True)
    target[:, 0] = 0
    distiller.loss(images, student, target).backward()
    assert student.grad.abs().sum() > 0 and distiller.teacher.logits.grad is None


def test_a_teacher_is_matched_by_its_classes(tmp_path, data_root):
    fashion = make_checkpoint(tmp_path / "fashion" / "checkpoints" / "f.ckpt", data_root, "fashion")
    with pytest.raises(ConfigError, match=r"no head with the student's person classes \['background', 'person'\]"):
        Distiller.from_config({"teacher": str(fashion), "check_split": False}, [PERSON], {})
    joint = make_checkpoint(tmp_path / "joint" / "checkpoints" / "j.ckpt", data_root, "joint")
    distiller = Distiller.from_config({"teacher": str(joint), "check_split": False}, [PERSON], {})
    (student, teacher), = distiller.pairs  # the joint network's person head teaches the person network
    assert teacher.name == "person" and teacher.channels == slice(0, 2)
    with pytest.raises(ConfigError, match="distill.teacher is not set"):
        Distiller.from_config({"teacher": None}, [PERSON], {})


def test_a_teacher_that_learned_this_runs_evaluation_photos_is_refused(tmp_path):
    ckpt = tmp_path / "teacher" / "checkpoints" / "t.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.touch()
    with pytest.raises(ConfigError, match="split.json is missing.*distill.check_split=false"):
        check_teacher_split(ckpt, {"train": ["a"], "val": [], "test": ["c"]})
    (tmp_path / "teacher" / "split.json").write_text(json.dumps(
        {"root": "/data", "seed": 42, "train": ["a", "b"], "val": ["c"], "test": ["d", "e"]}))
    check_teacher_split(ckpt, {"train": ["a", "b", "c"], "val": [], "test": ["d", "e"]})  # train + val: fine
    check_teacher_split(ckpt, {"train": ["a", "b"], "val": ["c"], "test": ["d", "e"]})  # validated on c only
    with pytest.raises(ConfigError, match=r"trained or selected on 1 of this run's test photos \(e.g. \['c'\]"):
        check_teacher_split(ckpt, {"train": ["a", "b"], "val": ["d"], "test": ["c", "e"]})
    with pytest.raises(ConfigError, match=r"trained on 1 of this run's val photos \(e.g. \['b'\]"):
        check_teacher_split(ckpt, {"train": ["a"], "val": ["b"], "test": ["d", "e"]})


def test_train_distils_a_teacher_into_a_student_that_does_not_carry_it(train_cfg, tmp_path, data_root):
    teacher = make_checkpoint(tmp_path / "teacher" / "checkpoints" / "t.ckpt", data_root, "person")
    manifest = tmp_path / "teacher" / "split.json"
    cfg = train_cfg("task=person", "distill=kd", f"distill.teacher={teacher}", "distill.temperature=3",
                    f"paths.output_dir={tmp_path / 'student'}")
    # A teacher trained on the photos this run tests on is refused before training.
    test_ids = compose_split(cfg)["test"]
    manifest.write_text(json.dumps({"train": test_ids[:3], "val": [], "test": []}))
    with pytest.raises(ConfigError, match="trained or selected on 3 of this run's test photos"):
        train(cfg)
    manifest.write_text(json.dumps({"train": [], "val": [], "test": test_ids}))
    _, results = train(cfg)
    rows = list(csv.DictReader((tmp_path / "student" / "csv" / "metrics.csv").open()))
    distill = [float(r["train/distill"]) for r in rows if r.get("train/distill")]
    assert distill and distill[0] > 0
    # The student's checkpoint holds the student alone, and its config names the teacher.
    ckpt = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=False)
    alone = SegmentationModule.from_config(cfg, pretrained=False).state_dict()
    assert ckpt["state_dict"].keys() == alone.keys()
    assert ckpt["hyper_parameters"]["config"]["distill"]["teacher"] == str(teacher)


def compose_split(cfg) -> dict:
    """The split ids a run of ``cfg`` draws."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule.ids


def test_a_teacher_of_another_input_size_sees_the_batch_at_its_scale():
    class Recorder(nn.Module):
        """A teacher that keeps the size it was shown and answers 'person' everywhere."""

        def __init__(self):
            super().__init__()
            self.anchor, self.seen = nn.Parameter(torch.zeros(())), None

        def forward(self, images):
            self.seen = tuple(images.shape[-2:])
            logits = torch.zeros(len(images), 2, *images.shape[-2:])
            logits[:, 1] = 5.0
            return {"out": logits + self.anchor}

    images = torch.zeros(2, 3, 64, 96, dtype=torch.uint8)
    target = torch.zeros(2, 64, 96, dtype=torch.long)
    student = torch.zeros(2, 2, 64, 96)
    student[:, 1] = 5.0  # agrees with the teacher
    teacher = Recorder()
    distiller = Distiller(teacher, [(PERSON, PERSON)], scale=1.25)
    assert distiller.loss(images, student, target).item() == pytest.approx(0.0, abs=1e-6)
    assert teacher.seen == (96, 128)  # 64 x 1.25 = 80 and 96 x 1.25 = 120, rounded to multiples of 32
    Distiller(teacher, [(PERSON, PERSON)]).loss(images, student, target)
    assert teacher.seen == (64, 96)
    with pytest.raises(ConfigError, match="distill.temperature and distill.scale must be > 0"):
        Distiller(teacher, [(PERSON, PERSON)], scale=0)
