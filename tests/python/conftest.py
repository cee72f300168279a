"""Fixtures for the Python tests: a real exo node (the debug binary the Rust tests built, or $EXO_BIN) serving the
SmolLM2 test model on 127.0.0.1 with a port the OS picks, and a folder for test output (screenshots)."""

import os
import pathlib
import re
import subprocess
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
def node():
    binary = pathlib.Path(os.environ.get("EXO_BIN", ROOT / "target" / "debug" / "exo"))
    assert binary.exists(), f"{binary} is missing: run `cargo build -p exo` first"
    cache = pathlib.Path(os.environ.get("EXO_MODELS_CACHE", pathlib.Path.home() / ".cache" / "exo" / "models"))
    model = cache / MODEL_FILE
    assert model.exists(), f"{model} is missing: run scripts/fetch-models.sh"
    with tempfile.TemporaryDirectory(prefix="exo-pytest-") as tmp:
        models_dir = pathlib.Path(tmp) / "models"
        models_dir.mkdir()
        (models_dir / MODEL_FILE).symlink_to(model)
        env = dict(os.environ, EXO_HOME=str(pathlib.Path(tmp) / "home"), RUST_LOG="warn")
        process = subprocess.Popen(
            [str(binary), "--api-host", "127.0.0.1", "--api-port", "0", "--listen-port", "0", "--discovery", "none",
             "--models-dir", str(models_dir), "--threads", "2"],
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
