"""Bounded load test of the web demo, on localhost only: a fixed number of requests, then it stops.

    python scripts/load_test_demo.py [--requests 60] [--concurrency 8] [--ckpt <person.ckpt>]

Starts `python app.py` on a free 127.0.0.1 port (with --ckpt, or with an untrained checkpoint of the
default person model written to a temporary folder: the same network, so the same cost), then sends
--requests requests from --concurrency threads, cycling through these kinds:

  good         600x400 JPEG photo                                   expect 200
  good_24mp    6000x4000 JPEG photo, just under the 25 MP limit     expect 200
  pixels_36mp  6000x6000 JPEG photo (a small file, too many pixels) expect 413, refused from its header
  body_length  Content-Length of 200 MB, body streamed until the answer     expect 413 at once
  body_chunked chunked body, streamed until the answer               expect 413 at the limit
  not_image    a text file named .jpg                                expect 400
  no_file      a form without the file field                         expect 400

Before the load, it measures latency with --refinement (default crf), one request at a time: the first
request after the server is up (cold), then --warm-requests more of the same photo (warm: their median),
then photos of new sizes (1x1, 300x200, 900x600), which must not wait for a new compile.

It samples the server's resident memory every 20 ms and reads its peak (VmHWM) at the end, checks
that every request got its expected status, that the peak stays under --max-rss-mb and that the
server still answers a good photo afterwards. Prints a table, writes JSON (--out), and exits 1 if
any check failed.
"""

from __future__ import annotations

import argparse
import io
import json
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from fashionseg.training.module import untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# The default model on the person task, without pretrained weights (offline): untrained_checkpoint's network.
DEFAULT_PERSON = ["task=person", "model.net.encoder_weights=null"]

HOST = "127.0.0.1"  # the only address this script talks to
KINDS = ["good", "not_image", "pixels_36mp", "good", "body_length", "no_file", "good", "body_chunked", "good_24mp"]
EXPECTED = {"good": 200, "good_24mp": 200, "pixels_36mp": 413, "body_length": 413, "body_chunked": 413,
            "not_image": 400, "no_file": 400}


def jpeg(h: int, w: int, seed: int = 0) -> bytes:
    """A smooth photo-like JPEG: a gradient with mild noise (a few MB even at 36 MP)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([255 * y / h, 255 * x / w, 128 + 60 * np.sin(x / 37 + y / 53)], -1)
    noise = rng.normal(0, 4, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class MemorySampler(threading.Thread):
    """Peak resident memory of a process: VmRSS sampled every 20 ms, and the kernel's VmHWM."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.stop = pid, 0.0, threading.Event()

    def read(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self.read("VmRSS"))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)


def stream_oversize(port: int, chunked: bool, total: int = 200 * 2**20) -> tuple[int, int, str]:
    """POST a body of ``total`` bytes in 64 KiB pieces, stopping as soon as the server answers.
    Returns (status, bytes sent before the answer, answer body)."""
    sock = socket.create_connection((HOST, port), timeout=30)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall((f"POST /api/segment HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; "
                  f"boundary=xyz\r\n{length}\r\n\r\n").encode())
    piece = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'.ljust(65536, b"x")
    sent, answer = 0, b""
    deadline = time.time() + 60
    while sent < total and not answer and time.time() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 1.0)
        if readable:  # the server answered (or closed): stop sending
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                pass
            break
        if writable:
            try:  # whole pieces, so that the chunked framing stays intact
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)
    try:
        while b'"}' not in answer and (more := sock.recv(65536)):
            answer += more
    except (TimeoutError, ConnectionResetError):
        pass  # the answer is what arrived before the server closed
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, sent, answer.partition(b"\r\n\r\n")[2].decode(errors="replace")


def send(kind: str, port: int, photos: dict[str, bytes], refinement: str = "none") -> dict:
    start = time.perf_counter()
    sent = None
    url = f"http://{HOST}:{port}/api/segment"
    with httpx.Client(timeout=300) as client:
        if kind in ("body_length", "body_chunked"):
            status, sent, text = stream_oversize(port, chunked=kind == "body_chunked")
        elif kind == "no_file":
            r = client.post(url, data={"task": "person"})
            status, text = r.status_code, r.text
        else:
            content = b"just some text, not a photo" if kind == "not_image" else photos[kind]
            r = client.post(url, files={"file": (f"{kind}.jpg", content, "image/jpeg")},
                            data={"task": "person", "refinement": refinement})
            status, text = r.status_code, r.text
    error = None
    if status != 200:
        try:
            error = json.loads(text).get("error")
        except ValueError:
            error = f"not JSON: {text[:80]!r}"
    return {"kind": kind, "status": status, "ok": status == EXPECTED.get(kind, 200) and (status == 200 or bool(error)),
            "ms": 1000 * (time.perf_counter() - start), "bytes_sent_before_answer": sent, "error": error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ckpt", help="person checkpoint to serve (default: an untrained default model)")
    parser.add_argument("--max-rss-mb", type=float, default=2500, help="ceiling for the server's peak RSS")
    parser.add_argument("--refinement", default="crf", help="refinement of the latency phase (demo menu name)")
    parser.add_argument("--warm-requests", type=int, default=5)
    parser.add_argument("--out", default="outputs/benchmarks/load_test_demo.json")
    args = parser.parse_args(argv)

    photos = {"good": jpeg(600, 400), "good_24mp": jpeg(6000, 4000, 1), "pixels_36mp": jpeg(6000, 6000, 2),
              "size_1x1": jpeg(1, 1, 3), "size_300x200": jpeg(300, 200, 4), "size_900x600": jpeg(900, 600, 5)}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or str(untrained_checkpoint(Path(tmp) / "person.ckpt", DEFAULT_PERSON))
        port = free_port()
        server = subprocess.Popen([sys.executable, "app.py", f"checkpoints.person={ckpt}", f"host={HOST}",
                                   f"port={port}", "max_upload_mb=10", "max_pixels=25000000"],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            launched = time.perf_counter()
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    httpx.get(f"http://{HOST}:{port}/api/config", timeout=2)
                    break
                except httpx.TransportError:
                    if server.poll() is not None:
                        sys.exit(f"The demo did not start:\n{server.stdout.read()[-3000:]}")
                    time.sleep(0.2)
            startup_s = time.perf_counter() - launched
            cold = send("good", port, photos, args.refinement)
            warm = [send("good", port, photos, args.refinement) for _ in range(args.warm_requests)]
            sizes = [send(k, port, photos, args.refinement) for k in ("size_1x1", "size_300x200", "size_900x600")]
            sampler = MemorySampler(server.pid)
            idle_mb = sampler.read("VmRSS")
            sampler.start()
            kinds = [KINDS[i % len(KINDS)] for i in range(args.requests)]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(lambda k: send(k, port, photos), kinds))
            seconds = time.perf_counter() - start
            after = send("good", port, photos)
            sampler.stop.set()
            hwm_mb = sampler.read("VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=30)

    rows = []
    for kind in dict.fromkeys(kinds):
        rs = [r for r in results if r["kind"] == kind]
        ms = [r["ms"] for r in rs]
        sent = [r["bytes_sent_before_answer"] for r in rs if r["bytes_sent_before_answer"] is not None]
        rows.append({"kind": kind, "requests": len(rs), "expected": EXPECTED[kind],
                     "statuses": sorted({r["status"] for r in rs}), "ok": sum(r["ok"] for r in rs),
                     "median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1),
                     "max_mb_sent_before_answer": round(max(sent) / 2**20, 2) if sent else None,
                     "example_error": next((r["error"] for r in rs if r["error"]), None)})
    peak_mb = max(sampler.peak_mb, hwm_mb)
    warm_ms = statistics.median(r["ms"] for r in warm)
    latency = {"refinement": args.refinement, "startup_s": round(startup_s, 1), "cold_ms": round(cold["ms"], 1),
               "warm_median_ms": round(warm_ms, 1), "cold_over_warm": round(cold["ms"] / warm_ms, 2),
               "new_sizes_ms": {r["kind"]: round(r["ms"], 1) for r in sizes},
               "statuses": sorted({r["status"] for r in [cold, *warm, *sizes]})}
    checks = {
        f"first {args.refinement} request {cold['ms']:.0f} ms <= 2x a warm one ({warm_ms:.0f} ms)":
            cold["ms"] <= 2 * warm_ms,
        "every latency request answered 200": latency["statuses"] == [200],
        "every request got its expected status": all(r["ok"] for r in results),
        f"peak RSS {peak_mb:.0f} MB <= {args.max_rss_mb:.0f} MB": peak_mb <= args.max_rss_mb,
        "serves a good photo afterwards": after["status"] == 200,
    }
    report = {"requests": args.requests, "concurrency": args.concurrency, "seconds": round(seconds, 1),
              "checkpoint": args.ckpt or "untrained default person model (DeepLabv3+ EfficientNet-Lite0)",
              "idle_rss_mb": round(idle_mb), "peak_rss_mb": round(peak_mb), "max_rss_mb": args.max_rss_mb,
              "latency": latency, "rows": rows, "checks": checks}

    header = ["kind", "requests", "expected", "statuses", "as expected", "median ms", "max ms", "MB sent before answer"]
    table = [header] + [[r["kind"], str(r["requests"]), str(r["expected"]), ",".join(map(str, r["statuses"])),
                         f"{r['ok']}/{r['requests']}", f"{r['median_ms']:.0f}", f"{r['max_ms']:.0f}",
                         "-" if r["max_mb_sent_before_answer"] is None else f"{r['max_mb_sent_before_answer']:.2f}"]
                        for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(f"Latency with refinement={args.refinement}, one request at a time (server up after {startup_s:.1f} s): "
          f"first {cold['ms']:.0f} ms, warm median {warm_ms:.0f} ms (ratio {latency['cold_over_warm']}); new sizes: "
          + ", ".join(f"{k.removeprefix('size_')} {v:.0f} ms" for k, v in latency["new_sizes_ms"].items()))
    print(f"{args.requests} requests, concurrency {args.concurrency}, {seconds:.1f} s; server RSS idle "
          f"{idle_mb:.0f} MB, peak {peak_mb:.0f} MB")
    print("\n".join(lines))
    for check, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {check}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"Written to {out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
