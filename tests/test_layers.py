"""The package's shape: no import cycle anywhere, layers importing only downward (import-linter), and
checkpoints written before the layers still loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import torch
from conftest import ROOT

from fashionseg.inference.checkpoint import MOVED_TARGETS, upgrade_target


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. every import cycle."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(module: str) -> None:
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_the_import_graph_of_every_module_has_no_cycle():
    graph = grimp.build_graph("fashionseg", cache_dir=None)
    assert len(graph.modules) > 50
    # Imports inside functions are part of the graph (the entry points import their jobs lazily).
    assert graph.direct_import_exists(importer="fashionseg.cli", imported="fashionseg.training.train")
    assert import_cycles(graph) == []


def test_import_cycles_are_found():
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    assert import_cycles(graph) == []
    graph.add_import(importer="a.z", imported="a.x")
    assert import_cycles(graph) == [["a.x", "a.y", "a.z"]]


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(linter), str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module,upward,contract", [
    ("core/io.py", "from fashionseg.serving import predict  # upward", "Layers, one way down"),
    ("inference/predictor.py", "from fashionseg.serving.export import export_onnx  # upward", "Layers, one way down"),
    ("postprocess/base.py", "from fashionseg.postprocess import cleanup  # a cycle: cleanup imports base",
     "No import cycles among the modules of any package"),
])
def test_an_upward_import_or_a_cycle_breaks_a_contract(tmp_path, module, upward, contract):
    # The real contracts on a copy of the package: kept as it is, broken by one upward or circular import.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "fashionseg", src / "fashionseg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = lint_imports(tmp_path, src)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert f"{contract} KEPT" in kept.stdout
    path = src / "fashionseg" / module
    path.write_text(f"{path.read_text()}\n{upward}\n")  # valid Python: after the module's own imports
    broken = lint_imports(tmp_path, src)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"{contract} BROKEN" in broken.stdout
    package, name = module.removesuffix(".py").rsplit("/", 1)
    assert f"fashionseg.{package}" in broken.stdout and f".{name}" in broken.stdout  # names the import


def test_old_module_paths_map_to_their_new_homes():
    import hydra

    assert upgrade_target("fashionseg.losses.CrossEntropy") == "fashionseg.training.losses.CrossEntropy"
    assert upgrade_target("fashionseg.callbacks.RunCheckpoint") == "fashionseg.training.callbacks.RunCheckpoint"
    assert upgrade_target("fashionseg.callbacks.RefinementReport") == \
        "fashionseg.evaluation.callbacks.RefinementReport"
    assert upgrade_target("fashionseg.models.deeplabv3plus") == "fashionseg.models.deeplabv3plus"  # not moved
    for old in ("fashionseg.losses.Dice", "fashionseg.checkpoint.AtomicCheckpointIO", "fashionseg.callbacks.EpochSeed",
                "fashionseg.callbacks.FiniteLossGuard", "fashionseg.callbacks.PredictionImages"):
        assert hydra.utils.get_object(upgrade_target(old)) is not None  # each new home exists
    assert all(new.startswith("fashionseg.") for new in MOVED_TARGETS.values())


def old_paths(node):
    """A stored config as fashionseg 0.1.0 wrote it: every moved ``_target_`` at its old flat-module home."""
    back = {"fashionseg.training.losses.": "fashionseg.losses.",
            "fashionseg.training.callbacks.": "fashionseg.callbacks.",
            "fashionseg.evaluation.callbacks.": "fashionseg.callbacks.",
            "fashionseg.training.checkpoint_io.": "fashionseg.checkpoint."}
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                for new, old in back.items():
                    if value.startswith(new):
                        value = old + value[len(new):]
            out[key] = old_paths(value)
        return out
    if isinstance(node, list):
        return [old_paths(v) for v in node]
    return node


def test_a_checkpoint_naming_the_old_module_paths_loads_and_scores_identically(person_ckpt, data_root, tmp_path):
    from fashionseg.core.config import compose_config
    from fashionseg.evaluation.evaluate import evaluate
    from fashionseg.inference import Predictor
    from fashionseg.training.module import load_checkpoint

    ckpt = torch.load(person_ckpt, map_location="cpu", weights_only=False)
    config = ckpt["hyper_parameters"]["config"]
    old = old_paths(config)
    old["callbacks"] = {**(old.get("callbacks") or {}),
                        "refinements": {"_target_": "fashionseg.callbacks.RefinementReport", "methods": ["none"]}}
    assert "fashionseg.losses." in json.dumps(old) and "fashionseg.training" not in json.dumps(old)
    ckpt["hyper_parameters"]["config"] = old
    old_ckpt = tmp_path / "old.ckpt"
    torch.save(ckpt, old_ckpt)

    module = load_checkpoint(old_ckpt)  # eval.py's loader: the loss is instantiated from the stored config
    assert type(module.loss).__module__ == "fashionseg.training.losses"
    assert module.hparams.config["callbacks"]["refinements"]["_target_"] == \
        "fashionseg.evaluation.callbacks.RefinementReport"

    scores = {}
    for name, path in (("new", person_ckpt), ("old", old_ckpt)):
        cfg = compose_config("eval", [f"ckpt_path={path}", f"data.root={data_root}",
                                      f"paths.output_dir={tmp_path / name}", "postprocess=[none,cleanup]"])
        scores[name] = evaluate(cfg)
    assert scores["old"]["scores"] == scores["new"]["scores"]
    assert scores["old"]["confusion"] == scores["new"]["confusion"]
    assert scores["old"]["refinements"]["cleanup"]["miou"] == scores["new"]["refinements"]["cleanup"]["miou"]

    photo = (torch.arange(96 * 64 * 3) % 251).to(torch.uint8).reshape(96, 64, 3).numpy()
    assert (Predictor.from_checkpoint(old_ckpt)([photo])[0] == Predictor.from_checkpoint(person_ckpt)([photo])[0]).all()


def test_a_run_whose_checkpoint_names_the_old_module_paths_resumes(train_cfg, tmp_path):
    # A run killed under fashionseg 0.1.0 continues: its config (loss, callbacks, checkpoint IO) is rebuilt
    # from the stored config at the new homes, and the trainer state carries over.
    from fashionseg.training.train import train

    run = tmp_path / "run"
    train(train_cfg("trainer.max_epochs=1", "test=false", f"paths.output_dir={run}", model="u2netp"))
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["config"] = old_paths(ckpt["hyper_parameters"]["config"])
    assert "fashionseg.callbacks.RunCheckpoint" in json.dumps(ckpt["hyper_parameters"]["config"])
    torch.save(ckpt, last)
    _, results = train(train_cfg("ckpt_path=last", "trainer.max_epochs=2", "test=false", f"paths.output_dir={run}",
                                 model="u2netp"))
    assert results["epochs"] == 2 and results["images_seen"] == 20
    assert results["config"]["loss"]["_target_"] == "fashionseg.training.losses.CrossEntropy"


def test_scripts_import_the_package_never_each_other_nor_through_sys_path():
    import ast

    scripts = sorted((ROOT / "scripts").glob("*.py"))
    names = {p.stem for p in scripts}
    for script in scripts:
        tree = ast.parse(script.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported = [(node.module or "").split(".")[0]]
            else:
                imported = []
            assert not set(imported) & names, f"{script.name} imports another script: {imported}"
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                raise AssertionError(f"{script.name} edits or reads sys.path (line {node.lineno}): share code "
                                     "through the package instead")
