"""The web demo: API checks, and a real headless Chromium uploading photos through the page."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from fashionseg.core.errors import ConfigError
from fashionseg.serving.app import create_app


def png_bytes(h: int = 90, w: int = 60) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(person_ckpt):
    return TestClient(create_app({"person": str(person_ckpt), "fashion": None}, max_upload_mb=0.05))


def test_segment_returns_overlay_parts_and_cutout(client):
    r = client.post("/api/segment", files={"file": ("p.png", png_bytes(), "image/png")},
                    data={"task": "person", "refinement": "cleanup"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == [90, 60] and [c["name"] for c in body["legend"]] == ["background", "person"]
    assert body["photo"].startswith("data:image/jpeg;base64,")
    for key in ("mask", "label", "cutout", "boundaries"):
        assert body[key].startswith("data:image/png;base64,")


@pytest.mark.parametrize("content, status, message", [
    (b"hello, not an image", 400, "Cannot read"),
    (b"", 400, "empty"),
    (b"\x89PNG" + bytes(60_000), 413, "limit"),
])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(client, content, status, message):
    r = client.post("/api/segment", files={"file": ("x.png", content, "image/png")}, data={"task": "person"})
    assert r.status_code == status and message in r.json()["error"]
    ok = client.post("/api/segment", files={"file": ("p.png", png_bytes(), "image/png")}, data={"task": "person"})
    assert ok.status_code == 200


def test_task_without_model_explains_how_to_train(client):
    r = client.post("/api/segment", files={"file": ("p.png", png_bytes(), "image/png")}, data={"task": "fashion"})
    assert r.status_code == 503 and "python train.py experiment=" in r.json()["error"]
    assert "fashion" in client.get("/api/config").json()["missing"]
    r = client.post("/api/segment", files={"file": ("p.png", png_bytes(), "image/png")}, data={"task": "cats"})
    assert r.status_code == 400 and "Unknown task" in r.json()["error"]


def test_photo_over_max_pixels_is_refused_from_its_header(person_ckpt, monkeypatch):
    # 150x100 = 15,000 pixels against a 10,000 limit: Pillow alone would decode it (it refuses only above 2x).
    client = TestClient(create_app({"person": str(person_ckpt)}, max_pixels=10_000))
    big, decoded, load = png_bytes(100, 150), [], Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda im, *a: decoded.append(im.size) or load(im))
    r = client.post("/api/segment", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "150x100" in r.json()["error"] and "limit is 0.01 MP" in r.json()["error"]
    assert not decoded
    assert client.post("/api/segment", files={"file": ("ok.png", png_bytes(90, 60), "image/png")}).status_code == 200


def test_error_answers_have_one_shape(client):
    r = client.post("/api/segment", data={"task": "person"})  # no file
    assert r.status_code == 400 and set(r.json()) == {"error"} and "Missing form field(s): file" in r.json()["error"]
    r = client.post("/api/segment", files={"file": ("notes.jpg", b"plain text, not a photo", "image/jpeg")})
    assert r.status_code == 400 and set(r.json()) == {"error"}
    assert "Cannot read notes.jpg as an image" in r.json()["error"] and "<_io" not in r.json()["error"]
    r = client.post("/api/segment", files={"file": ("empty.png", b"", "image/png")})
    assert r.json() == {"error": "empty.png is empty (0 bytes); give a JPEG or PNG photo."}
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and set(r.json()) == {"error"}


def test_checkpoints_are_checked_at_start_up(person_ckpt, tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(person_ckpt.read_bytes()[:3000])
    with pytest.raises(ConfigError, match=rf"Cannot read checkpoint {corrupt}"):
        create_app({"person": str(corrupt)})
    with pytest.raises(ConfigError, match=r"checkpoints.fashion=.*person.ckpt was trained for task=person .*"
                                          r"checkpoints.person="):
        create_app({"fashion": str(person_ckpt)})


@pytest.fixture(scope="module")
def small_limit_server(person_ckpt):
    with serve_in_thread(create_app({"person": str(person_ckpt)}, max_upload_mb=0.05)) as url:
        yield url


def raw_post(url: str, headers: list[str]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = ["POST /api/segment HTTP/1.1", f"Host: {host}", "Content-Type: multipart/form-data; boundary=xyz", *headers]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock


def test_declared_oversize_body_is_refused_before_it_is_sent(small_limit_server):
    sock = raw_post(small_limit_server, ["Content-Length: 200000000"])  # 200 MB announced, not one byte sent
    answer = b""
    while b'"}' not in answer and (data := sock.recv(65536)):  # the server closes after its answer
        answer += data
    sock.close()
    answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and '"error"' in answer and "190.7 MB" in answer, answer


def test_chunked_body_is_cut_off_at_the_limit(small_limit_server):
    sock = raw_post(small_limit_server, ["Transfer-Encoding: chunked"])
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    chunk, sent, answer = b"x" * 8192, len(part), b""
    sock.setblocking(False)
    while sent < 2_000_000 and not answer:  # 2 MB at most, 40x the 0.05 MB limit
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(65536)
        except BlockingIOError:
            time.sleep(0.001)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 0.05 * 2**20 + 64 * 1024 + 512 * 1024, f"{sent} bytes went out before the answer"


# ------------------------------------------------------------------------------------- real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def serve_in_thread(app):
    """The app on a free localhost port, served by uvicorn in a thread; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(person_ckpt, fashion_ckpt):
    with serve_in_thread(create_app({"fashion": str(fashion_ckpt), "person": str(person_ckpt)})) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for the browser test: `make browser` installs Debian's chromium (as root).")
        pytest.skip("Chromium not installed: install Debian's chromium (sudo apt-get install chromium) to run "
                    "the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server)
        yield page
        browser.close()


def test_browser_upload_shows_overlay_and_error(page, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(600, 400))  # the data set's 600x400 portrait
    page.wait_for_selector("#task option[value=person]", state="attached")
    assert page.input_value("#task") == "person"  # the first task of the menu, both having a model
    page.set_input_files("#file", str(photo))
    page.click("#run")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    overlay_src = page.get_attribute("#overlay", "src")
    assert overlay_src and overlay_src.startswith("data:image/png")
    assert page.eval_on_selector("#photo", "img => img.naturalWidth") == 400
    assert page.eval_on_selector("#mask", "img => img.complete && img.naturalHeight") == 600
    assert page.locator("#legend li").count() == 2
    assert page.get_attribute("#download", "href").startswith("data:image/png")
    assert page.is_visible("#cutout")
    page.eval_on_selector("#opacity", "el => { el.value = 80; el.dispatchEvent(new Event('input')); }")
    assert page.eval_on_selector("#mask", "img => img.style.opacity") == "0.8"
    # Class boundaries: off by default, the box shows and hides the line layer over the photo.
    assert page.is_hidden("#edges") and page.eval_on_selector("#edges", "img => img.naturalHeight") == 600
    page.check("#show-boundaries")
    assert page.is_visible("#edges")
    page.uncheck("#show-boundaries")
    assert page.is_hidden("#edges")
    # At 1280x900 the result stands beside the controls, and the photo and cut-out fit above the fold.
    controls, result = page.locator("#controls").bounding_box(), page.locator("#result").bounding_box()
    assert result["x"] >= controls["x"] + controls["width"] and result["y"] < controls["y"] + 50
    for selector in ("#photo", "#cutout"):
        box = page.locator(selector).bounding_box()
        assert box["y"] + box["height"] <= 900 and box["x"] + box["width"] <= 1280, (selector, box)
    assert_headings_above_their_images(page)
    shot = Path(os.environ.get("FASHIONSEG_SCREENSHOTS", tmp_path)) / "demo_1280x900.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    with Image.open(shot) as im:
        assert im.size == (1280, 900)

    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not a photo")
    page.set_input_files("#file", str(bad))
    page.click("#run")
    page.wait_for_function("document.querySelector('#error').textContent.length > 0", timeout=30_000)
    assert "Cannot read" in page.text_content("#error")
    assert page.is_hidden("#result"), "the previous photo's result still stands beside the error"
    # The server still serves: the good photo again.
    page.set_input_files("#file", str(photo))
    page.click("#run")
    page.wait_for_function("document.querySelector('#error').textContent === ''", timeout=30_000)
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=60_000)
    # The fashion task (no cut-out): the headings still sit above their images.
    page.select_option("#task", "fashion")
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=60_000)
    assert page.is_hidden("#cutout-box")
    assert_headings_above_their_images(page)


def assert_headings_above_their_images(page):
    """Each view's heading ("Overlay", "Cut-out") ends above its picture, starting at its left edge."""
    for view, picture in (("#result .view:first-child", "#photo"), ("#cutout-box", "#cutout")):
        if page.is_hidden(view):
            continue
        heading = page.locator(f"{view} > strong").bounding_box()
        image = page.locator(picture).bounding_box()
        assert heading["y"] + heading["height"] <= image["y"] + 1 and abs(heading["x"] - image["x"]) <= 2, \
            (view, heading, image)


def test_the_crf_is_compiled_at_start_up_for_each_class_count_served(person_ckpt, fashion_ckpt, monkeypatch):
    from fashionseg.postprocess.crf import DenseCRF

    warmed = []
    monkeypatch.setattr(DenseCRF, "run_once", lambda self, h, w, k: warmed.append((h, w, k)))
    create_app({"person": str(person_ckpt), "fashion": str(fashion_ckpt)})
    assert sorted(warmed) == [(600, 400, 2), (600, 400, 7)]


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (5, 3)])
def test_tiny_photos_reach_the_crf_padded_so_they_reuse_its_compiled_code(size):
    from fashionseg.postprocess.crf import DenseCRF

    crf, seen = DenseCRF(compile=False), []
    real = crf.torch_crf()
    mean_field = real.mean_field
    real.mean_field = lambda images, probs, **kw: seen.append(tuple(images.shape[1:3])) or mean_field(images, probs,
                                                                                                      **kw)
    probs = np.zeros((2, *size), np.float32)
    probs[1] = 1.0
    out = crf(np.zeros((*size, 3), np.uint8), probs)  # the demo's call
    batch = crf.refine_batch(np.zeros((2, *size, 3), np.uint8), np.stack([probs, probs]))  # eval.py's
    assert out.shape == size and (out == 1).all() and batch.shape == (2, *size) and (batch == 1).all()
    assert len(seen) == 2 and all(min(shape) >= 16 for shape in seen)
