"""Web demo: upload a photo, pick task and refinement, see the overlay, legend and cut-out, download the labels.

A FastAPI server with one page (``web/index.html``) and one endpoint, ``POST /api/segment``.
Models load lazily from the checkpoints given in config, one per task. Every bad upload
(not an image, empty, too large, unknown task) gets a 4xx answer with a message, and the
server keeps serving.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from fashionseg import DataError
from fashionseg.inference import Predictor
from fashionseg.io import cutout, label_image, read_photo
from fashionseg.postprocess.evaluate import load_refinements

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "web" / "index.html"
REFINEMENTS = {  # name shown -> conf/postprocess/<name>.yaml
    "none": "none", "cleanup": "cleanup", "crf": "crf", "superpixels": "superpixel",
}
HOW_TO_TRAIN = ("No trained {task} model is configured. Train one with `python train.py experiment={recipe}`, then "
                "start the demo with `python app.py checkpoints.{task}=outputs/<run>/checkpoints/<best>.ckpt`.")
RECIPES = {"person": "fast_person", "fashion": "best_fashion"}


def png_data_url(im: Image.Image) -> str:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def colour_mask(label: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Class colours as RGBA, background transparent: the browser blends it over the photo at any opacity."""
    rgba = np.zeros((*label.shape, 4), np.uint8)
    rgba[..., :3] = palette[label]
    rgba[..., 3] = np.where(label > 0, 255, 0)
    return Image.fromarray(rgba, "RGBA")


def menu_refinements() -> dict:
    """The demo's refinements (conf/postprocess/), leaving out a pydensecrf2 CRF when that is not installed."""
    loaded = load_refinements(list(REFINEMENTS.values()))
    available = {}
    for shown, name in REFINEMENTS.items():
        if getattr(loaded[name], "backend", None) == "pydensecrf2":
            try:
                import pydensecrf.densecrf  # noqa: F401
            except ImportError:
                log.warning("pydensecrf2 is not installed: the CRF refinement is not offered.")
                continue
        available[shown] = loaded[name]
    return available


def create_app(checkpoints: dict[str, str | None], max_upload_mb: float = 10.0, max_pixels: int = 25_000_000,
               device: str = "cpu", bf16: bool = False) -> FastAPI:
    """The demo server. ``checkpoints`` maps task name (person, fashion) to a checkpoint path or None."""
    app = FastAPI(title="fashionseg demo")
    refinements = menu_refinements()
    tasks = {task: str(path) for task, path in checkpoints.items() if path}
    predictors: dict[str, Predictor] = {}
    lock = threading.Lock()  # one prediction at a time: the CPU is shared anyway
    limit_bytes = int(max_upload_mb * 1024 * 1024)
    Image.MAX_IMAGE_PIXELS = max_pixels

    def predictor(task: str) -> Predictor:
        if task not in predictors:
            predictors[task] = Predictor.from_checkpoint(tasks[task], device=device, bf16=bf16, channels_last=True)
        return predictors[task]

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/config")
    def config() -> dict:
        return {"tasks": sorted(tasks), "all_tasks": ["person", "fashion"], "refinements": list(refinements),
                "max_upload_mb": max_upload_mb,
                "missing": {t: HOW_TO_TRAIN.format(task=t, recipe=RECIPES[t]) for t in ("person", "fashion")
                            if t not in tasks}}

    @app.post("/api/segment")
    def segment(request: Request, file: UploadFile = File(...), task: str = Form("person"),
                refinement: str = Form("none")):
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit_bytes + 64 * 1024:
            return error(413, f"The upload is {declared / 2**20:.1f} MB; the limit is {max_upload_mb:g} MB.")
        if task not in ("person", "fashion"):
            return error(400, f"Unknown task {task!r}; choose person or fashion.")
        if task not in tasks:
            return error(503, HOW_TO_TRAIN.format(task=task, recipe=RECIPES[task]))
        if refinement not in refinements:
            return error(400, f"Unknown or unavailable refinement {refinement!r}; choose one of {list(refinements)}.")
        data = file.file.read(limit_bytes + 1)
        if len(data) > limit_bytes:
            return error(413, f"{file.filename} is larger than the {max_upload_mb:g} MB limit.")
        try:
            photo = read_photo(data, name=file.filename or "upload")
        except DataError as e:
            return error(400, str(e))
        try:
            with lock:
                start = time.perf_counter()
                model = predictor(task)
                probs = model.probabilities([photo])[0]
                label = refinements[refinement](photo, probs)
                ms = 1000 * (time.perf_counter() - start)
        except Exception as e:  # a model that fails to load or run: say so, keep serving
            log.exception("Prediction failed")
            return error(500, f"Prediction failed: {type(e).__name__}: {e}")
        present = set(np.unique(label).tolist())
        result = {
            "task": task, "refinement": refinement, "ms": round(ms, 1), "size": list(photo.shape[:2]),
            "photo": png_data_url(Image.fromarray(photo)),
            "mask": png_data_url(colour_mask(label, model.palette)),
            "label": png_data_url(label_image(label, model.palette)),
            "legend": [{"name": n, "color": "#%02x%02x%02x" % tuple(int(c) for c in model.palette[k]),
                        "present": k in present} for k, n in enumerate(model.class_names)],
        }
        if model.num_classes == 2:
            result["cutout"] = png_data_url(cutout(photo, probs[1].numpy() * (label == 1)))
        return result

    return app


def serve(cfg) -> None:
    """`python app.py`: run the demo with uvicorn on cfg.host:cfg.port."""
    import uvicorn

    checkpoints = dict(cfg.checkpoints)
    for task, path in checkpoints.items():
        if path and not Path(path).is_file():
            raise DataError(f"checkpoints.{task}={path} does not exist; give a .ckpt written by train.py.")
    if not any(checkpoints.values()):
        log.warning("No checkpoint configured; the page will explain how to train one. "
                    "Example: python app.py checkpoints.person=outputs/<run>/checkpoints/<best>.ckpt")
    app = create_app(checkpoints, cfg.max_upload_mb, cfg.max_pixels, cfg.device, cfg.bf16)
    print(f"fashionseg demo on http://{cfg.host}:{cfg.port}")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
