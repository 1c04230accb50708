"""Write the configuration reference (configuration.md) from fashionseg/conf/, so that it cannot drift.

mkdocs runs it at every build (the gen-files plugin, mkdocs.yml); `python docs/gen_config_reference.py`
prints the same page. Every config group, every option of it and every key (with its comments) comes from
the YAML files themselves.
"""

from __future__ import annotations

from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "fashionseg" / "conf"
ENTRY_POINTS = {  # top-level config -> the command that composes it
    "train": "python train.py / fashionseg-train",
    "eval": "python eval.py / fashionseg-eval",
    "predict": "python predict.py / fashionseg-predict",
    "export": "python export.py / fashionseg-export",
    "app": "python app.py / fashionseg-demo",
}
GROUP_ORDER = ["task", "data", "model", "loss", "optimizer", "scheduler", "callbacks", "logger", "trainer",
               "distill", "postprocess", "experiment", "hparams_search", "debug", "paths", "hydra"]


def header(path: Path) -> str:
    """The comment lines a YAML file starts with, as one paragraph (empty when it has none)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def first_sentence(text: str) -> str:
    sentence = text.split(". ")[0].strip()
    return (sentence if sentence.endswith(".") or not sentence else sentence + ".").replace("|", "\\|")


def option_files(group: Path) -> list[Path]:
    """A group's options: its YAML files, nested groups (hydra/launcher) included, by path."""
    return sorted(group.rglob("*.yaml"))


def page() -> str:
    out = ["# Configuration reference", "",
           "Generated from `fashionseg/conf/` by `docs/gen_config_reference.py` at every docs build: every config "
           "group, every option and every key, with the comments of the YAML files. Choose an option with "
           "`group=option`, set a key with `key=value`, add a key that is not in the config with `+key=value`; "
           "`python train.py <overrides> --cfg job` prints what they compose to.", "",
           "## Entry points", "", "| config | command | what it is |", "|---|---|---|"]
    for name, command in ENTRY_POINTS.items():
        out.append(f"| [`{name}.yaml`](#{name}yaml) | `{command}` | {first_sentence(header(CONF / f'{name}.yaml'))} |")
    out.append("")
    for name in ENTRY_POINTS:
        path = CONF / f"{name}.yaml"
        out += [f"### `{name}.yaml`", "", "```yaml", path.read_text().rstrip(), "```", ""]
    groups = [d.name for d in CONF.iterdir() if d.is_dir() and not d.name.startswith("_")]
    ordered = [g for g in GROUP_ORDER if g in groups] + sorted(set(groups) - set(GROUP_ORDER))
    out += ["## Config groups", "", "| group | options |", "|---|---|"]
    for group in ordered:
        options = ", ".join(f"`{p.relative_to(CONF / group).with_suffix('').as_posix()}`"
                            for p in option_files(CONF / group))
        out.append(f"| [`{group}`](#{group}) | {options} |")
    out.append("")
    for group in ordered:
        out += [f"### {group}", ""]
        files = option_files(CONF / group)
        out += ["| option | what it is |", "|---|---|"]
        for path in files:
            option = path.relative_to(CONF / group).with_suffix("").as_posix()
            out.append(f"| `{group}={option}` | {first_sentence(header(path))} |")
        out.append("")
        for path in files:
            option = path.relative_to(CONF / group).with_suffix("").as_posix()
            out += [f"#### `{group}={option}`", "", f"`fashionseg/conf/{group}/{option}.yaml`:", "",
                    "```yaml", path.read_text().rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "<run_path>":  # run by mkdocs-gen-files during a build: a virtual page of the site
    import mkdocs_gen_files

    with mkdocs_gen_files.open("configuration.md", "w") as f:
        f.write(page())
elif __name__ == "__main__":
    print(page())
