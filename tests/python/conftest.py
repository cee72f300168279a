"""Fixtures for the Python tests: a real exo node (the debug binary the Rust tests built, or $EXO_BIN) serving the
SmolLM2 test model on 127.0.0.1 with a port the OS picks, its Hugging Face hub a stand-in on 127.0.0.1 that serves
the same file as HUB_REFERENCE; the same with an API key (`keyed_node`, API_KEY); and a folder for test output
(screenshots)."""

import hashlib
import http.server
import os
import pathlib
import re
import subprocess
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_REPO = "exo-test/SmolLM2-135M-Instruct-GGUF"
HUB_REFERENCE = f"hf:{HUB_REPO}/{MODEL_FILE}"
COMMIT = "5d1f5e8a0c3b4e2f9a7d6c5b4a3928170f1e2d3c"


def start_stand_in_hub(model: pathlib.Path) -> http.server.ThreadingHTTPServer:
    """A stand-in for the hub serving `model` as HUB_REPO's MODEL_FILE the way the hub serves LFS files: the resolve
    URL answers 302 with X-Linked-Size, X-Linked-Etag and X-Repo-Commit; the content URL answers Range requests."""
    size = model.stat().st_size
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    resolve = f"/{HUB_REPO}/resolve/main/{MODEL_FILE}"

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.answer(body=False)

        def do_GET(self):
            self.answer(body=True)

        def answer(self, body: bool):
            if self.path == resolve:
                self.send_response(302)
                for k, v in [("Location", "/cdn/model"), ("X-Linked-Size", str(size)),
                             ("X-Linked-Etag", f'"{sha}"'), ("X-Repo-Commit", COMMIT), ("Content-Length", "0")]:
                    self.send_header(k, v)
                self.end_headers()
                return
            if self.path != "/cdn/model":
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            start, end = (int(match.group(1)), int(match.group(2) or size - 1) + 1) if match else (0, size)
            self.send_response(206 if match else 200)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if body:
                with open(model, "rb") as f:
                    f.seek(start)
                    left = end - start
                    while left:
                        chunk = f.read(min(left, 1 << 20))
                        self.wfile.write(chunk)
                        left -= len(chunk)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Node:
    def __init__(self, base_url: str, model: str, process: subprocess.Popen):
        self.base_url = base_url
        self.model = model
        self.process = process


@pytest.fixture(scope="session")
def output_dir() -> pathlib.Path:
    out = pathlib.Path(os.environ.get("EXO_TEST_OUTPUT", ROOT / "target" / "test-output"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def hub():
    """The stand-in hub, serving the test model."""
    server = start_stand_in_hub(model_file())
    yield server
    server.shutdown()


def model_file() -> pathlib.Path:
    cache = pathlib.Path(os.environ.get("EXO_MODELS_CACHE", pathlib.Path.home() / ".cache" / "exo" / "models"))
    model = cache / MODEL_FILE
    assert model.exists(), f"{model} is missing: run scripts/fetch-models.sh"
    return model


def run_node(hub: http.server.ThreadingHTTPServer, *extra: str):
    """A node (a generator yielding one Node, stopped after) with `extra` arguments."""
    binary = pathlib.Path(os.environ.get("EXO_BIN", ROOT / "target" / "debug" / "exo"))
    assert binary.exists(), f"{binary} is missing: run `cargo build -p exo` first"
    model = model_file()
    with tempfile.TemporaryDirectory(prefix="exo-pytest-") as tmp:
        models_dir = pathlib.Path(tmp) / "models"
        models_dir.mkdir()
        (models_dir / MODEL_FILE).symlink_to(model)
        env = dict(os.environ, EXO_HOME=str(pathlib.Path(tmp) / "home"), RUST_LOG="warn",
                   HF_HOME=str(pathlib.Path(tmp) / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}")
        for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "EXO_API_KEY", "EXO_CORS_ORIGIN"):
            env.pop(name, None)
        process = subprocess.Popen(
            [str(binary), "--api-host", "127.0.0.1", "--api-port", "0", "--listen-port", "0", "--discovery", "none",
             "--models-dir", str(models_dir), "--threads", "2", *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        # Ready when it says where it listens.
        base_url = None
        for line in process.stderr:
            match = re.search(r"http://(127\.0\.0\.1:\d+)/v1", line)
            if match:
                base_url = f"http://{match.group(1)}"
                break
        assert base_url, "the node exited before listening"
        # Keep draining stderr so the node never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
        try:
            yield Node(base_url, MODEL_FILE.removesuffix(".gguf"), process)
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def node(hub):
    yield from run_node(hub)


API_KEY = "test-key-7f3a"


@pytest.fixture(scope="module")
def keyed_node(hub):
    """A node that needs API_KEY."""
    yield from run_node(hub, "--api-key", API_KEY)
