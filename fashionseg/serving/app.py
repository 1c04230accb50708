"""Web demo: upload a photo, pick task and refinement, see the overlay, legend and cut-out, download the labels.

A FastAPI server with one page (``web/index.html``) and one endpoint, ``POST /api/segment``.
Models load at start-up from the checkpoints given in config, one per task, and each is checked
(readable, trained for that task). Every bad request (not an image, empty, too many pixels, too
large a body, a missing field, unknown task) gets a 4xx answer ``{"error": message}``, and the
server keeps serving. Memory is bounded: bodies over the limit are refused before they are read,
a photo's pixel count is checked from its header, and one photo at a time is decoded and run.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashionseg.core.errors import ConfigError, DataError
from fashionseg.core.io import BOUNDARY_COLOUR, ImageTooLargeError, class_boundaries, cutout, label_image, read_photo
from fashionseg.inference.logits import crop_and_resize
from fashionseg.inference.predictor import Predictor
from fashionseg.postprocess.base import lifts
from fashionseg.postprocess.registry import load_refinements

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "web" / "index.html"
REFINEMENTS = {  # name shown -> conf/postprocess/<name>.yaml
    "none": "none", "cleanup": "cleanup", "crf": "crf", "superpixels": "superpixel", "edges": "edges",
    "guided filter": "guided",
}
HOW_TO_TRAIN = ("No trained {task} model is configured. Train one with `python train.py experiment={recipe}`, then "
                "start the demo with `python app.py checkpoints.{task}=outputs/<run>/checkpoints/<best>.ckpt`.")
RECIPES = {"person": "fast_person", "fashion": "best_fashion"}
JOINT = "joint"  # checkpoints.joint: one network with a head per task


def data_url(im: Image.Image, format: str = "PNG", **options) -> str:
    """The image encoded as a ``data:`` URL the page can show directly."""
    buffer = io.BytesIO()
    im.save(buffer, format=format, **options)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def boundary_lines(label: np.ndarray) -> Image.Image:
    """The class boundaries as lines on a transparent RGBA image; the page shows them over the photo on request."""
    rgba = np.zeros((*label.shape, 4), np.uint8)
    rgba[class_boundaries(label)] = (*BOUNDARY_COLOUR, 255)
    return Image.fromarray(rgba, "RGBA")


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


def error(status: int, message: str) -> JSONResponse:
    """Every error answer of the demo: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)


class BodyTooLarge(Exception):
    """Raised inside ``BodyLimit``'s receive once a body passes the limit."""


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413, without reading it.

    A declared ``Content-Length`` over the limit is answered at once. A chunked body is counted as
    it arrives, and reading stops at the first chunk past the limit; whatever the app was about to
    answer is replaced by the 413. The server then closes the connection, dropping the rest.
    """

    def __init__(self, app: ASGIApp, limit: int, message: str):
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await error(400, f"Bad Content-Length header {declared[:40]!r}.")(scope, receive, send)
            if int(declared) > self.limit:
                return await error(413, self.message.format(size=f"{int(declared) / 2**20:.1f} MB"))(
                    scope, receive, send)
        received, too_large = 0, False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:  # the app's answer to a cut-off body is replaced by the 413 below
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if too_large:
            await error(413, self.message.format(size=f"over {self.limit / 2**20:.1f} MB"))(scope, receive, send)


def load_predictors(checkpoints: dict[str, str | None], **kwargs) -> dict[str, Predictor]:
    """One Predictor per task with a checkpoint, each checked now: readable, and trained for that task.

    ``checkpoints.joint`` (a task=joint network) serves every task of its heads from one network, one
    forward pass per photo; a joint checkpoint given for one task serves that task's head.
    """
    predictors, sources = {}, {}
    for key, path in checkpoints.items():
        if not path:
            continue
        if key not in (*RECIPES, JOINT):
            raise ConfigError(f"checkpoints.{key}: unknown task; the demo serves {sorted(RECIPES)} (or {JOINT}: "
                              "a network with a head for each).")
        try:  # a .ckpt, a model package folder or a Hub id (user/repo)
            predictor = Predictor.from_pretrained(path, **kwargs)
        except ConfigError as e:
            raise ConfigError(f"checkpoints.{key}={path}: {e}") from None
        heads = [h.name for h in predictor.heads]
        tasks = [h for h in heads if h in RECIPES] if key == JOINT else [key]
        if (key == JOINT and len(heads) < 2) or (key != JOINT and key not in heads):
            trained = f"task={predictor.task} (classes {', '.join(predictor.class_names)})"
            raise ConfigError(f"checkpoints.{key}={path} was trained for {trained}; give it as "
                              f"checkpoints.{predictor.task}=..., or give a {key} checkpoint.")
        for task in tasks:
            if task in predictors:
                raise ConfigError(f"Two checkpoints for task {task}: checkpoints.{sources[task]} and checkpoints.{key}"
                                  f"={path}; give one.")
            predictors[task], sources[task] = predictor.view(task), key
    return predictors


WARM_UP_SIZE = (600, 400)  # a photo of the reference set: the size most requests have


def warm_up(predictors: dict[str, Predictor], refinements: dict) -> None:
    """Run each network once and compile each refinement that compiles (the CRF) for each class count served,
    at start-up: the first request then answers as fast as the next ones. Other photo sizes reuse the
    compiled code (shapes are dynamic; tiny photos are padded, see ``DenseCRF``)."""
    photo = np.random.default_rng(0).integers(0, 256, (*WARM_UP_SIZE, 3), dtype=np.uint8)
    for task, model in predictors.items():
        start = time.perf_counter()
        model.probabilities([photo])
        log.info("Warm-up: the %s network, %.1f s.", task, time.perf_counter() - start)
    for shown, refinement in refinements.items():
        for k in sorted({model.num_classes for model in predictors.values()}):
            start = time.perf_counter()
            refinement.warm_up(*WARM_UP_SIZE, k)
            if (seconds := time.perf_counter() - start) > 0.5:
                log.info("Warm-up: the %s refinement for %d classes (one-off compile), %.1f s.", shown, k, seconds)


def create_app(checkpoints: dict[str, str | None], max_upload_mb: float = 10.0, max_pixels: int = 25_000_000,
               device: str = "cpu", bf16: bool = False) -> FastAPI:
    """The demo server. ``checkpoints`` maps task name (person, fashion, or joint for a network with both
    heads) to a checkpoint path or None.

    Raises ``ConfigError`` naming the file when a checkpoint cannot be read or was trained for another task.
    """
    app = FastAPI(title="fashionseg demo")
    refinements = menu_refinements()
    predictors = load_predictors(checkpoints, device=device, bf16=bf16, channels_last=True)
    # One worker thread decodes, runs and encodes one photo at a time: the CPU is shared anyway, and
    # memory stays bounded by one photo of at most max_pixels, whatever the number of requests
    # waiting. One thread, not a lock over the server's thread pool: the allocator keeps per-thread
    # arenas, so large buffers freed by many threads would each keep their own high-water mark.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fashionseg-demo")
    worker.submit(warm_up, predictors, refinements).result()  # in the thread that serves: its compiled code
    limit_bytes = int(max_upload_mb * 1024 * 1024)
    # The body holds the photo and a few short form fields.
    app.add_middleware(BodyLimit, limit=limit_bytes + 64 * 1024,
                       message="The upload is {size}; the limit is " + f"{max_upload_mb:g} MB.")

    @app.exception_handler(RequestValidationError)
    def invalid_request(request, exc: RequestValidationError) -> JSONResponse:
        missing = [str(e["loc"][-1]) for e in exc.errors() if e.get("type") == "missing"]
        if missing:
            return error(400, f"Missing form field(s): {', '.join(missing)}. Send a multipart/form-data POST with "
                              "the photo as field 'file', and optionally 'task' and 'refinement'.")
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return error(400, f"Invalid request: {problems}.")

    @app.exception_handler(HTTPException)
    def http_error(request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/config")
    def config() -> dict:
        return {"tasks": [t for t in RECIPES if t in predictors], "all_tasks": list(RECIPES),
                "refinements": list(refinements), "max_upload_mb": max_upload_mb,
                "missing": {t: HOW_TO_TRAIN.format(task=t, recipe=RECIPES[t]) for t in RECIPES
                            if t not in predictors}}

    @app.post("/api/segment")
    def segment(file: UploadFile = File(...), task: str = Form("person"), refinement: str = Form("none")):
        if task not in RECIPES:
            return error(400, f"Unknown task {task!r}; choose one of {list(RECIPES)}.")
        if task not in predictors:
            return error(503, HOW_TO_TRAIN.format(task=task, recipe=RECIPES[task]))
        if refinement not in refinements:
            return error(400, f"Unknown or unavailable refinement {refinement!r}; choose one of {list(refinements)}.")
        name = Path(file.filename or "upload").name
        return worker.submit(run, file, name, predictors[task], refinements[refinement], task, refinement).result()

    def run(file: UploadFile, name: str, model: Predictor, refine, task: str, refinement: str) -> Response:
        data = file.file.read(limit_bytes + 1)
        if len(data) > limit_bytes:
            return error(413, f"{name} is larger than the {max_upload_mb:g} MB limit.")
        try:
            photo = read_photo(data, name=name, max_pixels=max_pixels)
        except ImageTooLargeError as e:
            return error(413, str(e))
        except DataError as e:
            return error(400, str(e))
        del data
        try:
            start = time.perf_counter()
            probs = model.probabilities([photo], lifted=not lifts(refine))[0]
            label = refine(photo, probs)
            probs = crop_and_resize(probs[None], probs.shape[1:], photo.shape[:2])[0]  # as is, unless lifted
            ms = 1000 * (time.perf_counter() - start)
            present = set(np.unique(label).tolist())
            result = {
                "task": task, "refinement": refinement, "ms": round(ms, 1), "size": list(photo.shape[:2]),
                # The photo only shows what the server read (EXIF-rotated): JPEG is enough, and fast.
                "photo": data_url(Image.fromarray(photo), "JPEG", quality=90),
                "mask": data_url(colour_mask(label, model.palette)),
                "boundaries": data_url(boundary_lines(label), compress_level=1),
                "label": data_url(label_image(label, model.palette)),
                "legend": [{"name": n, "color": "#{:02x}{:02x}{:02x}".format(*(int(c) for c in model.palette[k])),
                            "present": k in present} for k, n in enumerate(model.class_names)],
            }
            if model.num_classes == 2:
                # A photo barely compresses: the fastest PNG level is about as small as the default, and sooner.
                result["cutout"] = data_url(cutout(photo, probs[1].numpy() * (label == 1)), compress_level=1)
            # Encoded by the worker: only the answer's bytes leave it.
            return Response(json.dumps(result), media_type="application/json")
        except Exception as e:  # a model that fails to run: say so (no server paths), keep serving
            log.exception("Prediction failed for %s", name)
            return error(500, f"Prediction failed ({type(e).__name__}); the server log has the details.")

    return app


def serve(cfg) -> None:
    """`python app.py`: run the demo with uvicorn on cfg.host:cfg.port."""
    import uvicorn

    checkpoints = dict(cfg.checkpoints)
    if not any(checkpoints.values()):
        log.warning("No checkpoint configured; the page will explain how to train one. "
                    "Example: python app.py checkpoints.person=outputs/<run>/checkpoints/<best>.ckpt")
    app = create_app(checkpoints, cfg.max_upload_mb, cfg.max_pixels, cfg.device, cfg.bf16)
    print(f"fashionseg demo on http://{cfg.host}:{cfg.port}")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
