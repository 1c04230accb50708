import csv
import json

import hydra
import numpy as np
import pytest
import torch
from conftest import make_checkpoint
from torch import nn

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.heads import Head
from fashionseg.data.transforms import TrainTransform
from fashionseg.training.distill import Distiller, StoredLogits, check_teacher_split, teacher_path, write_teacher_logits
from fashionseg.training.module import SegmentationModule
from fashionseg.training.train import train

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


def test_stored_teacher_logits_are_warped_exactly_as_the_label():
    """A teacher whose logits are the label's one-hot code still agrees with the label after every flip,
    zoom, shift and rotation: the stored logits travel with the photo's geometry, not its colours."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=(60, 40)).repeat(2, 0).repeat(2, 1).astype(np.uint8)  # 120x80
    image = rng.integers(0, 255, size=(120, 80, 3), dtype=np.uint8)
    teacher = np.eye(3, dtype=np.float16)[label] * 8  # (H, W, 3)
    transform = TrainTransform([96, 64], 32, {"hflip": 0.5, "scale": [0.75, 1.25], "translate": 0.1, "rotate": 10,
                                              "color_jitter": 0.3}, ignore_index=255)
    for seed in range(8):
        transform.reseed(seed)
        item = transform(image, label, teacher)
        mask, logits = item["mask"], item["teacher"]
        assert logits.shape == (3, 96, 64) and logits.dtype == torch.float32
        labelled = mask != 255
        assert labelled.float().mean() > 0.5
        assert torch.equal(logits.argmax(0)[labelled], mask[labelled])
        transform.reseed(seed)  # the same draw without a teacher: the same photo and label
        alone = transform(image, label)
        assert torch.equal(alone["image"], item["image"]) and torch.equal(alone["mask"], mask)


def test_train_distils_stored_teacher_logits_without_running_the_teacher(train_cfg, tmp_path, data_root,
                                                                         monkeypatch):
    teacher = make_checkpoint(tmp_path / "teacher" / "checkpoints" / "t.ckpt", data_root, "person")
    cfg = train_cfg("task=person", f"paths.output_dir={tmp_path / 'student'}")
    ids = compose_split(cfg)
    # The teacher learned the student's training photos only.
    (tmp_path / "teacher" / "split.json").write_text(json.dumps({"train": ids["train"], "val": [], "test": []}))
    folder = write_teacher_logits(teacher, tmp_path / "logits", tta_hflip=True)
    stored = StoredLogits(folder)
    assert stored.ids == ids["train"] and [h.name for h in stored.heads] == ["person"]
    first = np.load(folder / "logits" / "0.npy")
    assert first.dtype == np.float16 and first.shape == (96, 64, 2)  # the photo's own size, 2 classes
    with pytest.raises(ConfigError, match="already holds stored teacher logits"):
        write_teacher_logits(teacher, folder)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher network ran during training")

    monkeypatch.setattr(Distiller, "teacher_logits", no_teacher)
    cfg = train_cfg("task=person", "distill=kd", f"distill.logits={folder}", f"paths.output_dir={tmp_path / 'student'}")
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "student" / "csv" / "metrics.csv").open()))
    distill = [float(r["train/distill"]) for r in rows if r.get("train/distill")]
    assert distill and distill[0] > 0

    # A damaged file is named, with how to mend it (in a new run folder: the finished one would be skipped).
    cfg = train_cfg("task=person", "distill=kd", f"distill.logits={folder}", f"paths.output_dir={tmp_path / 'again'}")
    damaged = folder / "logits" / "1.npy"
    saved = damaged.read_bytes()
    damaged.write_bytes(saved[:100])
    with pytest.raises(DataError, match=rf"Cannot read stored teacher logits {damaged} \(photo {ids['train'][1]}\)"):
        train(cfg)
    damaged.write_bytes(saved)

    # Stored logits of other photos, or of a teacher that learned this run's test photos, are refused.
    (folder / "teacher.json").write_text(json.dumps({**stored.manifest, "ids": ids["train"][1:]}))
    first_id = ids["train"][0]
    with pytest.raises(ConfigError, match=rf"no logits for 1 of this run's training photos \(e.g. \['{first_id}'\]"):
        train(cfg)
    (folder / "split.json").write_text(json.dumps({"train": ids["test"][:2], "val": [], "test": []}))
    with pytest.raises(ConfigError, match="trained or selected on 2 of this run's test photos"):
        train(cfg)


def test_distill_takes_one_teacher_and_names_a_folder_that_holds_no_logits(tmp_path, person_ckpt):
    with pytest.raises(ConfigError, match="both set: give one"):
        teacher_path({"teacher": str(person_ckpt), "logits": str(tmp_path)})
    with pytest.raises(ConfigError, match=rf"distill.logits={tmp_path} is not a folder of stored teacher logits.*"
                                          "scripts/teacher_logits.py"):
        teacher_path({"logits": str(tmp_path)})
    with pytest.raises(ConfigError, match="split.json is missing"):
        write_teacher_logits(person_ckpt, tmp_path / "out")
