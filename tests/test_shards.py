"""Streaming shards (issue 40, part 2): LitData shards written by prepare_data.py --shards read as the folder layout
reads (same split, items and augmentation), each sample once per epoch in a seeded order, across dataloader workers
and DDP ranks."""

import json
import os
import subprocess
import sys
from collections import Counter

import hydra
import pytest
import torch
from conftest import ROOT, compose_cfg, load_script, small_overrides
from hydra.errors import InstantiationException

from fashionseg.core.errors import ConfigError, DataError

pytest.importorskip("litdata")


def write(data_root, out, *overrides):
    rc = load_script("prepare_data").main(["fashionista", "--src", str(data_root), "--out", str(out), "--shards",
                                           *overrides])
    assert rc == 0
    return out / "shards"


@pytest.fixture(scope="module")
def shards(data_root, tmp_path_factory):
    return write(data_root, tmp_path_factory.mktemp("shards"))


def datamodule(data_root, *overrides, task="fashion"):
    cfg = compose_cfg("train", [f"data.root={data_root}", "data.image_size=[96,64]", "data.batch_size=2",
                                f"task={task}", *overrides])
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    return dm


def epochs(dm, n=2) -> list[list[str]]:
    loader = dm.train_dataloader()
    return [[i for batch in loader for i in batch["id"]] for _ in range(n)]


@pytest.mark.parametrize("task", ["fashion", "person"])
def test_shards_read_as_the_folder_layout_split_items_augmentation_and_class_counts(data_root, shards, task):
    memory = datamodule(data_root, task=task)
    streamed = datamodule(data_root, "data.format=shards", f"data.shards={shards}", task=task)
    assert streamed.ids == memory.ids and len(streamed.ids["train"]) == 10
    assert (streamed.class_counts() == memory.class_counts()).all()
    for name in ("val", "test"):  # evaluation items: identical tensors
        for i in range(len(memory.ids[name])):
            a, b = memory.datasets[name][i], streamed.datasets[name][i]
            assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    train = streamed.datasets["train"]
    for epoch in (0, 1):  # training items: the augmentation the in-memory set draws for (seed, epoch, index)
        train.set_epoch(epoch + 1)  # LitData's loader counts epochs from 1
        for i in (0, 3, 9):
            a, b = memory.datasets["train"][(i, epoch)], train[i]
            assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    photo, label = train.arrays[4]  # random access, for the callbacks that draw single photos
    expected = memory.datasets["train"].arrays[4]
    assert (photo == expected[0]).all() and (label == expected[1]).all()


def test_each_sample_once_per_epoch_over_two_workers_in_an_order_the_seed_fixes(data_root, shards):
    streamed = datamodule(data_root, "data.format=shards", f"data.shards={shards}", "data.num_workers=2")
    first = epochs(streamed)
    for seen in first:
        assert sorted(seen) == sorted(streamed.ids["train"])  # each training photo once
    assert first[0] != first[1]  # a new order each epoch
    again = datamodule(data_root, "data.format=shards", f"data.shards={shards}", "data.num_workers=2")
    assert epochs(again) == first  # the same seed: the same orders


def test_a_process_that_would_get_no_photos_is_told_what_to_lower(data_root, shards, monkeypatch):
    streamed = datamodule(data_root, "data.format=shards", f"data.shards={shards}", "data.eval_batch_size=4")
    monkeypatch.setenv("WORLD_SIZE", "2")  # LitData's rank and world size, as the first of 2 DDP processes has them
    monkeypatch.setenv("GLOBAL_RANK", "0")
    with pytest.raises(ConfigError, match="no val photos.*split's 2 photos.*Lower data.eval_batch_size"):
        streamed.val_dataloader()


def test_the_shards_split_is_fixed_and_their_absence_is_named(data_root, shards, tmp_path):
    with pytest.raises(ConfigError, match=r"written with split \[0.5, 0.1, 0.4\] and seed 42.*data.seed=7"):
        datamodule(data_root, "data.format=shards", f"data.shards={shards}", "data.seed=7")
    with pytest.raises(DataError, match="manifest.json does not exist.*prepare_data.py"):
        datamodule(data_root, "data.format=shards", f"data.shards={tmp_path}")
    with pytest.raises(InstantiationException, match="data.format='tar' must be memory"):
        datamodule(data_root, "data.format=tar")
    other = write(data_root, tmp_path / "other", "data.seed=7")  # a split of its own, written so
    assert datamodule(data_root, "data.format=shards", f"data.shards={other}", "data.seed=7").ids["train"]


def test_training_and_evaluation_on_shards(data_root, shards, tmp_path):
    from fashionseg.evaluation.evaluate import evaluate
    from fashionseg.training.train import train

    out = tmp_path / "run"
    cfg = compose_cfg("train", [*small_overrides(data_root, out), "model=u2netp", "task=person", "data.format=shards",
                                f"data.shards={shards}", "trainer.max_epochs=2"])
    _, results = train(cfg)
    assert results["images_seen"] == 20 and set(results["split"]["test"]) == set(json.loads(
        (shards / "manifest.json").read_text())["ids"]["test"])
    scores = evaluate(compose_cfg("eval", [f"ckpt_path={results['best_checkpoint']}", f"data.root={data_root}",
                                           f"paths.output_dir={tmp_path / 'eval'}", "trainer.precision=32-true"]))
    assert scores["scores"]["miou"] == pytest.approx(results["test"]["miou"], abs=1e-6)


@pytest.mark.slow  # two DDP trainings of two processes
def test_two_ddp_ranks_with_two_workers_see_each_sample_once_per_epoch_in_the_same_order_twice(data_root, tmp_path):
    # 12 training photos: 3 for each of 2 ranks x 2 workers, one batch of 3; 4 validation and test photos, one each.
    split = "data.split=[0.6,0.2,0.2]"
    shards = write(data_root, tmp_path / "shards12", split)

    def run(name):
        seen = tmp_path / name
        args = [*small_overrides(data_root, tmp_path / f"{name}-run"), "model=u2netp", "task=person",
                "data.format=shards", f"data.shards={shards}", split, "data.num_workers=2", "data.batch_size=3",
                "data.eval_batch_size=1",
                "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / f'{name}-run'}",
                "+callbacks.seen._target_=helpers.SeenIds", f"+callbacks.seen.folder={seen}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "HYDRA_FULL_ERROR": "1"}
        proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return {rank: [json.loads(line) for line in (seen / f"seen-{rank}.jsonl").read_text().splitlines()]
                for rank in (0, 1)}

    train_ids = json.loads((shards / "manifest.json").read_text())["ids"]["train"]
    first = run("a")
    for epoch in (0, 1):
        per_rank = [[i for b in first[rank] if b["epoch"] == epoch for i in b["ids"]] for rank in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == 6  # ranks in step
        assert Counter(per_rank[0] + per_rank[1]) == Counter(train_ids)  # every photo once, on one rank
    assert first == run("b")  # one seed: the same order on each rank, epoch by epoch


def test_a_run_stopped_mid_epoch_resumes_mid_epoch_each_photo_still_once(data_root, shards, train_cfg, tmp_path):
    from fashionseg.core.errors import Interrupted
    from fashionseg.training.train import train

    seen = tmp_path / "seen"
    streamed = ["task=person", "data.format=shards", f"data.shards={shards}", "trainer.max_epochs=2",
                "+callbacks.seen._target_=helpers.SeenIds", f"+callbacks.seen.folder={seen}"]
    with pytest.raises(Interrupted):  # SIGTERM after step 7: 2 of epoch 1's 5 batches trained
        train(train_cfg(*streamed, "+callbacks.sigterm._target_=helpers.SigtermAtStep", "+callbacks.sigterm.step=7"))
    _, results = train(train_cfg(*streamed, "ckpt_path=last"))  # LitData's loader state is in last.ckpt
    batches = [json.loads(line) for line in (seen / "seen-0.jsonl").read_text().splitlines()]
    train_ids = json.loads((shards / "manifest.json").read_text())["ids"]["train"]
    for epoch in (0, 1):
        assert Counter(i for b in batches if b["epoch"] == epoch for i in b["ids"]) == Counter(train_ids)
    assert results["epochs"] == 2


def test_a_bad_file_is_named_before_any_shard_is_written(data_root, tmp_path):
    import shutil

    bad = tmp_path / "set"
    shutil.copytree(data_root, bad)
    (bad / "labels" / "0003_person.png").write_bytes(b"not a png")
    # A subprocess with a time limit: LitData's writers used to die on the file and leave optimize() waiting.
    proc = subprocess.run([sys.executable, "scripts/prepare_data.py", "fashionista", "--src", str(bad), "--out",
                           str(tmp_path / "out"), "--shards"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "1 bad sample(s), no shards written: Cannot read label" in proc.stderr and "0003_person.png" in proc.stderr
    assert not list((tmp_path / "out").rglob("index.json"))
