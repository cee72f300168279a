#!/usr/bin/env bash
# Prompt (pp128) and decode (tg64) tokens/s of exo's engine next to llama.cpp's llama-bench, on the same files
# and thread counts, with the ratio. Prints a Markdown table. Never fails on speed.
#
# usage: scripts/bench.sh [MODEL.gguf ...]     (default: SmolLM2-135M Q4_1 and synthetic 1B-shape Q4_K_M and Q8_0)
#   LLAMA_CPP_BIN  folder holding llama-bench (default: built by ../shared/tools/build_llama_cpp.sh if present)
#   THREADS        thread counts to test (default: "1 2")
#   REPS           repetitions per test (default: 3)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
CACHE=$(./scripts/fetch-models.sh)

if [ -z "${LLAMA_CPP_BIN:-}" ]; then
  for cand in ../shared/tools/build_llama_cpp.sh /work/shared/tools/build_llama_cpp.sh; do
    if [ -x "$cand" ]; then LLAMA_CPP_BIN=$("$cand"); break; fi
  done
fi
if [ -z "${LLAMA_CPP_BIN:-}" ] || [ ! -x "$LLAMA_CPP_BIN/llama-bench" ]; then
  echo "error: set LLAMA_CPP_BIN to a folder holding llama-bench (../shared/tools/build_llama_cpp.sh builds one)" >&2
  exit 1
fi

export LLAMA_CPP_BIN
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=("$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" "$(./scripts/synth-model.sh 1b q4_k_m)" "$(./scripts/synth-model.sh 1b q8_0)")
fi

cargo build --release -q -p exo
EXO=target/release/exo

echo "| model | threads | llama.cpp pp128 | exo pp128 | ratio | llama.cpp tg64 | exo tg64 | ratio |"
echo "|---|---|---|---|---|---|---|---|"
for m in "${models[@]}"; do
  for t in $THREADS; do
    ref=$("$LLAMA_CPP_BIN/llama-bench" -m "$m" -t "$t" -p 128 -n 64 -r "$REPS" -o json 2>/dev/null)
    ours=$("$EXO" bench "$m" -t "$t" -p 128 -n 64 -r "$REPS" --json)
    python3 - "$m" "$t" "$ref" "$ours" <<'PY'
import json, os, sys
model, threads, ref, ours = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
pp = next(r["avg_ts"] for r in ref if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r["avg_ts"] for r in ref if r["n_gen"] > 0 and r["n_prompt"] == 0)
name = os.path.basename(model)
print(f"| {name} | {threads} | {pp:.1f} | {ours['pp_tps']:.1f} | {ours['pp_tps']/pp:.2f} "
      f"| {tg:.1f} | {ours['tg_tps']:.1f} | {ours['tg_tps']/tg:.2f} |")
PY
  done
done
