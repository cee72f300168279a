#!/usr/bin/env bash
# Prompt (pp128) and decode (tg64) tokens/s of exo's engine next to llama.cpp's llama-bench, on the same files
# and thread counts, with the ratios, and the peak resident memory of both. exo runs twice: the portable release
# build (kernels chosen at run time) and a build for this CPU (`-C target-cpu=native`, in target/native).
# Prints a Markdown table. Never fails on speed.
#
# usage: scripts/bench.sh [MODEL.gguf ...]     (default: SmolLM2-135M Q4_1 and synthetic 1B-shape Q4_K_M and Q8_0)
#   LLAMA_CPP_BIN  folder holding llama-bench (default: built by ../shared/tools/build_llama_cpp.sh if present)
#   THREADS        thread counts to test (default: "1 2")
#   BUILDS         exo builds to test (default: "portable native")
#   REPS           repetitions per test (default: 3)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
BUILDS=${BUILDS:-"portable native"}
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

models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=("$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" "$(./scripts/synth-model.sh 1b q4_k_m)" "$(./scripts/synth-model.sh 1b q8_0)")
fi

for b in $BUILDS; do
  case $b in
    portable) cargo build --release -q -p exo ;;
    native) RUSTFLAGS="-C target-cpu=native" cargo build --release -q -p exo --target-dir target/native ;;
    *) echo "error: unknown build '$b' (expected portable or native)" >&2; exit 1 ;;
  esac
done
exo_bin() { if [ "$1" = native ]; then echo target/native/release/exo; else echo target/release/exo; fi; }

# Runs a command, passing its stdout through, and writes its peak resident set size in bytes to stderr.
peak_rss() {
  python3 -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
sys.stdout.write(r.stdout.decode())
sys.stderr.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(r.returncode)' "$@"
}

echo "| model | exo build | threads | llama.cpp pp128 | exo pp128 | ratio | llama.cpp tg64 | exo tg64 | ratio | llama.cpp peak RSS | exo peak RSS | exo limit |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for m in "${models[@]}"; do
  for t in $THREADS; do
    ref=$(peak_rss "$LLAMA_CPP_BIN/llama-bench" -m "$m" -t "$t" -p 128 -n 64 -r "$REPS" -o json 2>/tmp/exo-bench-rss)
    ref_rss=$(cat /tmp/exo-bench-rss)
    for b in $BUILDS; do
      ours=$("$(exo_bin "$b")" bench "$m" -t "$t" -p 128 -n 64 -r "$REPS" --json)
      python3 - "$m" "$b" "$t" "$ref" "$ref_rss" "$ours" <<'PY'
import json, os, sys
model, build, threads, ref, ref_rss, ours = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
pp = next(r["avg_ts"] for r in ref if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r["avg_ts"] for r in ref if r["n_gen"] > 0 and r["n_prompt"] == 0)
mib = lambda b: b / 2**20
# The issue's memory bound: within 10% of tensor bytes + KV cache, plus 100 MiB.
limit = 1.1 * (ours["tensor_bytes"] + ours["kv_bytes"]) + 100 * 2**20
rss = ours["peak_rss_bytes"]
print(f"| {os.path.basename(model)} | {build} ({ours['kernels']}) | {threads} | {pp:.1f} | {ours['pp_tps']:.1f} | {ours['pp_tps']/pp:.2f} "
      f"| {tg:.1f} | {ours['tg_tps']:.1f} | {ours['tg_tps']/tg:.2f} | {mib(ref_rss):.0f} MiB | {mib(rss):.0f} MiB "
      f"| {mib(limit):.0f} MiB {'ok' if rss <= limit else 'OVER'} |")
PY
    done
  done
done
