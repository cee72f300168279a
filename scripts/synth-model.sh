#!/usr/bin/env bash
# Makes a random-weight model of a known shape for speed tests (never for correctness), in the model cache, and
# prints its path. Idempotent. Needs the gguf and numpy Python packages (installed here if missing) and, for
# K-quants, llama.cpp's llama-quantize (LLAMA_CPP_BIN).
# usage: scripts/synth-model.sh SHAPE TYPE     SHAPE: 1b | 8b | moe   TYPE: q8_0 | f16 | q4_k_m | q4_0 ...
#   moe: Qwen3-30B-A3B's proportions (128 experts, 8 per token, 768 wide) in 12 layers 1024 wide: 3.7B parameters,
#   0.3B of them active per token (scripts/synth-moe.py; q8_0 base only).
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:?shape: 1b or 8b}; type=${2:?type: q8_0, f16, q4_k_m...}
CACHE=$(./scripts/fetch-models.sh)
case "$shape" in
  1b) dims="--layers 16 --hidden 2048 --ffn 8192 --heads 32 --kv-heads 8" ;;
  8b) dims="--layers 32 --hidden 4096 --ffn 14336 --heads 32 --kv-heads 8" ;;
  moe) dims="" ;;
  *) echo "unknown shape $shape (1b, 8b, moe)" >&2; exit 1 ;;
esac
out="$CACHE/synthetic-$shape.${type^^}.gguf"
if [ -f "$out" ]; then echo "$out"; exit 0; fi
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install -q gguf numpy >&2
synth=""
for cand in ../shared/tools/synth_gguf.py /work/shared/tools/synth_gguf.py; do [ -f "$cand" ] && synth=$cand && break; done
[ -n "$synth" ] || { echo "error: synth_gguf.py not found (../shared/tools)" >&2; exit 1; }
base_type=$type
case "$type" in q8_0|f16) ;; *) base_type=q8_0 ;; esac
base="$CACHE/synthetic-$shape.${base_type^^}.gguf"
if [ ! -f "$base" ]; then
  if [ "$shape" = moe ]; then
    [ "$base_type" = q8_0 ] || { echo "error: the moe shape is made as q8_0 (then quantized)" >&2; exit 1; }
    python3 scripts/synth-moe.py "$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" "$base.part" >&2
  else
    # shellcheck disable=SC2086
    python3 "$synth" "$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" "$base.part" $dims --type "$base_type" >&2
  fi
  mv "$base.part" "$base"
fi
if [ "$base" != "$out" ]; then
  : "${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to a folder holding llama-quantize}"
  "$LLAMA_CPP_BIN/llama-quantize" --allow-requantize "$base" "$out.part" "${type^^}" >/dev/null 2>&1
  mv "$out.part" "$out"
fi
echo "$out"
