#!/usr/bin/env bash
# Checks exo's CUDA build on an NVIDIA GPU, as one prepared run (issue 15, point 6):
#   (a) teacher-forced log-probabilities (`exo score`) of the tiny llama, qwen2, qwen3, gemma2 and gemma3 models on cuda:0 against the CPU
#       backend: mean |Δ| of the next token's log-probability ≤ 0.02, and the same top token wherever the CPU's
#       top-2 gap is ≥ 0.3;
#   (b) two nodes on the one GPU, with memory limits that force a split, answer greedily as one node does;
#   (c) prompt and decode tokens/s of a synthetic 3B-parameter model (`exo bench`), with its share of the memory
#       bandwidth limit (4.8 TB/s on an H200; BANDWIDTH_TBS to change).
# Prints one line per check (PASS/FAIL and figures) and writes them to $OUT/gpu-check.txt when OUT is set; exits
# non-zero if a check fails.
#
# Here (no GPU needed):  CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh && scripts/gpu-check.sh --prepare
#   builds nothing itself: it copies the CUDA binary (stripped), a tokenizer-only GGUF (the models are made on the
#   GPU machine from it, with scripts/make-tiny-models.py and synth_gguf.py), and the gguf wheel into .gpu-check/
#   (ignored by git), under 64 MiB.
# There (the device tool, carrying .gpu-check): scripts/gpu-check.sh
#   EXO_BIN  the binary (default: .gpu-check/exo.xz, unpacked)
# A dry run of the script's own logic on a machine without a GPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 (every
# check on the CPU, the speed check on the 1B shape with short runs).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.gpu-check

if [ "${1:-}" = --prepare ]; then
  bin=${EXO_BIN:-${CARGO_TARGET_DIR:-target}/release/exo}
  readelf -d "$bin" >/dev/null || { echo "error: no binary at $bin (run scripts/build-cuda.sh)" >&2; exit 1; }
  mkdir -p "$DIR"
  grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >>.git/info/exclude
  # Stripped, a CUDA build is about 64 MB, all that may travel: compressed, about a quarter.
  strip -o "$DIR/exo" "$bin"
  xz -T2 -6 -f "$DIR/exo"
  synth=""
  for cand in ../shared/tools/synth_gguf.py /work/shared/tools/synth_gguf.py; do [ -f "$cand" ] && synth=$cand && break; done
  [ -n "$synth" ] || { echo "error: synth_gguf.py not found (../shared/tools)" >&2; exit 1; }
  cp "$synth" "$DIR/synth_gguf.py"
  donor=$(./scripts/fetch-models.sh)/SmolLM2-135M-Instruct.Q4_1.gguf
  # The donor's tokenizer alone (the whole file is 92 MB; the tokenizer 2 MB).
  python3 - "$donor" "$DIR/tokenizer.gguf" <<'PY'
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], "llama")
for name, f in r.fields.items():
    if name.startswith("tokenizer."):
        w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[1] if len(f.types) > 1 else None)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
  rm -f "$DIR"/*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$DIR" gguf==0.19.0
  du -ch "$DIR"/* | tail -n 1
  exit 0
fi

EXO=${EXO_BIN:-}
DEVICE=${GPU_CHECK_DEVICE:-cuda:0}
QUICK=${GPU_CHECK_QUICK:-0}
RESULTS=${OUT:-/tmp}/gpu-check.txt
: >"$RESULTS"
say() { echo "$*" | tee -a "$RESULTS"; }
FAILED=0
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
if [ -z "$EXO" ]; then
  [ -f "$DIR/exo.xz" ] || { echo "error: no $DIR/exo.xz (run scripts/gpu-check.sh --prepare here first)" >&2; exit 1; }
  EXO=$WORK/exo
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$DIR/exo.xz" "$EXO"
  chmod +x "$EXO"
fi
[ -x "$EXO" ] || { echo "error: no binary at $EXO" >&2; exit 1; }

python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$DIR"/gguf-*.whl
export PYTHONPATH=$WORK/site
# The CUDA libraries exo loads: the driver's, and cuBLAS/cuRAND/NVRTC from the CUDA install or Python's nvidia-*.
libdirs=$({ find /usr/local /usr/lib /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])')" \
  -name 'libcublas.so.13*' -printf '%h\n' 2>/dev/null || true; } | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:-}
say "date: $(date -u +%Y-%m-%dT%H:%MZ); $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true)"
say "libraries from: ${libdirs:-nowhere}"

# (a) Tiny models, CUDA against the CPU backend.
python3 scripts/make-tiny-models.py "$WORK/tiny" --donor "$DIR/tokenizer.gguf" >/dev/null
TEXT="The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the morning sun, and the"
for m in tiny-llama3 tiny-qwen2 tiny-qwen3 tiny-gemma2 tiny-gemma3; do
  "$EXO" score "$WORK/tiny/$m.gguf" -p "$TEXT" -o "$WORK/$m.cpu" --devices cpu >"$WORK/$m.cpu.json"
  "$EXO" score "$WORK/tiny/$m.gguf" -p "$TEXT" -o "$WORK/$m.cuda" --devices "$DEVICE" >"$WORK/$m.cuda.json"
  line=$(python3 - "$WORK/$m" "$DEVICE" <<'PY'
import json, sys
import numpy as np
base = sys.argv[1]
meta = json.load(open(base + ".cpu.json"))
cuda = json.load(open(base + ".cuda.json"))
v, t = meta["vocab"], np.array(meta["tokens"][1:])
a = np.fromfile(base + ".cpu", dtype="<f4").reshape(-1, v)
b = np.fromfile(base + ".cuda", dtype="<f4").reshape(-1, v)
rows = np.arange(len(t))
mean = float(np.abs(a[rows, t] - b[rows, t]).mean())
top2 = np.sort(a, axis=1)[:, -2:]
clear = (top2[:, 1] - top2[:, 0]) >= 0.3
same = bool((a.argmax(1) == b.argmax(1))[clear].all())
ok = mean <= 0.02 and same and cuda["device"] == sys.argv[2]
print(f"{'PASS' if ok else 'FAIL'} (a) {base.rsplit('/', 1)[1]}: {cuda['device']} {cuda['backend']} vs cpu "
      f"{meta['backend']}: mean |Δ| {mean:.4f} over {len(t)} positions; top token same at all {int(clear.sum())} "
      f"positions with a top-2 gap ≥ 0.3: {same}")
PY
  )
  say "$line"
  [[ $line == PASS* ]] || FAILED=1
done

# (b) Two nodes on the one GPU, split by their memory limits, against one node.
mkdir -p "$WORK/m1b"
python3 "$DIR/synth_gguf.py" "$DIR/tokenizer.gguf" "$WORK/m1b/synthetic-1b.Q8_0.gguf" --layers 16 --hidden 2048 \
  --ffn 8192 --heads 32 --kv-heads 8 --type q8_0
node() { # id api-port listen-port memory-limit [peer]
  local args=(--node-id "$1" --api-host 127.0.0.1 --api-port "$2" --listen-port "$3" --discovery none
    --models-dir "$WORK/m1b" --devices "$DEVICE" --cpu-layers none --memory-limit "$4" -c 2048)
  [ -n "${5:-}" ] && args+=(--peers "$5")
  EXO_HOME=$WORK/home-$1 "$EXO" "${args[@]}" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
}
answer() { # api-port nodes
  python3 - "$1" "$2" <<'PY'
import json, sys, time, urllib.request
api, want = f"http://127.0.0.1:{sys.argv[1]}", int(sys.argv[2])
for _ in range(300):
    try:
        if len(json.load(urllib.request.urlopen(api + "/v1/topology"))["nodes"]) >= want:
            break
    except OSError:
        pass
    time.sleep(0.2)
body = {"model": "synthetic-1b.Q8_0", "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}
req = urllib.request.Request(api + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
r = json.load(urllib.request.urlopen(req, timeout=300))
plan = json.load(urllib.request.urlopen(api + "/v1/topology"))["plans"]
print(json.dumps({"text": r["choices"][0]["text"], "stages": plan[-1]["stages"] if plan else []}))
PY
}
node one 18000 18001 8G
single=$(answer 18000 1) || single='{"text": null}'
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
node a 18010 18011 1G
node b 18020 18021 1G 127.0.0.1:18011
pair=$(answer 18010 2) || pair='{"text": null}'
line=$(python3 - "$single" "$pair" <<'PY'
import json, sys
one, two = json.loads(sys.argv[1]), json.loads(sys.argv[2])
split = len(two.get("stages", [])) == 2
ok = one["text"] is not None and one["text"] == two["text"] and split
stages = ", ".join(f"{s['node_id']} {s['start']}-{s['end']} on " + "+".join(d["device"] for d in s.get("devices", []))
                   for s in two.get("stages", []))
print(f"{'PASS' if ok else 'FAIL'} (b) two nodes on one device ({stages}) answer as one node: {one['text'] == two['text']}; "
      f"text {one['text']!r}")
PY
)
say "$line"
[[ $line == PASS* ]] || { FAILED=1; for f in "$WORK"/*.log; do echo "--- $f"; tail -n 20 "$f"; done; }
grep -h "layers" "$WORK"/a.log "$WORK"/b.log | tee -a "$RESULTS" || true

# (c) Speed on a 3B-parameter shape (28 layers, 3072 wide, 8192 FFN: 3.2B parameters, Q8_0).
if [ "$QUICK" = 1 ]; then
  "$EXO" bench "$WORK/m1b/synthetic-1b.Q8_0.gguf" --devices "$DEVICE" -p 32 -n 8 -r 1 --json >"$WORK/bench.json"
else
  mkdir -p "$WORK/m3b"
  python3 "$DIR/synth_gguf.py" "$DIR/tokenizer.gguf" "$WORK/m3b/synthetic-3b.Q8_0.gguf" --layers 28 --hidden 3072 \
    --ffn 8192 --heads 24 --kv-heads 8 --type q8_0
  "$EXO" bench "$WORK/m3b/synthetic-3b.Q8_0.gguf" --devices "$DEVICE" -p 512 -n 128 -r 3 --json >"$WORK/bench.json"
fi
line=$(python3 - "$WORK/bench.json" "${BANDWIDTH_TBS:-4.8}" <<'PY'
import json, sys
r, limit = json.load(open(sys.argv[1])), float(sys.argv[2]) * 1e12
share = r["tg_tps"] * r["tensor_bytes"] / limit
print(f"INFO (c) {r['model'].rsplit('/', 1)[-1]} on {r['device']} ({r['backend']}): pp{r['pp_tokens']} {r['pp_tps']:.1f} tokens/s, "
      f"tg{r['tg_tokens']} {r['tg_tps']:.1f} tokens/s; {r['tensor_bytes'] / 2**30:.2f} GiB of weights per token = "
      f"{r['tg_tps'] * r['tensor_bytes'] / 1e12:.2f} TB/s, {100 * share:.1f}% of {limit / 1e12:.1f} TB/s")
PY
)
say "$line"
exit "$FAILED"
