"""Every command the README and the docs show still composes: a renamed key, group or option fails here.

A command is any `python train.py|eval.py|predict.py|export.py|app.py ...`, `fashionseg-<command> ...`,
`fashionseg <command> ...` or `python scripts/<name>.py ...` in README.md and docs/ (code blocks and inline
code). `<placeholders>` become a value. Entry points compose their config with the command's overrides as
`--cfg job` would (the first value of each swept key); scripts parse their arguments with their own parser.
"""

from __future__ import annotations

import argparse
import copy
import re
import runpy
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fashionseg.cli import apply_aliases
from fashionseg.core.config import compose_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
ENTRY = {"train": "train", "eval": "eval", "predict": "predict", "export": "export", "app": "app", "demo": "app"}
START = re.compile(r"(?:^|(?<=[\s(`$]))(python3? (?:scripts/\w+\.py|(?:train|eval|predict|export|app)\.py)"
                   r"|fashionseg-(?:train|eval|predict|export|demo)|fashionseg (?:train|eval|predict|export|demo))"
                   r"(?=\s|$)")
PLACEHOLDER = "PLACEHOLDER"


def command_texts(text: str) -> list[str]:
    """Every command of a Markdown text: from code blocks (one a line, `\\`-continued, up to a `#` comment)
    and from inline code spans (which may wrap across lines). A shell substitution `$(command)` is a command
    of its own, and a placeholder in the command around it (the words it prints)."""
    commands, spans = [], []
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            spans.append(re.split(r"\s#\s|\s#$", line)[0])
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    for inner in [m for span in spans for m in re.findall(r"\$\(([^()]*)\)", span)]:
        spans.append(inner)
    spans = [re.sub(r"\$\([^()]*\)", "<the words it prints>", span) for span in spans]
    for span in spans:
        starts = [m.start() for m in START.finditer(span)]
        for a, b in zip(starts, [*starts[1:], len(span)]):
            commands.append(re.split(r"\s(?:&&|\|\||;|\|)\s", span[a:b])[0].strip().rstrip(",;."))
    return commands


def collect() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for command in command_texts(path.read_text()):
            found.append((str(path.relative_to(ROOT)), command))
    return sorted(set(found))


def distinct(commands: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One (file, command) per distinct command (its words, placeholders filled), at the first file that
    shows it: the README's commands are repeated in docs/results.md, and composing each once is enough."""
    seen, kept = set(), []
    for where, command in commands:
        words = tuple(tokens(command))
        if words not in seen:
            seen.add(words)
            kept.append((where, command))
    return kept


COMMANDS = collect()


def tokens(command: str) -> list[str]:
    """The command's words, placeholders filled: `<a run dir>` -> PLACEHOLDER, `[key=value]` (optional) ->
    key=value, a bare `...` dropped."""
    command = re.sub(r"<[^<>]*>", PLACEHOLDER, command)
    words, optional = [], False
    for word in shlex.split(command):
        if word.startswith("[") and word.endswith("]") and "=" in word and not re.match(r"\[[^=]*\]$", word):
            word = word[1:-1]  # [key=value]
        elif word.startswith("[-"):  # [--flag value ...]
            word, optional = word[1:], True
        if optional and word.endswith("]"):
            word, optional = word[:-1], False
        if word in ("...", "[...]"):
            continue
        words.append(word)
    return words


def documented_configs() -> dict[str, str]:
    """Config files the docs show in full (a YAML block whose first line names its path under
    fashionseg/conf/), e.g. the user's own data set: {"data/street": its text}."""
    found = {}
    for path in DOCS:
        for block in re.findall(r"^```yaml\n(.*?)^```", path.read_text(), flags=re.S | re.M):
            first = re.match(r"# fashionseg/conf/(\w+/\w+)\.yaml\n", block)
            if first:
                found[first.group(1)] = block
    return found


def compose_entry(config: str, args: list[str], conf_dir: Path | None = None) -> None:
    """Compose the entry point's config with the command's overrides, as `--cfg job` does; ``conf_dir``: a
    copy of fashionseg/conf/ with the docs' own config files added."""
    overrides, skip = [], False
    for arg in apply_aliases(config, args):
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            continue
        if arg in ("--cfg", "-c"):
            skip = True
            continue
        if arg in ("--help", "-h", PLACEHOLDER):  # a bare placeholder: "<the same overrides>"
            continue
        assert not arg.startswith("-"), f"unknown flag {arg}"
        overrides.append(arg)
    parsed = OverridesParser.create().parse_overrides(overrides)
    first = []
    for override, text in zip(parsed, overrides):
        if override.is_sweep_override():  # a -m sweep: the first job's value
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
        else:
            first.append(text)
    if conf_dir is None:
        compose_config(config, first, return_hydra_config=True)
        return
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        compose(config, first, return_hydra_config=True)


class Parsed(Exception):
    """Raised once a script's parser has read its arguments: nothing else of the script runs."""


def parse_script(script: Path, args: list[str], monkeypatch) -> argparse.Namespace:
    parse_known = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = parse_known(self, args, namespace)
        raise Parsed(namespace, extra)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    args = ["1" if arg == PLACEHOLDER else arg for arg in args]  # a value: a number or a path alike
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    with pytest.raises(Parsed) as parsed:
        runpy.run_path(str(script), run_name="__main__")
    namespace, extra = parsed.value.args
    assert not extra, f"{script.name}: unrecognized arguments: {extra}"
    return namespace


def test_the_docs_show_at_least_40_commands():
    assert len(COMMANDS) >= 40, [c for _, c in COMMANDS]
    assert {f for f, _ in COMMANDS} >= {"README.md", "docs/training.md", "docs/results.md", "docs/serving.md"}


@pytest.fixture(scope="module")
def docs_conf(tmp_path_factory) -> Path:
    """fashionseg/conf/ with the config files the docs show how to write (e.g. conf/data/street.yaml)."""
    conf = tmp_path_factory.mktemp("docs") / "conf"
    shutil.copytree(ROOT / "fashionseg" / "conf", conf)
    for name, text in documented_configs().items():
        (conf / f"{name}.yaml").write_text(text)
    return conf


@pytest.fixture(scope="module")
def configs_read_once():
    """Hydra parses each config file once for all the commands, which then compose from copies: the same few
    dozen files make up every command, and parsing them again for each took a third of the check's time."""
    load, parsed = OmegaConf.load, {}

    def load_once(file_):
        name = getattr(file_, "name", None)
        if not isinstance(name, str):
            return load(file_)
        if name not in parsed:
            parsed[name] = load(file_)
        return copy.deepcopy(parsed[name])

    patch = pytest.MonkeyPatch()
    patch.setattr(OmegaConf, "load", staticmethod(load_once))
    yield
    patch.undo()


CHECKED = distinct(COMMANDS)


@pytest.mark.parametrize("where,command", CHECKED, ids=[f"{f}: {c[:80]}" for f, c in CHECKED])
def test_command_in_the_docs_composes(where, command, monkeypatch, docs_conf, configs_read_once):
    words = tokens(command)
    if words[0].startswith("python"):
        program, args = words[1], words[2:]
        if program.startswith("scripts/"):
            script = ROOT / program
            assert script.is_file(), f"{where}: {program} does not exist"
            parse_script(script, args, monkeypatch)
            return
        config = ENTRY[Path(program).stem]
    elif words[0] == "fashionseg":
        config, args = ENTRY[words[1]], words[2:]
    else:
        config, args = ENTRY[words[0].removeprefix("fashionseg-")], words[1:]
    own = [a for a in args if a.split("=")[0].lstrip("+") + "/" + a.partition("=")[2] in documented_configs()]
    compose_entry(config, args, docs_conf if own else None)


def test_a_renamed_key_fails_the_check(monkeypatch):
    # The check can fail: a key the configs do not have, a group option that does not exist, a script
    # option that does not exist.
    with pytest.raises(Exception, match="trainer.max_epoch"):
        compose_entry("train", ["trainer.max_epoch=3"])
    with pytest.raises(Exception, match="no_such_model"):
        compose_entry("train", ["model=no_such_model"])
    with pytest.raises(AssertionError, match="unrecognized arguments"):
        parse_script(ROOT / "scripts/tune_refinements.py", ["--ckpt", "x", "--no-such-option"], monkeypatch)


def test_placeholders_and_optional_arguments_are_filled():
    assert tokens("python eval.py ckpt_path=<best>.ckpt [postprocess=[none,crf]] 'tta_scales=[1.0]'") == [
        "python", "eval.py", f"ckpt_path={PLACEHOLDER}.ckpt", "postprocess=[none,crf]", "tta_scales=[1.0]"]
    assert tokens("python train.py ... <the same overrides> x=1") == ["python", "train.py", PLACEHOLDER, "x=1"]
    assert command_texts("```bash\npython train.py x=1 $(python scripts/s.py <run>/split.json)\n```") == [
        "python train.py x=1 <the words it prints>", "python scripts/s.py <run>/split.json"]
    assert tokens("python s.py --ckpt <c> [--tta] [--scales 1 1.25]") == [
        "python", "s.py", "--ckpt", PLACEHOLDER, "--tta", "--scales", "1", "1.25"]
    assert "data/street" in documented_configs()
    assert distinct([("README.md", "python train.py x=<a>"), ("docs/results.md", "python train.py x=<b>"),
                     ("docs/results.md", "python train.py x=2")]) == [
        ("README.md", "python train.py x=<a>"), ("docs/results.md", "python train.py x=2")]
    assert command_texts("run `python train.py\n  task=person` then\n```bash\npython app.py x=1  # demo\n```") == [
        "python app.py x=1", "python train.py   task=person"]


def test_every_figure_of_the_readme_results_table_is_in_the_results_page_with_its_command():
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "docs" / "results.md").read_text()
    section = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`python" in line]
    assert len(rows) >= 8, rows
    for row in rows:
        figures = re.findall(r"\d+\.\d+", row.split("`python", 1)[0])
        assert figures, row
        for figure in figures:
            assert figure in results, f"{figure} (README: {row[:80]}) is not in docs/results.md"
        for command in re.findall(r"`(python [^`]+)`", row):
            assert command in results, f"README's command {command!r} is not in docs/results.md"
