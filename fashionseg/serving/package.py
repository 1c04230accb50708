"""Write a model package (see ``fashionseg.inference.package``) from a train.py checkpoint, with a model card,
and upload it to the Hugging Face Hub."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from string import Template

import yaml
from omegaconf import DictConfig, OmegaConf

from fashionseg import __version__
from fashionseg.core.errors import ConfigError
from fashionseg.core.heads import all_class_names
from fashionseg.data import primary_data_config
from fashionseg.inference.checkpoint import TrainedNetwork
from fashionseg.inference.package import CARD, CONFIG, METRICS, ONNX, ONNX_INT8, WEIGHTS

log = logging.getLogger(__name__)

DATA_TERMS = {
    "fashionista": "The Fashionista/CSC420 photos are for research use only (Yamaguchi et al., \"Parsing Clothing "
                   "in Fashion Photographs\", CVPR 2012; cite it): so are weights trained on them.",
}
SCORE_ROWS = (("miou", "mIoU"), ("boundary_iou", "Boundary IoU"), ("pixel_acc", "pixel accuracy"))


def run_record(ckpt_path: Path) -> tuple[dict | None, Path | None, list[str] | None]:
    """What train.py left beside a checkpoint (``<run>/checkpoints/<file>.ckpt``): results.json, split.json and
    the command line's overrides (.hydra/overrides.yaml), each None where missing."""
    run_dir = ckpt_path.resolve().parent.parent
    results = run_dir / "results.json"
    overrides = run_dir / ".hydra" / "overrides.yaml"
    return (json.loads(results.read_text()) if results.is_file() else None,
            run_dir / "split.json" if (run_dir / "split.json").is_file() else None,
            yaml.safe_load(overrides.read_text()) if overrides.is_file() else None)


def package_metrics(results: dict | None, split: Path | None, ckpt_path: Path) -> dict:
    """The run's test scores, when they are this checkpoint's (train.py tests its best checkpoint)."""
    note = None
    if results is None:
        note = f"No results.json beside {ckpt_path}: no test scores."
    elif Path(results.get("best_checkpoint") or "").name != ckpt_path.name:
        note = (f"The run's test scores are those of {Path(results.get('best_checkpoint') or '?').name}, not of "
                f"{ckpt_path.name}; package that checkpoint to ship them.")
        results = None
    if note:
        log.warning("%s The package's metrics.json has no test scores.", note)
    return {"checkpoint": ckpt_path.name, "note": note, "test": (results or {}).get("test"),
            "val_miou_best": (results or {}).get("val_miou_best"),
            "split_manifest": split.name if split else None,
            "split_sha256": hashlib.sha256(split.read_bytes()).hexdigest() if split else None,
            "test_photos": len(json.loads(split.read_text()).get("test", [])) if split else None}


def scores_table(test: dict | None, class_names: list[str]) -> str:
    if not test:
        return "No test scores were recorded with this checkpoint (no results.json beside it)."
    rows = [f"| {name} | {100 * test[key]:.2f}% |" for key, name in SCORE_ROWS if test.get(key) is not None]
    rows += [f"| IoU {name} | {100 * test[f'iou_{name}']:.2f}% |" for name in class_names
             if test.get(f"iou_{name}") is not None]
    return "\n".join(["| metric | test |", "|---|---|", *rows])


def model_card(trained: TrainedNetwork, metrics: dict, inference: dict, command: str, where: str,
               onnx: list[str]) -> str:
    """README.md of a package, from templates/model_card.md, with Hugging Face front matter."""
    cfg = OmegaConf.create(trained.config)
    data = primary_data_config(cfg.data)
    task, model = cfg.task.name, cfg.model.name
    names = all_class_names(trained.heads)
    encoder = OmegaConf.select(cfg, "model.net.encoder_name")
    dataset = str(data.get("name") or "data")
    front = {"license": "other", "license_name": "research-use-only" if dataset in DATA_TERMS else "see-card",
             "library_name": "fashionseg", "pipeline_tag": "image-segmentation",
             "tags": ["image-segmentation", "semantic-segmentation", "fashionseg", task, model],
             "datasets": [dataset], "metrics": ["mean_iou"]}
    test = metrics.get("test")
    if test and test.get("miou") is not None:
        front["model-index"] = [{"name": f"fashionseg-{task}-{model}", "results": [{
            "task": {"type": "image-segmentation"}, "dataset": {"name": dataset, "type": dataset, "split": "test"},
            "metrics": [{"type": "mean_iou", "value": round(100 * test["miou"], 2)}]}]}]
    refinement = inference.get("postprocess")
    values = {
        "front_matter": yaml.safe_dump(front, sort_keys=False).strip(), "title": f"fashionseg {task}: {model}",
        "task": task, "class_count": len(names), "classes": ", ".join(names),
        "architecture": f"{model}" + (f" with a {encoder} encoder" if encoder else ""),
        "input_size": "x".join(map(str, data.image_size)) if data.get("image_size") else "the photo's own size",
        "dataset": dataset, "test_photos": metrics.get("test_photos") or "?",
        "split_hash": metrics.get("split_sha256") or "unknown",
        "scores_table": scores_table(test, names),
        "refinement_line": f"Test-time options chosen on validation, stored in config.yaml and applied by "
                           f"`from_pretrained`: flip {inference.get('tta_hflip')}, scales {inference.get('tta_scales')}"
                           + (f", refinement `{next(iter(refinement))}`" if refinement else "") + ".",
        "where": where, "command": command, "data_terms": DATA_TERMS.get(dataset, "See the data set's own terms."),
        "version": __version__, "checkpoint": metrics["checkpoint"],
        "onnx_files": "".join(f"- `{name}`: the network in ONNX{' (int8)' if 'int8' in name else ''}, for ONNX "
                              f"Runtime (`predict.py model={where} onnx=<it>`).\n" for name in onnx),
    }
    template = resources.files("fashionseg.serving").joinpath("templates/model_card.md").read_text()
    return Template(template).substitute(values)


def write_package(trained: TrainedNetwork, ckpt_path: str | Path, folder: str | Path, inference: dict,
                  onnx: list[str] = ()) -> Path:
    """Write model.safetensors, config.yaml, metrics.json and README.md into ``folder`` (created)."""
    from safetensors.torch import save_model

    ckpt_path, folder = Path(ckpt_path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(trained.net, str(folder / WEIGHTS), metadata={"format": "pt", "fashionseg": __version__})
    (folder / WEIGHTS).chmod(0o644)  # safetensors writes 0600: a package is for sharing
    (folder / CONFIG).write_text(yaml.safe_dump({"fashionseg": __version__, "inference": inference,
                                                 "run": trained.config}, sort_keys=False))
    results, split, overrides = run_record(ckpt_path)
    metrics = package_metrics(results, split, ckpt_path)
    (folder / METRICS).write_text(json.dumps(metrics, indent=1))
    run = trained.config
    command = "python train.py " + " ".join(overrides) if overrides is not None else \
        (f"python train.py model={run['model']['name']} task={run['task']['name']}   # the command line was not "
         "recorded (no .hydra/overrides.yaml beside the run): the whole config is config.yaml's `run`")
    card = model_card(trained, metrics, inference, command, str(folder), list(onnx))
    (folder / CARD).write_text(card)
    return folder


def inference_options(cfg: DictConfig, trained: TrainedNetwork) -> dict:
    """The test-time options a package stores: export.py's ``tta_hflip``/``tta_scales`` (null: the run's own) and
    its ``postprocess`` selection (one refinement, chosen on validation)."""
    run = trained.config
    post = OmegaConf.to_container(cfg.postprocess, resolve=True) if cfg.get("postprocess") else None
    post = {k: v for k, v in (post or {}).items() if k != "none"}
    if post and len(post) > 1:
        raise ConfigError(f"A package stores one refinement; got postprocess={list(post)}. Choose the one chosen on "
                          "validation, e.g. postprocess=crf.")
    return {"tta_hflip": bool(cfg.tta_hflip if cfg.get("tta_hflip") is not None else run.get("tta_hflip", False)),
            "tta_scales": list(cfg.tta_scales if cfg.get("tta_scales") is not None else run.get("tta_scales", [1.0])),
            "postprocess": post or None}


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a package folder to the Hugging Face Hub (``huggingface-cli login`` first); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=[WEIGHTS, CONFIG, METRICS,
                                                                                      CARD, ONNX, ONNX_INT8],
                             commit_message=f"fashionseg {__version__} model package")
    return str(getattr(info, "commit_url", f"https://huggingface.co/{repo_id}"))
