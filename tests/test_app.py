"""The web demo: API checks, and a real headless Chromium uploading photos through the page."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from fashionseg.app import create_app


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
    for key in ("photo", "mask", "label", "cutout"):
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


# ------------------------------------------------------------------------------------- real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(person_ckpt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app({"person": str(person_ckpt), "fashion": None})
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
def page(server):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for the browser test: `make browser` installs Debian's chromium.")
        pytest.skip("Chromium not installed (make browser installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(server)
        yield page
        browser.close()


def test_browser_upload_shows_overlay_and_error(page, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(120, 80))
    page.wait_for_selector("#task option[value=person]", state="attached")
    page.set_input_files("#file", str(photo))
    page.select_option("#task", "person")
    page.click("#run")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    overlay_src = page.get_attribute("#overlay", "src")
    assert overlay_src and overlay_src.startswith("data:image/png")
    assert page.eval_on_selector("#photo", "img => img.naturalWidth") == 80
    assert page.eval_on_selector("#mask", "img => img.complete && img.naturalHeight") == 120
    assert page.locator("#legend li").count() == 2
    assert page.get_attribute("#download", "href").startswith("data:image/png")
    assert page.is_visible("#cutout")
    page.eval_on_selector("#opacity", "el => { el.value = 80; el.dispatchEvent(new Event('input')); }")
    assert page.eval_on_selector("#mask", "img => img.style.opacity") == "0.8"

    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not a photo")
    page.set_input_files("#file", str(bad))
    page.click("#run")
    page.wait_for_function("document.querySelector('#error').textContent.length > 0", timeout=30_000)
    assert "Cannot read" in page.text_content("#error")
    # The server still serves: the good photo again.
    page.set_input_files("#file", str(photo))
    page.click("#run")
    page.wait_for_function("document.querySelector('#error').textContent === ''", timeout=30_000)
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=60_000)
